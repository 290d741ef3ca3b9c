"""Z-propagation: prompt an object on one slice (or a few), follow it
through the stack (and ``propagate_labels``, which also runs "batch prompts
through z" for objects that stay put, ``core.through_z``).

``propagate_objects`` is a generator (STYLE: long work yields progress):

1. every prompted slice is decoded first (its objects batched);
2. an upward pass (z ascending) and a downward pass (z descending) follow
   each object from slice to slice. Between two prompted slices of an
   object, each side propagates to the middle of the gap (the object exists
   there, so no stop rule); beyond its outermost prompted slices it goes on
   until ``StopRule`` says it has ended or the z range ends;
3. on each slice, every object alive in the pass is prompted from its result
   on the previous slice (``StepRule``) and all of them are decoded in one
   batched mask-decoder call on the slice's cached embedding;
4. overlaps are resolved per pixel by score (``LabelCanvas``).

It works on a copy of ``labels``: closing the generator midway (cancel)
leaves the caller's array untouched; the result is the generator's return
value and the ``labels`` of its last progress record.
"""

from __future__ import annotations

import inspect

from collections.abc import Iterator

import numpy as np

from .batch_decode import decode_grouped
from .cache import EmbeddingCache, stack_embedder
from .label_canvas import USER_SCORE, LabelCanvas
from .magnify import check_scale, is_auto, stack_scale
from .propagate_inputs import check_labels, check_prompts, check_stack, check_through_z, z_bounds
from .propagate_records import Progress, run_to_end
from .propagate_rules import PresenceRule, StepFeatures, StepRule, StopRule
from .propagate_track import Track, contrast
from .propagate_step import advance, recheck, track
from .through_z import batch_prompts_through_z

__all__ = ["Progress", "PresenceRule", "StepFeatures", "StepRule", "StopRule", "propagate_objects", "batch_prompts_through_z",
           "propagate_labels", "run_to_end"]


def pass_source(anchors: list[int], z: int, up: bool):
    """(anchor the object comes from, in a gap?) for slice z in a pass, or None."""
    if z in anchors:
        return None
    below = [a for a in anchors if a < z]
    above = [b for b in anchors if b > z]
    if up:
        if not below:
            return None
        if above:
            return (below[-1], True) if z <= (below[-1] + above[0]) // 2 else None
        return below[-1], False
    if not above:
        return None
    if below:
        return (above[0], True) if z > (below[-1] + above[0]) // 2 else None
    return above[0], False


def _clearest(at_anchor: dict) -> None:
    """``StopRule.clearest``: every prompted slice of an object takes the largest contrast and area among them."""
    best: dict[int, tuple[float, int]] = {}
    for (o, _), t in at_anchor.items():
        c, p = best.get(o, (0.0, 0))
        best[o] = (max(c, t.contrast0), max(p, t.peak_area))
    for (o, _), t in at_anchor.items():
        t.contrast0, t.peak_area = best[o]


def _start(t: Track, image2d, canvas, z) -> Track:
    """A track leaving its prompted slice: remember the object's contrast and area there."""
    t.contrast0 = contrast(image2d, canvas.labels[z], t.r0, t.c0, t.mask)
    t.peak_area = t.area
    return t


def _user_track(predictor, canvas, z, oid, mask) -> Track:
    """Paint a mask the user gave (it outranks any prediction) and start a track from it."""
    r0, c0, r1, c1 = canvas.paint_full(z, oid, mask, USER_SCORE)
    low = predictor._mask_input(mask)[0].cpu().numpy()
    return Track(r0, c0, canvas.crop(z, oid, r0, c0, (r1 - r0, c1 - c0)), low, 1.0)


def _decode_prompted(predictor, items, threshold):
    """The user prompts of one slice, [(oid, ObjectPrompt)] -> [(oid, Decoded or None, user mask or None)].

    As :func:`_decode_grouped`; a mask alone (bool) is the user's own drawing: kept as it is.
    """
    dec = decode_grouped(predictor, [(o, p) for o, p in items if not p.mask_alone], threshold)
    return [(o, d, None) for o, d in dec] + [(o, None, p.mask) for o, p in items if p.mask_alone]


def propagate_objects(predictor, stack, prompts, *, z_range=None, cache: EmbeddingCache | None = None,
                      stop: StopRule | None = None, step: StepRule | None = None, labels=None,
                      channel_axis: int | None = None, disk=None) -> Iterator[Progress]:
    """Propagate objects from their prompted slices through ``stack`` (z, y, x).

    predictor: a ``SlicePredictor`` (its ``normalize`` and ``refine`` apply).
    prompts: {object_id: {z: ObjectPrompt or dict(points=, labels=, box=, mask=)}};
    a mask alone (bool, (y, x)) is kept as the object's pixels on that slice.
    z_range: (start, stop), half-open; nothing outside it is touched.
    cache: embeddings are shared with it (default: a private cache, so each
    slice is encoded once). labels: (z, y, x) existing labels; pixels of
    objects not being propagated are never taken; the propagated ids are
    replaced inside ``z_range``. channel_axis: of a slice, for colour stacks
    (z, y, x, c): -1. disk: a ``DiskCache`` of this stack (``napari-sam embed``),
    read before encoding and filled with what is encoded.
    Yields :class:`Progress`; returns the (z, y, x) labels.
    """
    shape = check_stack(stack, channel_axis)
    zb = z_bounds(z_range, shape[0])
    objs = check_prompts(prompts, shape, zb, distinct=True)
    embed = stack_embedder(predictor, stack, cache, channel_axis, disk)
    labels = check_labels(labels, shape, objs)
    stop, step = stop or StopRule(), step or StepRule()
    canvas = LabelCanvas(shape, labels, objs, zb)
    anchors = {o: sorted(p) for o, p in objs.items()}
    # between its outermost prompted slices an object is known to exist (also across a prompted slice whose
    # prompt gave no pixels, dropped from its anchors below): no stop rule there
    extent = {o: (a[0], a[-1]) for o, a in anchors.items()}
    first, last = min(min(a) for a in anchors.values()), max(max(a) for a in anchors.values())
    visits = [("prompted", z) for z in sorted({z for a in anchors.values() for z in a})]
    visits += [("up", z) for z in range(first + 1, zb[1])] + [("down", z) for z in range(last - 1, zb[0] - 1, -1)]
    at_anchor: dict[tuple[int, int], Track] = {}
    moving: dict[tuple[int, bool], Track] = {}
    ended: set[tuple[int, bool]] = set()
    outward: dict[tuple[int, bool], list[StepFeatures]] = {}
    started = False
    for n, (stage, z) in enumerate(visits, 1):
        done_here, stopped = [], []
        if stage == "prompted":
            items = [(o, objs[o][z]) for o in objs if z in objs[o]]
            image2d = embed(z)
            for o, d, user in _decode_prompted(predictor, items, step.threshold):
                if user is not None:
                    if user.any():
                        at_anchor[(o, z)] = _user_track(predictor, canvas, z, o, user)
                else:
                    canvas.paint(z, o, d.r0, d.c0, d.mask, d.logits)
                    if d.mask.any():
                        at_anchor[(o, z)] = d
                done_here.append(o)
            for o in done_here:  # after all of them are painted: overlaps resolved
                d = at_anchor.get((o, z))
                t = None if d is None else d if isinstance(d, Track) else track(d, canvas, z, o)
                if t is not None and t.mask.any():
                    at_anchor[(o, z)] = _start(t, image2d, canvas, z)
                    continue
                at_anchor.pop((o, z), None)
                # nothing of it here (SAM found nothing, or other objects hold every pixel): its other prompted
                # slices carry it through this one, instead of each stopping halfway to it
                if len(anchors[o]) > 1:
                    anchors[o].remove(z)
                    why = "its prompt here gave no pixels: carried through from its other prompted slices"
                else:
                    why = "its prompt here gave no pixels: nothing to propagate"
                stopped.append((o, why))
        else:
            up = stage == "up"
            if not started:  # the prompted slices are done: their contrasts and areas are known
                started = True
                if stop.clearest:
                    _clearest(at_anchor)
            work = []
            for o, a in anchors.items():
                src = pass_source(a, z, up)
                if src is None or (o, up) in ended:
                    continue
                prev = at_anchor.get((o, z - 1 if up else z + 1)) or moving.get((o, up))
                if prev is not None and prev.mask.any():
                    work.append((o, extent[o][0] < z < extent[o][1], prev, abs(z - src[0])))
            if work:
                image2d = embed(z)
                stopped = advance(predictor, canvas, z, image2d, work, step, stop, moving, up, outward)
                ended.update((o, up) for o, _ in stopped)
                done_here = [o for o, *_ in work]
        ends = tuple((o, stage, r, z) for o, r in stopped)
        if n == len(visits):
            ends += recheck(canvas, outward, stop)
        yield Progress(n, len(visits), z, stage, canvas.labels[z].copy(), tuple(done_here),
                       ends, canvas.labels if n == len(visits) else None)
    return canvas.labels


def propagate_labels(stack, prompts, *, model, z_range=None, through_z: bool = False, labels=None,
                     normalize: str = "percentile", refine: bool = False, cache=None,
                     progress=None, channel_axis: int | None = None, disk=None, input_scale: float | str | None = "auto",
                     method: str = "slices", **kwargs) -> np.ndarray:
    """Run :func:`propagate_objects` (or, with ``through_z``,
    :func:`batch_prompts_through_z`; with ``method="memory"``,
    ``core.sam2_memory.propagate_memory``) to the end and return the (z, y, x) labels.

    model: a ``LoadedModel``. refine: boundary snapping (``core.refine``; default off, as ``segment``:
    the embedded model's predictor drops pieces not connected to the prompt anyway, and on the tuning
    stacks propagation did better without snapping, docs/propagation.md). progress: called with every
    :class:`Progress`. channel_axis, disk: see :func:`propagate_objects`.
    input_scale: see ``SlicePredictor``; "auto" (default): chosen from the
    prompted objects' size (``core.magnify.stack_scale``), or with ``disk`` the
    magnification its embeddings were made at.
    method: "slices" (default: each slice prompted from the previous one's mask, any model) or "memory"
    (SAM 2 / 2.1 models: SAM 2's video predictor, which encodes each slice itself: ``cache`` is not
    used, ``through_z`` and ``disk`` are refused).
    Other keywords (stop, step; min_score with ``through_z``; decay, max_state_bytes for "memory") go to the generator.
    """
    from .predictor import SlicePredictor

    if "channel" in kwargs:  # it went on to the generator, which raised a TypeError naming its own function
        raise ValueError("propagation takes no channel=: give the channel's own (z, y, x) stack, e.g. stack[:, 1] of "
                         "a (z, c, y, x) array or stack[..., 1] of (z, y, x, c) (a view: nothing is copied); "
                         "channel_axis alone uses every channel together (three as RGB colour, any other number "
                         "averaged)")
    if method not in ("slices", "memory"):
        raise ValueError(f"method must be 'slices' or 'memory', not {method!r}")
    shape = check_stack(stack, channel_axis)
    zb = z_bounds(z_range, shape[0])
    objs = check_through_z(prompts, shape, zb) if through_z else check_prompts(prompts, shape, zb, distinct=True)
    check_labels(labels, shape, objs)
    if model is None:
        raise ValueError("no model: load one with napari_sam.load_model() and pass it as model=")
    if method == "memory":
        from .sam2_memory import check_memory_model, propagate_memory

        check_memory_model(model)
        if through_z or disk is not None:
            raise ValueError("method='memory' follows objects from their prompted slices with SAM 2's video "
                             "predictor, which encodes each slice itself: it takes no through_z and no disk cache")
        own = sorted(set(inspect.signature(propagate_memory).parameters)
                     - {"predictor", "stack", "prompts", "z_range", "labels", "channel_axis"})
        other = sorted(set(kwargs) - set(own)) + (["refine"] if refine else [])
        if other:  # the slice-by-slice rules and snapping: SAM 2's memory decides where objects go and end
            raise ValueError(f"{', '.join(other)} only apply to method='slices'; SAM 2's memory "
                             f"(method='memory') takes {' and '.join(own)}")
        gen = propagate_memory(SlicePredictor(model, normalize=normalize), stack, prompts, z_range=z_range,
                               labels=labels, channel_axis=channel_axis, **kwargs)
        return run_to_end(gen, progress)
    input_scale = check_scale(input_scale)
    if is_auto(input_scale) and disk is not None:
        input_scale = disk.settings.get("input_scale")
    if is_auto(input_scale):  # measured at the default magnification; its embedding is kept for the run
        cache = cache if cache is not None else EmbeddingCache(max_bytes=1 << 62)
        per_z = {o: {(zb[0] + zb[1]) // 2 if z is None else z: p} for o, (z, p) in objs.items()} if through_z else prompts
        input_scale, _ = stack_scale(model, stack, per_z, normalize=normalize, channel_axis=channel_axis, cache=cache)
    predictor = SlicePredictor(model, normalize=normalize, refine=refine, input_scale=input_scale)
    if disk is not None:  # the DiskCache given: made for this model, these settings and this stack?
        from .disk_cache import settings_for

        disk.check(settings_for(predictor, stack.shape, stack.dtype, channel_axis=channel_axis))
    run = batch_prompts_through_z if through_z else propagate_objects
    gen = run(predictor, stack, prompts, z_range=z_range, cache=cache, labels=labels, channel_axis=channel_axis,
              disk=disk, **kwargs)
    return run_to_end(gen, progress)

"""Every object of a z-stack without a click: find on a few slices, propagate what is new, look again.

``find_objects`` (``core.automatic``) sees one slice; nuclei above or below it are not on it. Here:

1. the slices looked on: the middle one first, then every ``every``-th slice outward from it;
2. on each, every object is found outside the labels so far (``existing``: no labelled pixel is taken and no
   seed is decoded on one);
3. a found object that continues an object ending within ``LINK_DEPTH`` slices above or below (``link``: at
   least half of its mask lies on that object there) is left out: it is that object's dim end or the
   out-of-focus light of it, which the stop rule already judged;
4. the other objects are propagated through the stack together (``propagate_objects``, with the labels so
   far as ``labels``: their pixels are never taken) under new ids.

It works on a copy of ``labels``: closing the generator midway (cancel) leaves the caller's array untouched.
Nothing here imports napari.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .automatic import AutoSettings, finding
from .cache import EmbeddingCache, stack_embedder
from .propagate import propagate_objects
from .propagate_inputs import check_labels, check_stack, z_bounds
from .propagate_records import Progress
from .prompts import ObjectPrompt


#: A found mask mostly on an object that ended within this many slices is left out (``continuing``): on five
#: held-out stacks, depth 1 -> 4 raised precision from 55.8% to 74.6% at the same recall; 6 gave no more than 4
#: (docs/find-objects.md).
LINK_DEPTH = 4


@dataclass
class FoundStack:
    """What ``finding_in_stack`` found.

    labels: (z, y, x), the given labels with the new objects added (uint32; int64 for signed labels given).
    looked: the slices looked on, in order. objects: {new id: (z found on, (row, col) seed, predicted IoU)}.
    linked: how many found masks were left out as continuing an object that ended nearby.
    """

    labels: np.ndarray
    looked: list[int]
    objects: dict[int, tuple[int, tuple[float, float], float]] = field(default_factory=dict)
    linked: int = 0


def slices_to_look(zb: tuple[int, int], every: int, z: int | None = None) -> list[int]:
    """The slices of [start, stop) to look on: ``z`` (default the middle) first, then every ``every``-th slice
    outward from it, alternately below and above."""
    if not (isinstance(every, (int, np.integer)) and every >= 1):
        raise ValueError(f"every={every!r}: give how many slices apart to look for objects, an integer >= 1")
    start, stop = zb
    mid = (start + stop) // 2 if z is None else int(z)
    if not start <= mid < stop:
        raise ValueError(f"z={z} is outside the slices {start}..{stop - 1}")
    out = [mid]
    for k in range(1, (stop - start) // every + 2):
        out += [s for s in (mid - k * every, mid + k * every) if start <= s < stop]
    return out


def on_slice(labels2d: np.ndarray) -> set[int]:
    """The object ids on one slice of labels."""
    return set(np.unique(labels2d[labels2d > 0]).tolist())


def continuing(mask: np.ndarray, labels: np.ndarray, z: int, link: float, depth: int = 1, here=None) -> bool:
    """Does the mask found on slice z lie, for at least ``link`` of it, on one object that is not on slice z
    but on one of the ``depth`` slices above or below it? here: ``on_slice(labels[z])`` if the caller has it."""
    here = on_slice(labels[z]) if here is None else here
    n = mask.sum()
    for dz in range(1, depth + 1):
        for zz in (z - dz, z + dz):
            if not 0 <= zz < labels.shape[0]:
                continue
            ids, counts = np.unique(labels[zz][mask], return_counts=True)
            for i, c in zip(ids, counts):
                if i and i not in here and c >= link * n:
                    return True
    return False


def _relay(gen, record):
    """Yield ``record(item)`` for each item ``gen`` yields; return what it returns."""
    while True:
        try:
            item = next(gen)
        except StopIteration as fin:
            return fin.value
        yield record(item)


def finding_in_stack(predictor, stack, settings: AutoSettings | None = None, *, every: int = 4, z: int | None = None,
                     z_range=None, link: float = 0.5, link_depth: int = LINK_DEPTH,
                     labels=None, first_id: int | None = None, cache: EmbeddingCache | None = None, stop=None,
                     step=None, channel_axis: int | None = None, disk=None):
    """Generator: every object of ``stack`` (z, y, x), found on every ``every``-th slice and propagated.

    predictor: a ``SlicePredictor``. settings: ``AutoSettings`` of each slice's search. z: the first slice
    looked on (default the middle of ``z_range``). link, link_depth: a found mask with at least ``link`` of
    it on an object that ended within ``link_depth`` slices is left out (``link`` > 1: never). labels:
    (z, y, x) existing labels, kept as they are. first_id: the first new id (default: the labels' largest
    + 1). stop, step: the propagation's rules. cache, channel_axis, disk: as ``propagate_objects``.

    Yields :class:`Progress` records (stage "find" while a slice is searched, "propagate" while its new
    objects are carried through the stack; done / total count the slices looked on) and returns a
    :class:`FoundStack`.
    """
    settings = settings or AutoSettings()
    settings.check()
    shape = check_stack(stack, channel_axis)
    zb = z_bounds(z_range, shape[0])
    looked = slices_to_look(zb, every, z)
    if labels is None:
        labels = np.zeros(shape, np.uint32)
    else:  # a copy; a signed layer's negative labels (never followed) are kept as they are
        labels = check_labels(labels, shape)
        signed = np.issubdtype(getattr(labels, "dtype", np.uint32), np.signedinteger)
        labels = np.array(labels, np.int64 if signed else np.uint32)
    cache = cache if cache is not None else EmbeddingCache(max_bytes=1 << 62)
    embed = stack_embedder(predictor, stack, cache, channel_axis, disk)
    out = FoundStack(labels, looked)
    for n, zf in enumerate(looked):
        embed(zf)
        found = yield from _relay(finding(predictor, settings, existing=labels[zf]),
                                  lambda _: Progress(n, len(looked), zf, "find", labels[zf].copy()))
        prompts, here = {}, on_slice(labels[zf])
        next_id = max(int(labels.max(initial=0)) + 1, first_id or 1)
        for k in range(1, found.n + 1):
            mask = found.labels == k
            if link <= 1 and continuing(mask, labels, zf, link, link_depth, here):
                out.linked += 1
                continue
            prompts[next_id] = {zf: ObjectPrompt(mask=mask)}
            out.objects[next_id] = (zf, tuple(float(v) for v in found.seeds[k - 1]), float(found.scores[k - 1]))
            next_id += 1
        if prompts:
            gen = propagate_objects(predictor, stack, prompts, z_range=zb, cache=cache, stop=stop, step=step,
                                    labels=labels, channel_axis=channel_axis, disk=disk)
            labels = yield from _relay(gen, lambda p: Progress(n, len(looked), p.z, "propagate", p.labels_slice,
                                                               p.objects))
        out.labels = labels
        yield Progress(n + 1, len(looked), zf, "found", labels[zf].copy(), tuple(prompts),
                       labels=labels if n + 1 == len(looked) else None)
    return out

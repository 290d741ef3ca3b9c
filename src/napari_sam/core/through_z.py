"""Prompts on every slice ("batch prompts through z"), for objects that stay put.

Each object's prompts, drawn on one slice, are decoded on every slice of a
range; told that slice, the object is left out of the slices it is not on
(``propagate_rules.PresenceRule``). See docs/propagation.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .batch_decode import Decoded, decode_grouped
from .cache import EmbeddingCache, stack_embedder
from .label_canvas import USER_SCORE, LabelCanvas
from .predictor import with_mask_box
from .propagate_inputs import check_labels, check_stack, check_through_z, z_bounds
from .propagate_records import Progress
from .propagate_rules import PresenceRule
from .propagate_track import contrast


def batch_prompts_through_z(predictor, stack, prompts, *, z_range=None, cache: EmbeddingCache | None = None,
                            labels=None, min_score: float = 0.0, channel_axis: int | None = None,
                            disk=None, presence: PresenceRule | None = None) -> Iterator[Progress]:
    """The same prompts on every slice of ``z_range``, for objects that stay put.

    prompts: ``{object_id: prompt}``, or ``{object_id: {z: prompt}}`` with one
    slice per object: the slice the prompt was drawn on (within ``z_range``).
    All objects are decoded together on each slice; overlaps resolved by
    score; a slice where SAM's predicted IoU is below ``min_score`` stays
    empty. Told the slice each prompt was drawn on, the object is also left
    out of slices it is not on (``presence``, default :class:`PresenceRule`:
    too little contrast against its surroundings compared with that slice,
    a mask mostly outside its outline there, and every slice beyond the
    first such slice, up and down). The prompted slices are visited first,
    for their own objects (the reference), then every slice of the range for
    the others. Without a slice, every slice keeps SAM's answer.
    channel_axis, disk: as in :func:`propagate_objects`. Yields
    :class:`Progress` (stage "prompted" for the slices prompts were drawn on,
    else "batch"; ``ended``: (object, "absent", reason, z) for each slice an
    object was left out of); returns the (z, y, x) labels.
    """
    shape = check_stack(stack, channel_axis)
    zb = z_bounds(z_range, shape[0])
    objs = check_through_z(prompts, shape, zb)
    presence = PresenceRule() if presence is None else presence
    labels = check_labels(labels, shape, objs)
    embed = stack_embedder(predictor, stack, cache, channel_axis, disk)
    canvas = LabelCanvas(shape, labels, objs, zb)
    ids = list(objs)
    refs = sorted({z for z, _ in objs.values() if z is not None})
    # the slices prompts were drawn on first (their own objects only: the references), then every slice
    visits = [(z, [o for o in ids if objs[o][0] == z]) for z in refs]
    visits += [(z, g) for z in range(*zb) if (g := [o for o in ids if objs[o][0] != z])]
    asked = {o: with_mask_box(p) for o, (_, p) in objs.items()}  # a mask alone: with its box, as segment()
    reference: dict[int, tuple[float, int]] = {}  # oid -> (contrast, area) on the slice it was prompted on
    absent: list[tuple[int, int]] = []  # (oid, z) left out so far
    footprint: dict[int, tuple] = {}  # oid -> its grown outline on that slice (_footprint)
    for n, (z, group) in enumerate(visits, 1):
        image2d = embed(z)
        prompted = n <= len(refs)
        ended = []
        for o, d in decode_grouped(predictor, [(o, asked[o]) for o in group]):
            if prompted and objs[o][1].mask_alone:  # the user's own drawing on its slice: kept as it is
                d = _as_drawn(d, objs[o][1].mask)
            why = "empty mask" if not d.mask.any() else (
                f"predicted IoU {d.score:.2f} < {min_score}" if d.score < min_score else None)
            judged = not why and (prompted or o in reference)  # objects without a prompted slice: not judged
            c = contrast(image2d, canvas.labels[z], d.r0, d.c0, d.mask) if judged else None
            if judged and prompted:
                reference[o] = (c, d.area)
                footprint[o] = _footprint(d, presence.grow)
            elif judged:
                why = presence.reason(c, *reference[o], d.area, _inside(footprint[o], d))
            if why:
                ended.append((o, "absent", why, z))
            else:
                canvas.paint(z, o, d.r0, d.c0, d.mask, d.logits)
        if n == len(visits) and presence.contiguous:
            ended += _cut_beyond_gaps(canvas, objs, reference, absent + [(o, zz) for o, _, _, zz in ended], zb)
        absent += [(o, zz) for o, _, _, zz in ended]
        yield Progress(n, len(visits), z, "prompted" if prompted else "batch", canvas.labels[z].copy(), tuple(group),
                       tuple(ended), canvas.labels if n == len(visits) else None)
    return canvas.labels


def _as_drawn(d: Decoded, mask: np.ndarray) -> Decoded:
    """``d`` (SAM's answer to a mask alone, on the mask's own slice) with the drawn mask's pixels, which
    outrank any prediction (``USER_SCORE``)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, c0 = int(rows[0]), int(cols[0])
    crop = mask[r0 : rows[-1] + 1, c0 : cols[-1] + 1]
    return Decoded(d.score, d.low_res, r0, c0, np.full(crop.shape, USER_SCORE, np.float32), crop.copy())


def _footprint(d, grow: float):
    """(r0, c0, bool crop): the mask ``d`` grown by ``grow`` x its equivalent radius (+ 1 px)."""
    from scipy import ndimage as ndi

    k = int(np.ceil(grow * np.sqrt(d.area / np.pi))) + 1
    m = np.pad(d.mask, k)
    return d.r0 - k, d.c0 - k, ndi.binary_dilation(m, iterations=k)


def _inside(fp, d) -> float:
    """Fraction of ``d``'s mask inside the footprint ``fp``."""
    r0, c0, m = fp
    rr, cc = np.nonzero(d.mask)
    rr, cc = rr + d.r0 - r0, cc + d.c0 - c0
    ok = (rr >= 0) & (cc >= 0) & (rr < m.shape[0]) & (cc < m.shape[1])
    return float(m[rr[ok], cc[ok]].sum() / max(len(rr), 1))


def _cut_beyond_gaps(canvas, objs, reference, absent, zb) -> list[tuple]:
    """Erase each referenced object beyond the first slice it is absent from, above and below the slice it
    was prompted on (``PresenceRule.contiguous``); the ``ended`` records of what was erased."""
    gaps: dict[int, set[int]] = {}
    for o, z in absent:
        gaps.setdefault(o, set()).add(z)
    out = []
    for o, (zr, _) in objs.items():
        if zr is None or o not in reference or o not in gaps:
            continue
        above = [z for z in gaps[o] if z > zr]
        below = [z for z in gaps[o] if z < zr]
        cut = [z for z in range(min(above) + 1, zb[1]) if z not in gaps[o]] if above else []
        cut += [z for z in range(zb[0], max(below)) if z not in gaps[o]] if below else []
        for z in cut:
            if (canvas.labels[z] == o).any():
                canvas.erase(z, o)
                edge = min(above) if z > zr else max(below)
                out.append((o, "absent", f"beyond z={edge}, where it is not (an object is one run of slices)", z))
    return out

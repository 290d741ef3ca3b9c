"""One slice of propagation's passes, and the stop rule's last look after them.

``advance`` decodes every object alive in a pass on one slice (one batched
decoder call), applies the stop rule to those going outward and paints the
rest, scored by their logits minus ``StepRule.decay`` per slice from their
prompt. ``recheck`` applies the rule again once every object has painted.
Used by ``propagate.propagate_objects``.
"""

from __future__ import annotations

from dataclasses import replace

from .batch_decode import decode_objects
from .prompts import ObjectPrompt
from .propagate_rules import StepFeatures
from .propagate_track import Track, aligned_overlap, contrast, overlaps, select_by_overlap


def track(d, canvas, z, oid) -> Track:
    return Track(d.r0, d.c0, canvas.crop(z, oid, d.r0, d.c0, d.mask.shape), d.low_res, d.score)


def advance(predictor, canvas, z, image2d, work, step, stop, moving, up, outward) -> list[tuple[int, str]]:
    """Decode every object in ``work`` on slice z (one batched call), apply the
    stop rule to those propagating outward, paint the rest; returns the stopped
    ones. The accepted outward steps are appended to ``outward`` for ``recheck``."""
    shape2d = image2d.shape[:2]
    prompts = [step.prompt(prev, shape2d) for _, _, prev, _ in work]
    select = [select_by_overlap(prev) for _, _, prev, _ in work] if step.multimask else None
    windows = None if step.window is None else [step.window_box(prev, shape2d) for _, _, prev, _ in work]
    decoded = decode_objects(predictor, prompts, multimask=step.multimask, select=select, refine=predictor.refine,
                             windows=windows, threshold=step.threshold)
    for _ in range(step.iterate):
        redo = [k for k, d in enumerate(decoded) if d.mask.any()]
        if redo:
            again = [Track(decoded[k].r0, decoded[k].c0, decoded[k].mask, decoded[k].low_res, decoded[k].score) for k in redo]
            ps = [ObjectPrompt(points=t.deepest_point()[None], mask=t.low_res) for t in again]
            ws = None if windows is None else [windows[k] for k in redo]
            for k, d in zip(redo, decode_objects(predictor, ps, refine=predictor.refine, windows=ws,
                                                         threshold=step.threshold)):
                decoded[k] = d
    direction = "up" if up else "down"
    stopped, keep = [], []
    for (o, in_gap, prev, dist), d in zip(work, decoded):
        iou, covered = overlaps(prev, d.r0, d.c0, d.mask)
        f = StepFeatures(o, z, direction, d.score, iou, d.area, prev.area, max(prev.peak_area, d.area))
        f.covered = covered
        f.aligned, f.shift = aligned_overlap(prev, d.r0, d.c0, d.mask)
        why = None if in_gap else stop.reason(f)
        if why:
            stopped.append((o, why))
        else:
            keep.append((o, in_gap, prev, f, d, dist))
    for o, _, _, _, d, dist in keep:
        if d.mask.any():
            canvas.paint(z, o, d.r0, d.c0, d.mask, d.logits - step.decay * dist)
    for o, in_gap, prev, f, d, _ in keep:
        t = track(d, canvas, z, o)
        t.contrast0, t.peak_area = prev.contrast0, f.peak_area
        f.kept = t.area
        if not in_gap and prev.contrast0 > 0:
            c = contrast(image2d, canvas.labels[z], t.r0, t.c0, t.mask)
            f.contrast = c / prev.contrast0
            if stop.peak_contrast:
                t.contrast0 = max(prev.contrast0, c)
        why = None if in_gap else stop.reason(f)
        if why:
            canvas.erase(z, o)
            stopped.append((o, why))
        elif f.kept:
            moving[(o, up)] = t
            if not in_gap:
                outward.setdefault((o, up), []).append(f)
    return stopped


def recheck(canvas, outward, stop) -> tuple:
    """The stop rule again, on what each object kept once every object has
    painted. A pass meets the objects ahead of it before they have spread
    towards it: an object running on past its end into the object above it
    wins those slices until that object's own pass comes down and takes them
    back with better scores (``StepRule.decay``), leaving it fragments. Each
    object's outward slices are walked from its prompt; at the first one the
    rule now rejects, that slice and the ones beyond it are erased."""
    ends = []
    for (o, up), feats in outward.items():
        for k, f in enumerate(feats):
            crop = canvas.crop(f.z, o, *canvas.box(f.z, o))
            why = stop.reason(replace(f, kept=int(crop.sum())))
            if why:
                for g in feats[k:]:
                    canvas.erase(g.z, o)
                ends.append((o, "up" if up else "down", f"after the run: {why}", f.z))
                break
    return tuple(ends)

"""``napari-sam segment`` without --propagate or --every-slice: each object on the slices it was prompted on."""

from __future__ import annotations

import numpy as np


def segment_prompted_slices(stack, prompts, model, *, refine=False, channel_axis=None, disk=None,
                            input_scale=None, cache=None, normalize="percentile") -> np.ndarray:
    """Each object on each slice it was prompted on; (z, y, x) labels.

    All objects of a slice are decoded on one embedding; a single positive
    point takes the first of SAM's 3 candidates (``Prediction.best_index``,
    ``core.choose``), richer prompts one mask.
    Where objects claim the same pixel, the higher predicted IoU wins.
    disk: a ``DiskCache`` of the stack (read first; what is encoded is added).
    cache: an ``EmbeddingCache`` to read and fill (e.g. the slice ``--input-scale auto`` measured).
    normalize: intensity normalisation (``core.image``).
    """
    from .core.cache import embed_cached
    from .core.predictor import SlicePredictor
    from .core.prompts import ObjectPrompt

    nz = stack.shape[0]
    shape = stack.shape[1:3]
    labels = np.zeros((nz, *shape), np.uint32)
    pred = SlicePredictor(model, normalize=normalize, refine=refine, input_scale=input_scale)
    by_z: dict[int, list] = {}
    for oid, zs in prompts.items():
        for z, s in zs.items():
            by_z.setdefault(z, []).append((oid, ObjectPrompt(np.array(s["points"], float).reshape(-1, 2), s["labels"], s["box"])))
    for z in sorted(by_z):
        pred.set_embedding(embed_cached(pred, cache, np.asarray(stack[z]), channel_axis=channel_axis, disk=disk, index=z))
        score = np.full(shape, -np.inf, np.float32)
        for multimask in (True, False):
            items = [(o, p) for o, p in by_z[z] if _is_single_point(p) == multimask]
            if not items:
                continue
            r = pred.predict_objects([p for _, p in items], multimask=multimask)
            best = r.best_index()
            for k, (oid, _) in enumerate(items):
                m, sc = r.masks[k, best[k]], float(r.scores[k, best[k]])
                win = m & (sc > score)
                labels[z][win] = oid
                score[win] = sc
    return labels


def _is_single_point(p) -> bool:
    return p.box is None and len(p.points) == 1 and int(p.labels[0]) == 1

"""``input_scale="auto"``: the embedded model's magnification chosen from the
objects the user prompted.

The embedded model sees a slice magnified 2x by default: best for nuclei
(radius ~5-20 px). Cell bodies are better segmented at the slice's own size
(1x: median IoU 0.90-0.94 against 0.83-0.86 at 2x for one click,
``benchmarks/eval_sizes.py``, docs/embedded-model.md). "auto" decodes the
prompts once at the default magnification, measures the objects (median
equivalent radius of the masks shown first) and, if they are large, uses 1x.
The two kinds overlap in radius (nuclei of radius 12-20 px measure ~14 px,
cell bodies of the same range ~21 px: cells are lobed and spread), so the
threshold sits between them.
"""

from __future__ import annotations

import numpy as np

AUTO = "auto"
AUTO_RADIUS = 18.0  # px at the slice's own size: objects at least this large are segmented at 1x
LARGE_SCALE = 1.0


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def check_scale(value):
    """An ``input_scale`` as given: None, "auto" or a number in range; else ValueError saying what is allowed."""
    from .predictor import input_scale_problem

    if value is None or is_auto(value):
        return None if value is None else AUTO
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"input_scale takes a number (e.g. 1.0 or 2.0) or 'auto', not {value!r}") from None
    problem = input_scale_problem(value)
    if problem:
        raise ValueError(f"input_scale {problem}")
    return value


def median_radius(masks) -> float:
    """Median equivalent radius sqrt(area / pi) of (n, H, W) masks, px (nan when none)."""
    areas = np.asarray(masks, bool).reshape(len(masks), -1).sum(1)
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(areas / np.pi))) if len(areas) else float("nan")


def scale_for(radius: float, default: float) -> float:
    """The magnification for objects of this median radius: ``LARGE_SCALE`` when large, else ``default``."""
    return LARGE_SCALE if np.isfinite(radius) and radius >= AUTO_RADIUS else default


def auto_scale(model, slice2d, objects, *, normalize: str = "percentile", channel_axis=None,
               cache=None) -> tuple[float, float]:
    """(magnification, measured median radius px) for ``objects`` (``ObjectPrompt``s) on ``slice2d``;
    a mask given alone (bool) is measured as it is. Models that always see SAM's 1024 canvas (ViTs)
    get their own 1.0, radius nan. cache: an ``EmbeddingCache`` the slice's embedding at the default
    magnification goes into (a run that keeps that magnification does not encode it again)."""
    from .cache import embed_cached
    from .predictor import SlicePredictor

    pred = SlicePredictor(model, normalize=normalize)
    if not pred.native or not objects:
        return pred.input_scale, float("nan")
    masks = [o.mask for o in objects if o.mask_alone]
    ask = [o for o in objects if not o.mask_alone]
    if ask:
        pred.set_embedding(embed_cached(pred, cache, np.asarray(slice2d), channel_axis=channel_axis))
        masks += list(pred.predict_objects(ask, multimask=True).best())
    r = median_radius(masks)
    return scale_for(r, pred.input_scale), r


def stack_scale(model, stack, prompts, *, normalize: str = "percentile", channel_axis=None,
                cache=None) -> tuple[float, float]:
    """``auto_scale`` for {object_id: {z: prompt}} prompts of a (z, y, x) stack (checked as
    ``propagate_objects`` checks them), measured on the slice holding most prompted objects."""
    from .propagate_inputs import check_prompts, check_stack

    shape = check_stack(stack, channel_axis)
    per_z: dict[int, list] = {}
    for zs in check_prompts(prompts, shape, (0, shape[0])).values():
        for z, p in zs.items():
            per_z.setdefault(z, []).append(p)
    z = max(per_z, key=lambda k: (len(per_z[k]), -k))
    return auto_scale(model, stack[z], per_z[z], normalize=normalize, channel_axis=channel_axis, cache=cache)

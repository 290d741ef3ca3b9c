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
               channel=None) -> tuple[float, float]:
    """(magnification, measured median radius px) for ``objects`` (``ObjectPrompt``s) on ``slice2d``;
    a mask given alone (bool) is measured as it is. Models that always see SAM's 1024 canvas (ViTs)
    get their own 1.0, radius nan."""
    from .predictor import SlicePredictor

    pred = SlicePredictor(model, normalize=normalize)
    if not pred.native or not objects:
        return pred.input_scale, float("nan")
    given = [o.mask for o in objects if _mask_alone(o)]
    ask = [o for o in objects if not _mask_alone(o)]
    masks = list(given)
    if ask:
        pred.set_image(np.asarray(slice2d), channel_axis=channel_axis, channel=channel)
        masks += list(pred.predict_objects(ask, multimask=True).best())
    r = median_radius(masks)
    return scale_for(r, pred.input_scale), r


def _mask_alone(o) -> bool:
    return o.mask is not None and np.asarray(o.mask).dtype == bool and not len(o.points) and o.box is None


def stack_scale(model, stack, prompts, *, normalize: str = "percentile", channel_axis=None) -> tuple[float, float]:
    """``auto_scale`` for {object_id: {z: prompt}} prompts of a (z, y, x) stack (or
    {object_id: prompt} for every slice): measured on the slice holding most prompted objects."""
    from .propagate_inputs import as_prompt

    shape2d = np.shape(stack)[1:3]
    per_z: dict[int, list] = {}
    for oid, p in prompts.items():
        if isinstance(p, dict) and p and all(isinstance(k, (int, np.integer)) for k in p):
            for z, q in p.items():
                per_z.setdefault(int(z), []).append(as_prompt(q, oid, z, shape2d))
        else:  # the same prompt on every slice: measured on the middle one
            per_z.setdefault(len(stack) // 2, []).append(as_prompt(p, oid, None, shape2d))
    z = max(per_z, key=lambda k: (len(per_z[k]), -k))
    return auto_scale(model, np.asarray(stack[z]), per_z[z], normalize=normalize, channel_axis=channel_axis)

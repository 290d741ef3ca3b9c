"""Checks of what propagation is given, with messages that say what to fix.

prompts: ``{object_id: {z: ObjectPrompt or dict(points=, labels=, box=, mask=)}}``
with napari's (row, col) convention; z_range: ``(start, stop)`` slice
indices, half-open like ``range`` (either may be None), or a ``slice``.
"""

from __future__ import annotations

import numbers

import numpy as np

from .label_canvas import check_fits
from .prompts import ObjectPrompt, check_inside, on_slice

PROMPT_KEYS = {"points", "labels", "point_labels", "box", "mask"}


def check_stack(stack, channel_axis: int | None = None) -> tuple[int, int, int]:
    """(nz, ny, nx) of a z-stack, or a ValueError saying what the array is instead.

    channel_axis: the channels' axis in a slice, -1 for (z, y, x, c) (e.g. RGB), 0 for (z, c, y, x); c is not
    counted."""
    shape = tuple(getattr(stack, "shape", np.shape(stack)))
    if channel_axis is not None and (len(shape) == 4 or getattr(stack, "ndim", None) == 3):
        # (a view of an RGB stack without ndim, the widget's, gives its shape as (z, y, x): taken as it is)
        if len(shape) != 4:
            raise ValueError(f"channel_axis={channel_axis} is for a stack of colour or multichannel slices, "
                             f"(z, y, x, c) or (z, c, y, x); this stack has shape {shape}: leave channel_axis out "
                             "for one channel")
        if not isinstance(channel_axis, numbers.Integral) or not -3 <= channel_axis < 3:
            raise ValueError(f"channel_axis is the channels' axis in a slice: -1 for (z, y, x, c), 0 for (z, c, y, x); "
                             f"got {channel_axis!r}")
        if channel_axis in (1, -2):  # a slice's middle axis: its rows (or columns) would be taken for channels
            raise ValueError(f"channel_axis={channel_axis} would take the middle axis of each slice (stack[z], shape "
                             f"{tuple(shape[1:])}), its rows or columns, for channels: channel_axis counts the axes of "
                             "one slice, so it is 0 for a (z, c, y, x) stack and -1 for (z, y, x, c) (napari's "
                             "channel_axis=1 for (z, c, y, x) counts the whole array's axes; here it is 0)")
        shape = shape[:1] + tuple(int(v) for v in np.delete(shape[1:], channel_axis))
    if len(shape) == 2:
        raise ValueError(f"propagate needs a (z, y, x) stack; for one slice use segment() (got a 2D array of shape {shape})")
    if len(shape) != 3:
        hint = ("; for several channels pass one channel, e.g. stack[:, c] or stack[..., c], or all of them with "
                "channel_axis=-1 (z, y, x, c) or channel_axis=0 (z, c, y, x)") if len(shape) == 4 else ""
        raise ValueError(f"propagate needs a (z, y, x) stack, got an array of shape {shape}{hint}")
    if min(shape) < 1:
        raise ValueError(f"the stack of shape {shape} is empty")
    return shape


def z_bounds(z_range, nz: int) -> tuple[int, int]:
    """``z_range`` -> (start, stop) with 0 <= start < stop <= nz."""
    if z_range is None:
        return 0, nz
    if isinstance(z_range, slice):
        if z_range.step not in (None, 1):
            raise ValueError("z_range cannot have a step: give (start, stop)")
        z_range = (z_range.start, z_range.stop)
    try:
        a, b = z_range
    except (TypeError, ValueError):
        raise ValueError(f"z_range must be (start, stop) slice indices, got {z_range!r}") from None
    a = 0 if a is None else a
    b = nz if b is None else b
    if not all(isinstance(v, numbers.Integral) for v in (a, b)):
        raise ValueError(f"z_range must hold whole slice indices, got {z_range!r}")
    a, b = int(a), int(b)
    if not 0 <= a < b <= nz:
        raise ValueError(
            f"z_range {a}:{b} does not fit the stack's {nz} slices: give start:stop with 0 <= start < stop <= {nz} "
            "(stop is excluded, as in Python)"
        )
    return a, b


def as_prompt(p, oid, z, shape2d) -> ObjectPrompt:
    """One object's prompt on one slice, checked against the slice's (H, W)."""
    where = f"object {oid}" + ("" if z is None else f" on slice {z}")
    if isinstance(p, dict):
        extra = set(p) - PROMPT_KEYS
        if extra:
            raise ValueError(f"{where}: unknown prompt keys {sorted(extra)}; use points, labels, box, mask")
        labels = p.get("labels", p.get("point_labels"))
        try:
            p = ObjectPrompt(points=np.zeros((0, 2)) if p.get("points") is None else p["points"], labels=labels,
                             box=p.get("box"), mask=p.get("mask"))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    elif not isinstance(p, ObjectPrompt):
        raise ValueError(f"{where}: a prompt is an ObjectPrompt or a dict(points=, labels=, box=, mask=), got {type(p).__name__}")
    if p.empty:
        raise ValueError(f"{where} has no prompt: give at least one point, a box or a mask")
    if p.box is None and p.mask is None and not p.labels.any():
        raise ValueError(f"{where} has only negative points (label 0), which say where the object is not: "
                         "add a positive point (label 1), a box or a mask")
    try:
        check_inside(p.points, None if p.box is None else p.box[None], shape2d)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    p = on_slice(p, shape2d)  # a box beyond the slice, cut to it
    if p.mask is not None:
        m = np.asarray(p.mask)
        if m.dtype == bool and m.shape != tuple(shape2d):
            raise ValueError(f"{where}: mask has shape {m.shape}, the slices are {tuple(shape2d)}")
        if m.dtype == bool and not m.any():
            raise ValueError(f"{where}: the mask is empty (no pixel set): give the object's pixels, or leave the "
                             "mask out")
        p.mask = m
    return p


MAX_ID = 2**64 - 1  # the largest label a uint64 array holds


def check_id(oid) -> int:
    if isinstance(oid, bool) or not isinstance(oid, numbers.Integral) or not 0 < int(oid) <= MAX_ID:
        raise ValueError(f"object ids must be positive whole numbers, at most 2**64 - 1 (0 is background), got {oid!r}")
    return int(oid)


def is_slice_key(k) -> bool:
    """A key of ``{z: prompt}``: a number (4, np.int64(4), 4.0 from a table of floats), not a prompt key."""
    return isinstance(k, numbers.Real) and not isinstance(k, bool)


def check_distinct(per_slice: dict) -> None:
    """Two objects given the same positive click (the same pixel) or the same box on one slice: SAM finds one
    object there for both, and they split its pixels between them. ``per_slice``: {z: [(oid, ObjectPrompt)]}."""
    for z, items in per_slice.items():
        seen: dict[tuple, int] = {}
        for oid, p in items:
            marks = [("click", int(round(r)), int(round(c))) for (r, c), lab in zip(p.points, p.labels) if lab]
            if p.box is not None:
                marks.append(("box",) + tuple(int(round(v)) for v in p.box))
            for mk in dict.fromkeys(marks):
                other = seen.setdefault(mk, oid)
                if other != oid:
                    what = (f"a positive click at (row={mk[1]}, col={mk[2]})" if mk[0] == "click"
                            else f"the box ({', '.join(map(str, mk[1:]))})")
                    on = "" if z is None else f" on slice {z}"
                    raise ValueError(f"objects {other} and {oid} have {what}{on}: there SAM finds one object for "
                                     "both and they split it; give each object its own click or box, or one id")


def check_prompts(prompts, shape, zb, distinct: bool = False) -> dict[int, dict[int, ObjectPrompt]]:
    """``{oid: {z: prompt}}`` -> checked ``{oid: {z: ObjectPrompt}}``. distinct: refuse two objects given
    the same click or box on a slice (``check_distinct``), as propagation does; segmenting the prompted
    slices alone gives all of it to one of them instead (the CLI names the other)."""
    nz = shape[0]
    if not isinstance(prompts, dict) or not prompts:
        raise ValueError("no prompts: give {object_id: {z: dict(points=..., box=..., mask=...)}}")
    out: dict[int, dict[int, ObjectPrompt]] = {}
    for oid, per_z in prompts.items():
        oid = check_id(oid)
        if not isinstance(per_z, dict) or not per_z:
            raise ValueError(f"object {oid}: give its prompts per slice, {{z: prompt}}, with at least one slice")
        out[oid] = {}
        for z, p in per_z.items():
            if not is_slice_key(z) or not (isinstance(z, numbers.Integral) or float(z).is_integer()):
                raise ValueError(f"object {oid}: slice index {z!r} is not a whole number")
            z = int(z)  # 4 or 4.0 (a z read from a table of floats)
            if not 0 <= z < nz:
                raise ValueError(f"object {oid} is prompted on slice {z}, but the stack has {nz} slices (0..{nz - 1})")
            if not zb[0] <= z < zb[1]:
                raise ValueError(
                    f"object {oid} is prompted on slice {z}, outside z_range {zb[0]}:{zb[1]}; widen z_range or drop that prompt"
                )
            out[oid][z] = as_prompt(p, oid, z, shape[1:])
    if distinct:
        per_slice: dict[int, list] = {}
        for oid, per_z in out.items():
            for z, p in per_z.items():
                per_slice.setdefault(z, []).append((oid, p))
        check_distinct(per_slice)
    return out


def check_through_z(prompts, shape, zb) -> dict[int, tuple[int | None, ObjectPrompt]]:
    """Prompts for applying them to every slice: ``{oid: prompt}``, or ``{oid: {z: prompt}}`` with one
    slice per object (the slice they were drawn on) -> ``{oid: (z or None, ObjectPrompt)}``."""
    if not isinstance(prompts, dict) or not prompts:
        raise ValueError("no prompts: give {object_id: dict(points=..., box=...)} or {object_id: {z: dict(...)}}")
    out: dict[int, tuple[int | None, ObjectPrompt]] = {}
    for oid, p in prompts.items():
        oid = check_id(oid)
        per_z = isinstance(p, dict) and p and all(is_slice_key(k) for k in p)
        if not per_z:
            out[oid] = (None, as_prompt(p, oid, None, shape[1:]))
            continue
        if len(p) > 1:
            zs = ", ".join(str(int(z)) for z in sorted(p))
            raise ValueError(f"object {oid} is prompted on slices {zs}: applying prompts to every slice takes each "
                             "object's prompts from one slice; to follow an object from several slices, propagate it")
        (z, q), = p.items()
        (z, q), = check_prompts({oid: {z: q}}, shape, zb)[oid].items()
        out[oid] = (z, q)
    # the same click on one slice (or for an object without a slice, on any): see check_distinct
    everywhere = [(oid, q) for oid, (z, q) in out.items() if z is None]
    check_distinct({z: everywhere + [(oid, q) for oid, (zz, q) in out.items() if zz == z]
                    for z in {z for z, _ in out.values()}})
    return out


def check_labels(labels, shape, ids=()):
    """``labels`` of the stack's ``shape`` that can hold every object id in ``ids``."""
    if labels is None:
        return None
    if tuple(np.shape(labels)) != tuple(shape):
        raise ValueError(f"labels have shape {tuple(np.shape(labels))}, the stack {tuple(shape)}: they must match")
    check_fits(labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype, ids)
    return labels

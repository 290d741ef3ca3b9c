"""Checks of what propagation is given, with messages that say what to fix.

prompts: ``{object_id: {z: ObjectPrompt or dict(points=, labels=, box=, mask=)}}``
with napari's (row, col) convention; z_range: ``(start, stop)`` slice
indices, half-open like ``range`` (either may be None), or a ``slice``.
"""

from __future__ import annotations

import numbers

import numpy as np

from .prompts import ObjectPrompt, check_inside

PROMPT_KEYS = {"points", "labels", "point_labels", "box", "mask"}


def check_stack(stack, channel_axis: int | None = None) -> tuple[int, int, int]:
    """(nz, ny, nx) of a z-stack, or a ValueError saying what the array is instead.

    channel_axis (-1): the stack is (z, y, x, c), e.g. RGB; c is not counted."""
    shape = tuple(getattr(stack, "shape", np.shape(stack)))
    if channel_axis is not None and len(shape) == 4:
        shape = shape[:-1]
    if len(shape) == 2:
        raise ValueError(f"propagate needs a (z, y, x) stack; for one slice use segment() (got a 2D array of shape {shape})")
    if len(shape) != 3:
        hint = "; for several channels pass one channel, e.g. stack[:, c] or stack[..., c]" if len(shape) == 4 else ""
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
    try:
        check_inside(p.points, None if p.box is None else p.box[None], shape2d)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if p.mask is not None:
        m = np.asarray(p.mask)
        if m.dtype == bool and m.shape != tuple(shape2d):
            raise ValueError(f"{where}: mask has shape {m.shape}, the slices are {tuple(shape2d)}")
        p.mask = m
    return p


def check_id(oid) -> int:
    if isinstance(oid, bool) or not isinstance(oid, numbers.Integral) or int(oid) <= 0:
        raise ValueError(f"object ids must be positive whole numbers (0 is background), got {oid!r}")
    return int(oid)


def check_prompts(prompts, shape, zb) -> dict[int, dict[int, ObjectPrompt]]:
    """``{oid: {z: prompt}}`` -> checked ``{oid: {z: ObjectPrompt}}``."""
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
            if isinstance(z, bool) or not (isinstance(z, numbers.Integral)
                                           or isinstance(z, numbers.Real) and float(z).is_integer()):
                raise ValueError(f"object {oid}: slice index {z!r} is not a whole number")
            z = int(z)  # 4 or 4.0 (a z read from a table of floats)
            if not 0 <= z < nz:
                raise ValueError(f"object {oid} is prompted on slice {z}, but the stack has {nz} slices (0..{nz - 1})")
            if not zb[0] <= z < zb[1]:
                raise ValueError(
                    f"object {oid} is prompted on slice {z}, outside z_range {zb[0]}:{zb[1]}; widen z_range or drop that prompt"
                )
            out[oid][z] = as_prompt(p, oid, z, shape[1:])
    return out


def check_through_z(prompts, shape, zb) -> dict[int, tuple[int | None, ObjectPrompt]]:
    """Prompts for applying them to every slice: ``{oid: prompt}``, or ``{oid: {z: prompt}}`` with one
    slice per object (the slice they were drawn on) -> ``{oid: (z or None, ObjectPrompt)}``."""
    if not isinstance(prompts, dict) or not prompts:
        raise ValueError("no prompts: give {object_id: dict(points=..., box=...)} or {object_id: {z: dict(...)}}")
    out: dict[int, tuple[int | None, ObjectPrompt]] = {}
    for oid, p in prompts.items():
        oid = check_id(oid)
        per_z = isinstance(p, dict) and p and all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in p)
        if not per_z:
            out[oid] = (None, as_prompt(p, oid, None, shape[1:]))
            continue
        if len(p) > 1:
            zs = ", ".join(str(int(z)) for z in sorted(p))
            raise ValueError(f"object {oid} is prompted on slices {zs}: applying prompts to every slice takes each "
                             "object's prompts from one slice; to follow an object from several slices, propagate it")
        (z, q), = p.items()
        out[oid] = (int(z), check_prompts({oid: {z: q}}, shape, zb)[oid][int(z)])
    return out


def check_labels(labels, shape):
    if labels is None:
        return None
    if tuple(np.shape(labels)) != tuple(shape):
        raise ValueError(f"labels have shape {tuple(np.shape(labels))}, the stack {tuple(shape)}: they must match")
    return labels

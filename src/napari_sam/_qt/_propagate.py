"""Propagation for the widget, without the widget: which stack, which prompts, what to write.

The labels layer's committed objects are the prompts: an object's mask on
every slice where it already is becomes a mask prompt (kept as it is, see
``core.propagate``), so propagation fills the gaps between those slices and
goes on beyond them. The run works on a snapshot; at the end only pixels that
were background (0) before the run, and still are, are written, so no existing
object (nor the object's own committed slices) ever changes.
Here z is the image's last non-displayed axis; any other one stays where the
viewer is. Pure numpy over core objects: testable without Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_sam.core.propagate import batch_prompts_through_z, propagate_objects

from ._plane import Plane
from ._session import reported


class PropagateError(ValueError):
    """Propagation cannot start; the message says why and what to do."""


class StackView:
    """The (z, rows, cols) stack of an nD array through ``plane``, read lazily one slice at a time.

    z_axis: the data axis that becomes z; every other non-displayed axis stays at the plane's index.
    """

    def __init__(self, data, plane: Plane, z_axis: int):
        self.data, self.plane, self.z_axis = data, plane, z_axis
        self.shape = (int(data.shape[z_axis]), *plane.shape)
        self.dtype = getattr(data, "dtype", None)

    def _index(self, z) -> tuple:
        idx = list(self.plane.index)
        idx[self.z_axis] = z
        return tuple(idx)

    def __getitem__(self, z: int) -> np.ndarray:
        return np.asarray(self.data[self._index(int(z))])

    def volume(self) -> np.ndarray:
        """The whole (z, rows, cols) stack as a numpy copy (for labels)."""
        sub = np.asarray(self.data[self._index(slice(None))])
        # the remaining axes keep their data order: put z first
        order = sorted((self.z_axis, *self.plane.axes))
        return np.array(np.moveaxis(sub, order.index(self.z_axis), 0), copy=True)

    def full_index(self, z, rows, cols) -> tuple[np.ndarray, ...]:
        """nD fancy index (for ``Labels.data_setitem``) of (z, row, col) positions."""
        n = len(z)
        idx: list = [None] * (len(self.plane.fixed) + 2)
        for a, i in self.plane.fixed:
            idx[a] = np.full(n, i, dtype=np.intp)
        idx[self.z_axis] = np.asarray(z, np.intp)
        idx[self.plane.axes[0]], idx[self.plane.axes[1]] = np.asarray(rows, np.intp), np.asarray(cols, np.intp)
        return tuple(idx)


def z_axis_of(plane: Plane) -> int:
    """The axis propagation follows: the plane's last non-displayed axis (z of t, z, y, x)."""
    if not plane.fixed:
        raise PropagateError(
            "propagation follows objects through z, but this image is 2D (one slice): "
            "commit objects with C instead, or open a z-stack"
        )
    return plane.fixed[-1][0]


def z_name(plane: Plane) -> str:
    """The z axis' name as the status line shows it ("z" in "z=5")."""
    return plane.label.split(", ")[-1].split("=")[0]


def objects_on_slice(labels2d: np.ndarray) -> list[int]:
    """Label ids present on one (rows, cols) slice, ascending."""
    ids = np.unique(labels2d)
    return [int(i) for i in ids if i != 0]


def anchor_prompts(labels: np.ndarray, ids, z_range=None) -> dict[int, dict[int, dict]]:
    """``{id: {z: {"mask": (H, W) bool}}}``: each object's mask on every slice (of ``z_range``, (start, stop))
    where it already is."""
    out: dict[int, dict[int, dict]] = {}
    for z in range(*(z_range or (0, labels.shape[0]))):
        present = set(objects_on_slice(labels[z])) & set(ids)
        for oid in sorted(present):
            out.setdefault(oid, {})[z] = {"mask": labels[z] == oid}
    return out


@reported
def run_propagation(predictor, stack, labels: np.ndarray, ids, cache, disk=None, channel_axis=None, memory=False,
                    z_range=None):
    """Generator (runs in a worker): propagate ``ids`` of ``labels`` (z, H, W) through ``stack`` (the slices
    of ``z_range``, (start, stop), or all).

    disk: the stack's disk cache, taking the z of ``stack`` as its index
    (``_precompute_work.SharedDisk.at(outer)``), or None. channel_axis: -1 for an RGB stack
    (its slices are (H, W, 3)). memory: with SAM 2's video predictor (``core.sam2_memory``; SAM 2
    models only; it uses neither ``cache`` nor ``disk``).
    Yields ``core.propagate.Progress``; returns the (z, H, W) result (``labels`` is not changed).
    A RuntimeError inside (torch: out of memory...) is raised as ``_session.WorkerError``.
    """
    prompts = anchor_prompts(labels, ids, z_range)
    if memory:
        from napari_sam.core.sam2_memory import propagate_memory

        return (yield from propagate_memory(predictor, stack, prompts, labels=labels, channel_axis=channel_axis,
                                            z_range=z_range))
    return (yield from propagate_objects(predictor, stack, prompts, cache=cache, labels=labels, disk=disk,
                                         channel_axis=channel_axis, z_range=z_range))


@reported
def run_every_slice(predictor, stack, labels: np.ndarray, prompts: dict, cache, disk=None, channel_axis=None,
                    z_range=None):
    """Generator (runs in a worker): ``prompts`` ({id: {z: ObjectPrompt}}, z the slice they were drawn on)
    applied to every slice of ``stack`` (of ``z_range``, or all; ``core.propagate.batch_prompts_through_z``);
    the objects stay out of slices they are not on. Yields ``Progress``; returns the (z, H, W) result
    (``labels`` is not changed).
    """
    return (yield from batch_prompts_through_z(predictor, stack, prompts, cache=cache, labels=labels, disk=disk,
                                               channel_axis=channel_axis, z_range=z_range))


def new_pixels(result: np.ndarray, before: np.ndarray, now: np.ndarray) -> np.ndarray:
    """(z, H, W) bool: where the run labelled a pixel that was background before it and still is."""
    return (result != 0) & (before == 0) & (now == 0)


@dataclass
class Outcome:
    """What a propagation run reached, for the status line.

    ends: {(id, "up"/"down"): (z, reason)} from the progress records' ``ended``.
    """

    ids: list[int]
    zname: str = "z"
    bounds: tuple | None = None  # (first, last) slice the run could reach, when not the whole stack
    ends: dict = field(default_factory=dict)
    absent: dict = field(default_factory=dict)  # {id: [(z, reason)]}: slices left empty by prompts on every slice

    def record(self, progress) -> None:
        for oid, direction, reason, z in progress.ended:
            if direction == "absent":  # prompts on every slice: a slice the object is not on
                self.absent.setdefault(int(oid), []).append((int(z), reason))
            else:
                self.ends[(int(oid), direction)] = (int(z), reason)

    def _stops(self, oid: int, zs: np.ndarray, nz: int) -> list[tuple[str, int | None, str]]:
        """[(direction, z it stopped at or None, why)] for the directions where it ended."""
        out = []
        lo, hi = self.bounds or (0, nz - 1)
        for direction, edge, end, whole, which in (("up", zs[-1], hi, hi == nz - 1, "last"),
                                                   ("down", zs[0], lo, lo == 0, "first")):
            if (oid, direction) in self.ends:
                out.append((direction, *self.ends[(oid, direction)]))
            elif edge == end:
                out.append((direction, None, "reached the stack's end" if whole else
                            f"reached the {which} slice set ({self.zname}={end})"))
        return out

    def object_text(self, oid: int, result: np.ndarray, written: np.ndarray) -> str:
        """Where ``oid`` is in ``result``, how many slices got new pixels, where and why it stopped."""
        zs = np.flatnonzero((result == oid).any((1, 2)))
        if not len(zs):
            return f"label {oid}: nowhere"
        new = int(np.count_nonzero((written & (result == oid)).any((1, 2))))
        zn = self.zname
        parts = [f"{d}: stopped at {zn}={z} ({why})" if z is not None else f"{d}: {why}"
                 for d, z, why in self._stops(oid, zs, result.shape[0])]
        if oid in self.absent:
            gone = sorted(self.absent[oid])
            parts.append(f"left out of {len(gone)} slice(s) where it is not, e.g. {zn}={gone[0][0]} ({gone[0][1]})")
        return f"label {oid}: {self._extent(zs)}, {len(zs)} slice(s), {new} with new pixels" + (
            f"; {'; '.join(parts)}" if parts else "")

    def short_text(self, oid: int, result: np.ndarray) -> str:
        """One short line: where ``oid`` is and where it stopped."""
        zs = np.flatnonzero((result == oid).any((1, 2)))
        if not len(zs):
            return f"label {oid}: nowhere"
        stops = [f"{self.zname}={z} {d}" if z is not None else f"stack end {d}"
                 for d, z, _ in self._stops(oid, zs, result.shape[0])]
        return f"label {oid}: {self._extent(zs)} ({len(zs)} slices)" + (
            f"; stopped at {', '.join(stops)}" if stops else "")

    def _extent(self, zs: np.ndarray) -> str:
        zn = self.zname
        return f"{zn}={zs[0]}–{zs[-1]}" if zs[-1] > zs[0] else f"{zn}={zs[0]}"

    def text(self, result: np.ndarray, written: np.ndarray, *, show: int = 4, short: bool = False) -> str:
        """One line per object (the first ``show``)."""
        lines = [self.short_text(o, result) if short else self.object_text(o, result, written)
                 for o in self.ids[:show]]
        if len(self.ids) > show:
            lines.append(f"… and {len(self.ids) - show} more object(s)")
        return "\n".join(lines)

"""Propagation for the widget, without the widget: which stack, which prompts, what to write.

The labels layer's committed objects are the prompts: an object's mask on
every slice where it already is becomes a mask prompt (kept as it is, see
``core.propagate``), so propagation fills the gaps between those slices and
goes on beyond them. At the end only pixels that were background (0) when the
run started, and still are, are written, so no existing object (nor the
object's own committed slices) ever changes; the one exception is an object's
slices that an earlier propagation of the widget wrote and nobody changed
since: they are redone (``_redo.py``).
The labels are held once: the worker reads the layer slice by slice (which
pixels are background, packed to a bit each; the anchors), the run makes its
one copy, and what it would write comes back as pixel lists (:class:`Changes`),
so nothing of the size of the stack is copied on the GUI thread.
Here z is the image's last non-displayed axis; any other one stays where the
viewer is. Pure numpy over core objects: testable without Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_sam.core.propagate import batch_prompts_through_z, propagate_objects

from ._plane import Plane
from ._redo import fingerprint
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

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        """The whole stack, one copy (what a run's ``LabelCanvas`` takes of the labels)."""
        vol = self.volume()
        return vol if dtype is None else vol.astype(dtype, copy=False)

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


CHANNEL_NAMES = {"c", "ch", "channel", "channels"}


def z_axis_of(plane: Plane) -> int:
    """The axis propagation follows: the non-displayed axis named z (the viewer's axis labels, e.g. z of an
    image labelled z, c, y, x), else the plane's last non-displayed axis with more than one slice that is not
    named as channels (z of t, z, y, x; the first axis of a (z, 1, y, x) stack with a single channel, t of
    (t, 1, y, x)). PropagateError when every such axis is channels."""
    if not plane.fixed:
        raise PropagateError(
            "propagation follows objects through z, but this image is 2D (one slice): "
            "commit objects with C instead, or open a z-stack"
        )
    names = dict(enumerate(n.lower() for n in plane.names))
    hidden = [a for a, _ in plane.fixed]
    named_z = [a for a in hidden if names.get(a) == "z"]
    if named_z:
        return named_z[-1]
    other = [a for a in hidden if names.get(a) not in CHANNEL_NAMES]
    if not other:
        raise PropagateError(
            f"propagation follows objects through z, but the axes not shown are channels ({plane.label}): "
            "commit objects with C instead; for a z-stack, name its axis z"
        )
    longer = [a for a in other if not plane.extent or plane.extent[a] > 1]
    return (longer or other)[-1]


def z_name(plane: Plane) -> str:
    """The z axis' name as the status line shows it ("z" in "z=5")."""
    k = [a for a, _ in plane.fixed].index(z_axis_of(plane))
    return plane.label.split(", ")[k].split("=")[0]


def objects_on_slice(labels2d: np.ndarray) -> list[int]:
    """Object ids present on one (rows, cols) slice, ascending: its positive labels (a negative label of a
    user's int layer is not followed, and never overwritten)."""
    labels2d = np.asarray(labels2d)
    return [int(i) for i in np.unique(labels2d[labels2d > 0])]


def negative_label(label: int) -> str:
    """The message for a negative selected label (napari-sam's objects have positive ids)."""
    return (f"the selected label is {label}: napari-sam follows objects with positive ids only; "
            "select a positive label (or relabel this object)")


def slice_range(n: int, z: int, first: int, last: int, here: str, zn: str = "z") -> tuple[int, int] | None:
    """The slices set under 'Propagate through z' (``first``, ``last``; ``last`` -1: the stack's end) as a
    (start, stop) range of a stack of ``n`` slices, None for the whole stack; PropagateError when they hold
    none of its slices, leave out ``z`` (the current slice, ``here`` in messages) or hold only it."""
    b = n - 1 if last < 0 else min(last, n - 1)
    if first > b:
        shown = "last" if last < 0 else last
        raise PropagateError(f"the slices set under 'Propagate through z' ({zn}={first} to {shown}) hold none "
                             f"of this stack's {zn}=0–{n - 1}: fix them")
    if not first <= z <= b:
        raise PropagateError(f"{here} is outside the slices set under 'Propagate through z' "
                             f"({zn}={first}–{b}): go to a slice inside them, or widen them")
    if first == b:
        raise PropagateError(f"the slices set under 'Propagate through z' ({zn}={first}–{b}) hold only {here}: "
                             "nothing to carry the objects to; widen them (or commit on this slice with C)")
    return None if (first, b) == (0, n - 1) else (first, b + 1)


def anchor_prompts(labels: np.ndarray, ids, z_range=None) -> dict[int, dict[int, dict]]:
    """``{id: {z: {"mask": (H, W) bool}}}``: each object's mask on every slice (of ``z_range``, (start, stop))
    where it already is."""
    out: dict[int, dict[int, dict]] = {}
    for z in range(*(z_range or (0, labels.shape[0]))):
        sl = np.asarray(labels[z])
        present = set(np.unique(sl[sl != 0]).tolist()) & set(ids)  # the labelled pixels only: quick when few
        for oid in sorted(present):
            out.setdefault(oid, {})[z] = {"mask": sl == oid}
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


@reported
def run_find_stack(predictor, stack, labels: np.ndarray, every: int, cache, disk=None, channel_axis=None, z=None,
                   z_range=None, first_id: int = 1, top: int | None = None, found: dict | None = None, settings=None):
    """Generator (runs in a worker): every object of ``stack`` found on slice ``z`` and every ``every``-th slice
    outward, and propagated (``core.find_stack``), with ids from ``first_id``, outside ``labels``' objects.

    top: the largest id the labels layer can hold (a ValueError saying so when more objects were found).
    found: a dict filled with ``FoundStack.objects`` ({id: (z, seed, predicted IoU)}) for the records.
    settings: ``AutoSettings`` of each slice's search.
    Yields ``Progress``; returns the (z, H, W) result (``labels`` is not changed).
    """
    from napari_sam.core.find_stack import finding_in_stack

    out = yield from finding_in_stack(predictor, stack, settings, every=every, z=z, z_range=z_range,
                                      labels=labels, first_id=first_id, cache=cache, channel_axis=channel_axis,
                                      disk=disk)
    if top is not None and out.objects and max(out.objects) > top:
        raise ValueError(f"{len(out.objects)} objects were found, with ids up to {max(out.objects)}, but the labels "
                         f"layer holds ids up to {top} only: convert it to a larger integer type (or choose a new "
                         "labels layer), then find them again")
    if found is not None:
        found.update(out.objects)
    return out.labels


@dataclass
class Changes:
    """What a run would write, as pixel lists (small: the objects' pixels, not the stack).

    pixels: {z: (rows, cols, ids)} labelled by the run where the layer was background when it started.
    present: {id: [z, ...]} slices where the result holds each object. nz: the stack's slices.
    redone: {z: [id, ...]} objects' slices an earlier propagation wrote, redone by this run (``_redo.Redoing``):
    their old pixels count as background in ``pixels``. digests: {(id, z): ``_redo.fingerprint``} of each
    object's mask in the result on the slices where it has new pixels or was redone (``_redo.Propagated``).
    """

    nz: int
    pixels: dict
    present: dict
    redone: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)


def in_worker(fn, predictor, stack, labels, *args):
    """Generator (runs in a worker): ``fn`` (``run_propagation`` or ``run_every_slice``) on the labels
    layer seen through ``labels`` (a ``StackView``, or a ``_redo.Redoing`` over one), returning
    :class:`Changes` instead of the (z, H, W) result.

    Which pixels are background is read first, slice by slice, a bit each; then ``fn`` reads the layer
    (its one copy of the labels). A pixel the user changes meanwhile is, at worst, left unwritten.
    """
    background = [np.packbits(np.asarray(labels[z]) == 0) for z in range(labels.shape[0])]
    result = yield from fn(predictor, stack, labels, *args)
    ch = changes(result, background)
    ch.redone = {z: ids for z, ids in getattr(labels, "redone", {}).items() if ids}
    touched = {(int(oid), z) for z, (_, _, v) in ch.pixels.items() for oid in np.unique(v)}
    touched |= {(oid, z) for z, ids in ch.redone.items() for oid in ids}
    masks = {(oid, z): result[z] == oid for oid, z in touched}
    ch.digests = {k: fingerprint(m) for k, m in masks.items() if m.any()}
    return ch


def changes(result: np.ndarray, background: list) -> Changes:
    """The :class:`Changes` of ``result`` (z, H, W) over the layer's ``background`` (packed bits per slice)."""
    pixels, present = {}, {}
    for z, res in enumerate(result):
        if not res.any():
            continue
        for oid in np.unique(res[res != 0]).tolist():
            present.setdefault(int(oid), []).append(z)
        was = np.unpackbits(background[z], count=res.size).reshape(res.shape).astype(bool)
        r, c = np.nonzero((res != 0) & was)
        if len(r):
            pixels[z] = (r, c, res[r, c])
    return Changes(len(result), pixels, present)

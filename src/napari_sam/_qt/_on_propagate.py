"""Propagate object / Propagate all objects on this slice: the widget side of z-propagation.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`. The committed objects
(the selected label, or every label on the current slice) are followed
through z by ``core.propagate`` in a generator worker: the progress bar follows
its records, Cancel stops it (the labels layer is only written at the end, so
a cancelled run changes nothing), and the whole result is written in one
``block_history``: one Ctrl-Z undoes it. Slices are embedded through the
session's cache and the encoder gate (like a click's; the background
precompute pauses meanwhile), so clicks afterwards reuse them; a whole-stack
embedding cache on disk made for this image and model is read first (and
filled), as clicks do. See ``_propagate.py``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ._commit import CommitError, check_fits, check_target, next_id, object_record, record_objects
from ._plane import PlaneError, current_plane, image_data, spatial_shape
from ._outcome import Outcome
from ._propagate import (
    Changes,
    PropagateError,
    StackView,
    in_worker,
    negative_label,
    objects_on_slice,
    run_every_slice,
    run_propagation,
    still_background,
    z_axis_of,
    z_name,
)

_RUNS = itertools.count(1)


def _bounds(z_range) -> tuple[int, int] | None:
    """(first, last) slice of a (start, stop) range, for ``Outcome``."""
    return None if z_range is None else (z_range[0], z_range[1] - 1)


def _objects_text(ids) -> str:
    return f"label {ids[0]}" if len(ids) == 1 else f"{len(ids)} objects ({', '.join(map(str, ids))})"


def _slices_text(z_range, view, plane) -> str:
    zn = z_name(plane)
    return f"all {view.shape[0]} slices" if z_range is None else f"{zn}={z_range[0]}–{z_range[1] - 1}"


@dataclass
class _Run:
    key: tuple
    view: StackView
    source: StackView  # the labels layer along the same z: read by the worker
    labels: object  # the napari Labels layer written at the end
    image: object
    image_version: int
    outcome: Outcome
    what: str = "propagation"  # for the status line and Undo
    after: object = None  # called with the labels layer once the result is written


class Propagating:
    """Propagation handlers of the SAM widget."""

    _propagation: _Run | None = None

    @property
    def propagating(self) -> bool:
        """True from the start of a propagation run until its worker has stopped."""
        return self._propagation is not None

    def _on_propagate_object(self) -> None:
        self._start_propagation(every_object=False)

    def _on_propagate_all(self) -> None:
        self._start_propagation(every_object=True)

    def _propagation_inputs(self, every_object: bool):
        """(view, plane, labels view, ids, z range); PropagateError/PlaneError/CommitError say what is missing."""
        if self._image is None:
            raise PropagateError("no image layer: open a z-stack first")
        image = self._image
        plane = current_plane(self._viewer, image)
        z_axis = z_axis_of(plane)
        if self._session.model is None:
            raise PropagateError("no model is loaded yet: wait for it (or choose one above)")
        if self._labels is None:
            raise PropagateError("there is no labels layer yet: commit an object first (C), then propagate it")
        check_target(self._labels, spatial_shape(image))
        view = StackView(image_data(image), plane, z_axis)
        if view.shape[0] < 2:
            raise PropagateError(f"the stack has a single slice along {z_name(plane)}: nothing to propagate to")
        source = StackView(self._labels.data, plane, z_axis)  # read in the worker, not here: it may be huge
        z = dict(plane.fixed)[z_axis]
        zr = self._slice_range(view, plane)  # the current slice must be inside the slices set
        here = objects_on_slice(source[z])
        if every_object:
            if not here:
                raise PropagateError(f"no objects on {plane.label}: commit objects on this slice first, then propagate")
            return view, plane, source, here, zr
        label = int(self._labels.selected_label)
        if label == 0:
            raise PropagateError("the selected label is 0 (background): select the label of the object to propagate")
        if label < 0:
            raise PropagateError(negative_label(label))
        if label not in here:
            raise PropagateError(
                f"label {label} is not on {plane.label}: go to a slice where it is, or commit it here first (C)"
            )
        return view, plane, source, [label], zr

    def _start_propagation(self, every_object: bool) -> None:
        if self._propagation is not None:
            self._say("A propagation is already running: wait for it, or Cancel it.")
            return
        try:
            view, plane, source, ids, zr = self._propagation_inputs(every_object)
        except (PropagateError, PlaneError, CommitError) as e:
            self._say(str(e), error=True)
            return
        what = _objects_text(ids)
        desc = f"Propagating {what} from {plane.label} through {_slices_text(zr, view, plane)}…"
        memory = self._ui.propagate_memory.isEnabled() and self._ui.propagate_memory.isChecked()
        if memory:
            desc = desc.replace("…", " with SAM 2's memory…")
        run = _Run(None, view, source, self._labels, self._image, self._image_version,
                   Outcome(ids, z_name(plane), _bounds(zr)))
        self._launch(run, desc, run_propagation, ids, memory, zr)

    def _launch(self, run: _Run, desc: str, fn, *args) -> None:
        """Start ``fn(predictor, view, labels, *args, cache, disk, channel_axis)``-like work for ``run``:
        a propagation generator in a worker (through ``in_worker``), its ``Changes`` written by ``_on_propagated``."""
        from napari_sam.core.predictor import SlicePredictor

        gui = self._session.predictor
        # its own predictor (the GUI's keeps its slice), encoding through the gate like a click
        predictor = self._foreground_predictor(
            SlicePredictor(self._session.model, normalize=gui.normalize, refine=gui.refine, input_scale=gui.input_scale))
        run.key = ("propagate", next(_RUNS))
        self._propagation = run
        self._set_propagate_buttons(False)
        self._ui.propagate_status.setText("")
        self._sync_precompute()  # pauses the background run
        disk, rgb = self._propagation_disk(run.view.plane), -1 if self._image.rgb else None
        head, tail = args[:1], args[1:]  # the ids or prompts, then the method's own options
        self._jobs.start(run.key, desc, in_worker, fn, predictor, run.view, run.source, *head, self._session.cache,
                         disk, rgb, *tail, on_result=self._on_propagated, on_error=self._on_propagate_error,
                         on_yield=self._on_propagate_progress, on_done=self._on_propagate_done)
        self._say(desc)

    def _on_every_slice(self) -> None:
        """This slice's prompts on every slice of the stack, as new labels (``_propagate.run_every_slice``)."""
        if self._propagation is not None:
            self._say("A propagation is already running: wait for it, or Cancel it.")
            return
        try:
            view, plane, objects, zr = self._every_slice_inputs()
            labels = self._ensure_labels()
            ids = self._every_slice_ids(labels, len(objects))
        except (PropagateError, PlaneError, CommitError) as e:
            self._say(str(e), error=True)
            return
        z = dict(plane.fixed)[view.z_axis]
        source = StackView(labels.data, plane, view.z_axis)
        prompts = {i: {z: o} for i, o in zip(ids, objects)}
        model, used = self._session.model, self._prompt_snapshot(plane)

        def after(layer):  # the prompts become the objects' records, and leave the slice (not those added since)
            record_objects(layer, [object_record(i, plane, o, score=None, token=None, model=model, every_slice=True)
                                   for i, o in zip(ids, objects)])
            self._clear_prompts(plane, only=used)

        what = _objects_text(ids)
        run = _Run(None, view, source, labels, self._image, self._image_version,
                   Outcome(ids, z_name(plane), _bounds(zr)), what="prompts on every slice", after=after)
        self._launch(run, f"Segmenting {what} with the prompts of {plane.label} on {_slices_text(zr, view, plane)}…",
                     run_every_slice, prompts, zr)

    def _every_slice_inputs(self):
        """(view, plane, objects, z range) for prompts on every slice; PropagateError/PlaneError/CommitError say
        why not."""
        if self._image is None:
            raise PropagateError("no image layer: open a z-stack first")
        plane = current_plane(self._viewer, self._image)
        if not plane.fixed:
            raise PropagateError("prompts on every slice needs a z-stack, but this image is 2D (one slice): "
                                 "commit the object with C instead")
        if self._session.model is None:
            raise PropagateError("no model is loaded yet: wait for it (or choose one above)")
        view = StackView(image_data(self._image), plane, z_axis_of(plane))
        if view.shape[0] < 2:
            raise PropagateError(f"the stack has a single slice along {z_name(plane)}: commit the object with C instead")
        zr = self._slice_range(view, plane)
        _, objects, _ = self._gather()
        if not objects:
            raise PropagateError(f"no prompts on {plane.label}: click the object (or draw a box around it) first, "
                                 "then apply the prompts to every slice")
        if any(o.mask is not None for o in objects):
            raise PropagateError("'Refine the selected label' is ticked: prompts on every slice takes points and "
                                 "boxes only; untick it")
        return view, plane, objects, zr

    def _slice_range(self, view: StackView, plane) -> tuple[int, int] | None:
        """The widget's Slices from/to as a (start, stop) z range, None for the whole stack; PropagateError when
        they do not fit the stack or leave out the current slice."""
        n, zn = view.shape[0], z_name(plane)
        a, b = self._ui.z_from.value(), self._ui.z_to.value()
        b = n - 1 if b < 0 else min(b, n - 1)
        if a > b:
            raise PropagateError(f"the slices set under 'Propagate through z' ({zn}={a} to "
                                 f"{self._ui.z_to.text()}) hold none of this stack's {zn}=0–{n - 1}: fix them")
        z = dict(plane.fixed)[view.z_axis]
        if not a <= z <= b:
            raise PropagateError(f"{plane.label} is outside the slices set under 'Propagate through z' "
                                 f"({zn}={a}–{b}): go to a slice inside them, or widen them")
        return None if (a, b) == (0, n - 1) else (a, b + 1)

    def _every_slice_ids(self, labels, n: int) -> list[int]:
        """New ids (largest + 1, ...), or the selected label for every object when the widget says so."""
        if self._ui.selected_id.isChecked():
            label = int(labels.selected_label)
            if label == 0:
                raise CommitError("the selected label is 0 (background): select a label, or use a new object id")
            if label < 0:
                raise CommitError(negative_label(label))
            if n > 1:
                raise CommitError(f"'selected label' puts every object into label {label}, but this slice has "
                                  f"prompts for {n} objects: keep one, or choose 'new object id'")
            return [label]
        first = next_id(labels)
        check_fits(labels, first + n - 1)
        return list(range(first, first + n))

    def _propagation_disk(self, plane):
        """The whole-stack disk cache seen along the propagation's z (``SharedDisk``), or None.

        Only one made for the current image, model and normalisation
        (``_disk_for``), and only when the plane shows the image's last two
        axes: then z is the disk's last index, the other hidden axes its leading ones.
        """
        disk, index = self._disk_for(plane)
        return disk.at(index[:-1]) if disk is not None else None

    def _set_propagate_buttons(self, enabled: bool) -> None:
        for b in (self._ui.propagate_object, self._ui.propagate_all, self._ui.every_slice, self._ui.commit):
            b.setEnabled(enabled)

    def _on_propagate_progress(self, key, p) -> None:
        run = self._propagation
        if self._closed or run is None or run.key != key:
            return
        run.outcome.record(p)
        bar = self._ui.progress
        bar.setRange(0, p.total)
        bar.setValue(p.done)
        bar.setToolTip(f"slice {p.done}/{p.total}")
        self._say(f"Propagating: {p.done}/{p.total} slice visits ({run.outcome.zname}={p.z}, {p.stage}). "
                  f"Cancel leaves the labels unchanged.")

    def _finish_propagation(self) -> _Run | None:
        run, self._propagation = self._propagation, None
        if not self._closed:
            self._ui.progress.setRange(0, 0)
            self._set_propagate_buttons(True)
            self._sync_precompute()  # resumes the background run
        return run

    def _on_propagated(self, key, ch: Changes) -> None:
        run = self._propagation
        if self._closed or run is None or run.key != key:
            return
        self._finish_propagation()
        layer = run.labels
        if layer not in self._viewer.layers or run.image is not self._image or run.image_version != self._image_version:
            self._say("Propagation finished, but the image or the labels layer changed meanwhile: nothing written.",
                      error=True)
            return
        write = still_background(layer.data, run.view, ch)  # the user may have painted meanwhile
        with self._undo.writing():
            n = self._write_propagation(layer, run.view, write)
        if n and layer is self._labels:  # the layer whose edits the widget follows
            ids = ", ".join(map(str, run.outcome.ids))
            self._undo.remember(layer, f"{run.what} of label {ids}", run.view.full_index(*write[:3]))
        if n and run.after is not None:
            run.after(layer)
        summary = run.outcome.text(ch, write)
        # stays when the slice changes: short, the reasons in its tooltip
        self._ui.propagate_status.setText(run.outcome.text(ch, write, show=3, short=True))
        self._ui.propagate_status.setToolTip(run.outcome.text(ch, write, show=len(run.outcome.ids)))
        what, done = ("Propagation", "Propagated") if run.after is None else ("Prompts on every slice",) * 2
        msg = f"{what} added no pixels.\n{summary}" if n == 0 else \
            f"{done}: {n} px written (one step: Ctrl-Z or the Undo button undoes it).\n{summary}"
        self._last_commit = msg  # stays on the status line, as a commit's, until the next prompt or slice
        self._say(msg)

    @staticmethod
    def _write_propagation(layer, view: StackView, write: tuple) -> int:
        """Write ``write`` ((z, rows, cols, ids) pixels) into ``layer``: one history entry (one Ctrl-Z)."""
        z, r, c, v = write
        ids = [int(i) for i in np.unique(v)]
        with layer.block_history():
            for k, oid in enumerate(ids):
                m = v == oid
                layer.data_setitem(view.full_index(z[m], r[m], c[m]), oid, refresh=k == len(ids) - 1)
        return len(v)

    def _on_propagate_error(self, key, exc) -> None:
        run = self._propagation
        if self._closed or run is None or run.key != key:
            return
        self._finish_propagation()
        self._ui.propagate_status.setText("Failed: the labels are unchanged.")
        self._say(f"Propagation failed: {exc}. The labels are unchanged.", error=True)

    def _on_propagate_done(self, key) -> None:
        """The worker has stopped; if no result came, it was cancelled."""
        run = self._propagation
        if self._closed or run is None or run.key != key:
            return
        self._finish_propagation()
        self._ui.propagate_status.setText("Cancelled: the labels are unchanged.")
        self._say(f"{run.what[0].upper()}{run.what[1:]} cancelled: the labels are unchanged.")

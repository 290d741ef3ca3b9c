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
filled), as clicks do. A later run of the same objects redoes the slices an
earlier run wrote and nobody changed since (``_redo.py``). See ``_propagate.py``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ._commit import CommitError, check_target
from ._plane import PlaneError, current_plane, image_data, spatial_shape
from ._outcome import Outcome
from ._propagate import (
    Changes,
    PropagateError,
    StackView,
    in_worker,
    negative_label,
    objects_on_slice,
    run_propagation,
    slice_range,
    z_axis_of,
    z_name,
)
from ._redo import Propagated, Redoing, redone_text, to_write

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
    after: object = None  # called with the labels layer once the result is written; returns the prompts it cleared
    stopped: tuple = ()  # (why, what to do) when the widget stopped it (its image or labels layer went away)
    known: dict = field(default_factory=dict)  # Propagated.known of its objects: slices it may redo
    doing: str = "Propagating"  # progress: "{doing}: {done}/{total} {unit} (z=.., stage)"
    unit: str = "slice visits"

    @property
    def title(self) -> str:
        """``what`` at the start of a sentence."""
        return self.what[0].upper() + self.what[1:]


class Propagating:
    """Propagation handlers of the SAM widget."""

    _propagation: _Run | None = None
    _propagated_by_runs: Propagated | None = None

    @property
    def _propagated(self) -> Propagated:
        """What the widget's propagations wrote (``_redo``): a later run of the same objects redoes it."""
        if self._propagated_by_runs is None:
            self._propagated_by_runs = Propagated()
        return self._propagated_by_runs

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
        known = self._propagated.known(self._labels, ids, view)
        if known:  # slices earlier runs wrote: redone unless changed since (the current slice is kept)
            source = Redoing(source, known, keep=dict(plane.fixed)[view.z_axis])
        run = _Run(None, view, source, self._labels, self._image, self._image_version,
                   Outcome(ids, z_name(plane), _bounds(zr)), known=known)
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
        disk, rgb = self._propagation_disk(run.view), -1 if self._image.rgb else None
        head, tail = args[:1], args[1:]  # the ids or prompts, then the method's own options
        self._jobs.start(run.key, desc, in_worker, fn, predictor, run.view, run.source, *head, self._session.cache,
                         disk, rgb, *tail, on_result=self._on_propagated, on_error=self._on_propagate_error,
                         on_yield=self._on_propagate_progress, on_done=self._on_propagate_done)
        self._say(desc)

    def _slice_range(self, view: StackView, plane) -> tuple[int, int] | None:
        """The widget's Slices from/to as a (start, stop) z range, None for the whole stack (``slice_range``)."""
        return slice_range(view.shape[0], dict(plane.fixed)[view.z_axis], self._ui.z_from.value(),
                           self._ui.z_to.value(), plane.label, z_name(plane))

    def _propagation_disk(self, view: StackView):
        """The whole-stack disk cache seen along the propagation's z (``SharedDisk``), or None.

        Only one made for the current image, model and normalisation
        (``_disk_for``), and only when the plane shows the image's last two
        axes: then the hidden axes are the disk's leading ones, z among them (not always the last: a
        (z, 1, y, x) stack, or one whose axes are named z, c, y, x).
        """
        disk, index = self._disk_for(view.plane)
        if disk is None:
            return None
        k = sorted(a for a, _ in view.plane.fixed).index(view.z_axis)
        return disk.at(index[:k] + index[k + 1 :], k)

    def _set_propagate_buttons(self, enabled: bool) -> None:
        for b in (self._ui.propagate_object, self._ui.propagate_all, self._ui.every_slice, self._ui.commit,
                  self._ui.find, self._ui.find_stack):
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
        self._say(f"{run.doing}: {p.done}/{p.total} {run.unit} ({run.outcome.zname}={p.z}, {p.stage}). "
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
        written = StackView(layer.data, run.view.plane, run.view.z_axis)
        write = to_write(written, ch, run.known)  # only background: the user may have painted meanwhile
        with self._undo.writing():
            n = self._write_propagation(layer, run.view, write)
        cleared = run.after(layer) if n and run.after is not None else ()
        if n and run.after is None:
            self._propagated.remember(layer, written, ch.digests)
        if n and layer is self._labels:  # the layer whose edits the widget follows
            ids = run.outcome.ids
            shown = ", ".join(map(str, ids[:5])) + (f", … ({len(ids)} objects)" if len(ids) > 5 else "")
            self._undo.remember(layer, f"{run.what} of label {shown}", run.view.full_index(*write[:3]), cleared)
        summary = run.outcome.text(ch, write)
        # stays when the slice changes: short, the reasons in its tooltip
        self._ui.propagate_status.setText(run.outcome.text(ch, write, show=3, short=True))
        self._ui.propagate_status.setToolTip(run.outcome.text(ch, write, show=len(run.outcome.ids)))
        what, done = ("Propagation", "Propagated") if run.after is None else (run.title,) * 2
        gone = int((write[3] == 0).sum())
        px = f"{n - gone} px written" + (f", {gone} px of an earlier propagation cleared" if gone else "")
        redone = redone_text(ch.redone, run.outcome.zname)
        summary += f"\n{redone}" if redone else ""
        msg = f"{what} changed no pixels.\n{summary}" if n == 0 else \
            f"{done}: {px} (one step: Ctrl-Z or the Undo button undoes it).\n{summary}"
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
        self._say(f"{run.title} failed: {exc}. The labels are unchanged.", error=True)

    def _on_propagate_done(self, key) -> None:
        """The worker has stopped; if no result came, it was cancelled."""
        run = self._propagation
        if self._closed or run is None or run.key != key:
            return
        self._finish_propagation()
        self._ui.propagate_status.setText(f"{'Stopped' if run.stopped else 'Cancelled'}: the labels are unchanged.")
        # kept on the status line, as a commit's, until the next prompt or slice: a hint that follows (the
        # layer list changed) adds to it instead of replacing it
        self._last_commit = (self._stopped_text(run) if run.stopped else
                             f"{run.title} cancelled: the labels are unchanged.")
        self._say(self._last_commit)

    @staticmethod
    def _stopped_text(run: _Run) -> str:
        why, todo = run.stopped
        return f"{run.title} stopped, because {why}: the labels are unchanged. {todo}."

    def _stop_stale_propagation(self) -> None:
        """Stop the run at once when its result could not be written any more (``_on_propagated``): its image
        is no longer the widget's or its data changed, or its labels layer was removed. Otherwise it would hold
        the encoder (the new image's clicks wait for it) and show its progress to the end, for nothing."""
        run = self._propagation
        if run is None or run.stopped or self._closed:
            return
        name = run.image.name
        if run.image is not self._image:
            run.stopped = (f"the widget left the image {name!r}", f"To run it, choose {name!r} again")
        elif run.image_version != self._image_version:
            run.stopped = (f"the data of {name!r} changed", "Run it again on the new data")
        elif run.labels not in self._viewer.layers:
            run.stopped = (f"its labels layer {run.labels.name!r} was removed",
                           "Choose a labels layer (or commit), then run it again")
        else:
            return
        self._jobs.cancel(run.key[0])
        self._last_commit = self._stopped_text(run)
        self._say(self._last_commit, error=True)

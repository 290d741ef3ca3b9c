"""Commit, clear, undo: the widget side of writing SAM's answer into the labels layer.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`; the writing itself is
in ``_commit.py`` (pure writing into a Labels layer, no widget), what the
widget may undo in ``_undo.py``.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from . import _layers as L
from ._commit import CommitError, check_target, commit_masks, object_record, record_objects
from ._plane import PlaneError, current_plane, plane_indices, spatial_shape
from ._undo import Cleared


class Committing:
    """Commit, clear and undo handlers of the SAM widget."""

    def _on_commit(self) -> None:
        if self.propagating:  # as the Commit button, disabled meanwhile: the run has taken its ids
            if "propagate" in self._jobs.kinds():
                self._say(f"The {self._propagation.what} is still running: commit when it has finished "
                          "(or Cancel it).", error=True)
            else:  # cancelled: its worker stops after the slice it is on
                self._say(f"The {self._propagation.what} is stopping (it finishes the slice it is on): "
                          "commit in a moment.", error=True)
            return
        if self._timer.isActive():
            self._update_preview()
        try:
            token = self._token(current_plane(self._viewer, self._image)) if self._image is not None else None
        except PlaneError as e:
            self._say(str(e), error=True)
            return
        if self._result is not None and self._result.token == token:
            self._commit_result()
        elif token is not None and self._jobs.busy:
            self._pending_commit = token
            self._say("SAM is still working: the result will be committed when it arrives (if the slice and prompts stay).")
        else:
            self._say("Nothing to commit on this slice: click an object or draw a box first.")

    def _ensure_labels(self):
        if self._labels is None:
            try:
                layer = L.add_labels_layer(self._viewer, self._image)
            except MemoryError:  # a huge lazy image: its labels cannot be held in memory
                shape = spatial_shape(self._image)
                raise CommitError(
                    f"a labels layer for {self._image.name!r} {shape} would need {np.prod(shape) * 4 / 2**30:.0f} GB "
                    "of memory, more than this computer has: add a Labels layer kept on disk (in napari's console: "
                    f"viewer.add_labels(zarr.open_array('labels.zarr', mode='w', shape={shape}, dtype='uint32', "
                    f"chunks={(1,) * (len(shape) - 2) + shape[-2:]}), scale=...) with the image's scale) and "
                    "choose it under Labels") from None
            self._watch("labels", layer)
            self._on_layers_renamed()
        L.move_below(self._viewer, self._labels, [self._preview, self._boxes, self._points])
        check_target(self._labels, spatial_shape(self._image))
        return self._labels

    @contextmanager
    def _labels_for_action(self):
        """``_ensure_labels`` for an action that may still be refused in the block: a labels layer created
        for it is removed again when the block raises, so a refused action leaves the layer list as it was."""
        new = self._labels is None
        labels = self._ensure_labels()
        try:
            yield labels
        except Exception:
            if new and labels in self._viewer.layers:
                self._viewer.layers.remove(labels)  # _on_layers_changed forgets it
            raise

    def _commit_result(self) -> None:
        res, self._pending_commit = self._result, None
        try:
            with self._labels_for_action() as labels:
                refine = self._ui.refine.isChecked() and res.objects[0].mask is not None
                label = None
                if self._ui.selected_id.isChecked() or refine:
                    label = int(labels.selected_label)
                    if label == 0:
                        raise CommitError("the selected label is 0 (background): select a label, or commit as a "
                                          "new object id")
                picks = res.picks()  # each object's chosen candidate, as the preview shows them
                if not any(p[0].any() for p in picks):  # a commit would write nothing, or clear a refined label
                    raise CommitError(f"SAM's mask on {res.plane.label} is empty (0 px): nothing was committed; "
                                      "show another candidate (K), or click inside the object or draw a box around it")
                with self._undo.writing():
                    report = commit_masks(labels, res.plane, [p[0] for p in picks], label=label,
                                          overwrite=self._ui.overwrite.isChecked(), replace=label if refine else None)
        except CommitError as e:
            self._say(str(e), error=True)
            return
        if report.pixels == 0 and not report.cleared:
            why = "every pixel of the mask already belongs to another object; tick 'overwrite' to replace them" \
                if report.kept else "the labels already hold exactly this mask"
            self._say(f"Nothing written on {res.plane.label}: {why}.", error=bool(report.kept))
            return
        model = self._session.model
        record_objects(labels, [object_record(i, res.plane, o, score=p[1], token=p[2], model=model)
                                for i, o, p in zip(report.ids, res.objects, picks)])
        if label is None:
            labels.selected_label = report.ids[-1]
        kept = f" {report.kept} px kept their existing label (overwrite is off)." if report.kept else ""
        cleared = f" {report.cleared} px of its previous mask cleared." if report.cleared else ""
        ids = ", ".join(str(i) for i in dict.fromkeys(report.ids))
        used = self._clear_prompts(res.plane)
        self._undo.remember(labels, f"commit of label {ids} on {res.plane.label}", report.changed, used)
        self._last_commit = (f"Committed label {ids} on {res.plane.label}: {report.pixels} px.{cleared}{kept} "
                             f"Undo: Ctrl-Z (or the Undo button).")
        self._say(self._last_commit)

    def _prompt_layers(self) -> list:
        return [ly for ly in (self._points, self._boxes) if ly is not None and ly in self._viewer.layers]

    def _prompt_snapshot(self, plane) -> dict:
        """{id(layer): [each prompt's coordinates]} of the prompts on ``plane`` now, for ``_clear_prompts``."""
        return {id(ly): [np.array(ly.data[i], copy=True) for i in plane_indices(ly, self._image, plane)]
                for ly in self._prompt_layers()}

    def _clear_prompts(self, plane, only: dict | None = None) -> list[Cleared]:
        """Remove the prompts on ``plane``; with ``only`` (a ``_prompt_snapshot``), just those it holds.
        Returns what was removed, for an undo to put back (``UndoLog.remember``)."""
        removed = []
        for layer in self._prompt_layers():
            idx = plane_indices(layer, self._image, plane)
            if only is not None:
                used = only.get(id(layer), [])
                idx = [i for i in idx if any(np.array_equal(layer.data[i], u) for u in used)]
            if idx:
                removed.append(Cleared.take(layer, idx))
        return removed

    def _on_clear(self) -> None:
        try:
            plane = current_plane(self._viewer, self._image) if self._image is not None else None
        except PlaneError as e:
            self._say(str(e), error=True)
            return
        if plane is not None:
            self._clear_prompts(plane)
            self._say(f"Cleared the prompts on {plane.label}.")

    # ---------------------------------------------------------------- undo --
    def _on_labels_edited(self, event=None) -> None:
        self._undo.edited()

    def _on_undo_commit(self) -> None:
        """Undo the widget's last commit or propagation (Ctrl-Z on the widget's other layers, the Undo button)."""
        labels = self._labels
        step = self._undo.undo(labels)
        if step is not None:  # the prompts it cleared come back (napari's redo of the labels leaves them there)
            back = sum(c.put_back() for c in step.prompts if c.layer in self._viewer.layers)
            again = f" Its {back} prompt{'s are' if back > 1 else ' is'} back." if back else ""
            self._say(f"Undid the {step.what}.{again} Redo: select {labels.name!r} and press Shift-Ctrl-Z.")
        elif labels is None:
            self._say("Nothing to undo: there is no labels layer yet.")
        elif not getattr(labels, "_undo_history", True):  # napari keeps no public count of its history
            self._say(f"Nothing to undo: {labels.name!r} has no change left to undo.")
        else:
            self._say(f"Nothing to undo: the last change to {labels.name!r} is not a commit or propagation of "
                      f"this widget. To undo it, select {labels.name!r} and press Ctrl-Z.")

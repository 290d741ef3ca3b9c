"""Find all objects on this slice: SAM's automatic mask generation (``core.automatic``), as new labels.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`. The slice is embedded (or read from the caches) and
its seeds decoded in a worker, with progress and Cancel; the objects found are committed on this slice only,
each a new id, where the labels layer is still background (labels already there are never touched, and no
object is looked for on them), as one undo step. "Propagate all on this slice" then carries them through z.
"""

from __future__ import annotations

import itertools

import numpy as np

from ._commit import CommitError, commit_label_image, object_record, record_objects
from ._plane import PlaneError, current_plane, image_data
from ._session import encode_slice, reported

_FINDS = itertools.count()


@reported
def find_in_worker(predictor, cache, data, index: tuple, rgb: bool, disk, disk_index, existing: np.ndarray,
                   settings=None):
    """Generator (runs in a worker): embed slice ``index`` of ``data`` (or take it from the caches), then
    ``core.automatic.finding`` outside ``existing``'s labels with ``settings`` (``AutoSettings``); yields (seeds
    done, seeds), returns ``Found``."""
    from napari_sam.core.automatic import finding

    predictor.set_embedding(encode_slice(predictor, cache, data, index, rgb, disk, disk_index))
    return (yield from finding(predictor, settings, existing=existing))


class Finding:
    """The Find all objects handlers of the SAM widget."""

    _finding: list | None = None  # [job key, plane, labels layer, image, image version, answered] while searching

    def _on_find(self) -> None:
        if self.propagating:
            self._say(f"The {self._propagation.what} is running: find objects when it has finished (or Cancel it).",
                      error=True)
            return
        if self._finding is not None:
            self._say("Already looking for objects on this slice: wait for it, or Cancel it.")
            return
        if self._image is None:
            self._say("No image layer: open an image first.", error=True)
            return
        if self._session.model is None:
            self._say("No model is loaded yet: wait for it (or choose one above).", error=True)
            return
        try:
            plane = current_plane(self._viewer, self._image)
            with self._labels_for_action() as labels:
                existing = np.array(labels.data[plane.index], copy=True)
        except (PlaneError, CommitError) as e:
            self._say(str(e), error=True)
            return
        from napari_sam.core.predictor import SlicePredictor

        gui = self._session.predictor
        predictor = self._foreground_predictor(
            SlicePredictor(self._session.model, normalize=gui.normalize, input_scale=gui.input_scale))
        key = ("find", next(_FINDS))
        self._finding = [key, plane, labels, self._image, self._image_version, False]
        self._ui.find.setEnabled(False)
        held = " outside the labels already there" if existing.any() else ""
        desc = f"Looking for every object on {plane.label}{held}…"
        self._jobs.start(key, desc, find_in_worker, predictor, self._session.cache, image_data(self._image),
                         plane.index, self._image.rgb, *self._disk_for(plane), existing, self._find_settings(),
                         on_result=self._on_found, on_error=self._on_find_error, on_yield=self._on_find_progress,
                         on_done=self._on_find_done)
        self._say(desc)

    def _find_settings(self):
        """``AutoSettings`` of both Find all objects buttons, from the widget's score and dark-objects controls."""
        from napari_sam.core.automatic import AutoSettings

        dark = self._ui.find_dark.isChecked()
        return AutoSettings(min_score=round(self._ui.find_score.value(), 2),
                            min_brightness=0.0 if dark else AutoSettings.min_brightness)

    def _on_find_progress(self, key, progress) -> None:
        if self._closed or self._finding is None or self._finding[0] != key:
            return
        done, total = progress
        self._ui.progress.setRange(0, max(total, 1))
        self._ui.progress.setValue(done)
        self._say(f"Looking for every object on {self._finding[1].label}: {done}/{total} seed points decoded. "
                  "Cancel leaves the labels unchanged.")

    def _on_find_error(self, key, error) -> None:
        if not self._closed and self._finding is not None and self._finding[0] == key:
            self._finding[5] = True
            self._say(f"Finding objects failed: {error}. The labels are unchanged.", error=True)

    def _on_find_done(self, key) -> None:
        if self._finding is None or self._finding[0] != key:
            return
        answered, self._finding = self._finding[5], None
        if self._closed:
            return
        self._ui.find.setEnabled(True)
        self._ui.progress.setRange(0, 0)
        if not answered:
            self._say("Finding objects cancelled: the labels are unchanged.")

    def _on_found(self, key, found) -> None:
        if self._closed or self._finding is None or self._finding[0] != key:
            return
        _, plane, labels, image, version, _ = self._finding
        self._finding[5] = True
        if image is not self._image or version != self._image_version or labels is not self._labels:
            self._say("The image or labels layer changed while objects were being found: nothing was written; "
                      "find them again.", error=True)
            return
        now = np.asarray(labels.data[plane.index])
        size = np.bincount(found.labels.ravel(), minlength=found.n + 1)
        free = np.bincount(found.labels[now == 0], minlength=found.n + 1)
        left_out = (free < 0.5 * size) & (size > 0)  # objects the user has painted over meanwhile
        kept = np.where(left_out[found.labels], 0, found.labels)
        try:
            with self._undo.writing():
                report, written = commit_label_image(labels, plane, kept, existing=now)
        except CommitError as e:
            self._say(str(e), error=True)
            return
        if not report.ids:
            self._say(f"No object found on {plane.label}" + (" outside the existing labels." if now.any() else
                      ": SAM found nothing it was sure of (a slice with bright objects on a dark background works "
                      "best).") + f" {found.n_seeds} seed points were tried.")
            return
        from napari_sam.core.prompts import ObjectPrompt

        model = self._session.model
        record_objects(labels, [object_record(i, plane, ObjectPrompt(points=found.seeds[k - 1][None]),
                                              score=float(found.scores[k - 1]), token=None, model=model, found=True)
                                for i, k in zip(report.ids, written)])
        labels.selected_label = report.ids[-1]
        n = len(report.ids)
        ids = f"label {report.ids[0]}" if n == 1 else f"labels {report.ids[0]}-{report.ids[-1]}"
        self._undo.remember(labels, f"{n} objects found on {plane.label}", report.changed)
        self._say(f"Found {n} object{'s' if n > 1 else ''} on {plane.label}: {ids}, {report.pixels} px (existing "
                  "labels untouched). Undo: Ctrl-Z. Propagate all on this slice carries them through z.")

"""Choosing and loading the SAM model (in a worker), and cancelling background work.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ._controls import FROM_FILE
from ._plane import PlaneError, current_plane
from ._session import import_torch, load_model_cached


class ModelChoice:
    """Model combo, device combo, loading and cancel for the SAM widget."""

    def _on_model_choice(self, _index: int = 0) -> None:
        name = self._ui.model.currentData()
        if name == FROM_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt *.ckpt *.bin);;All files (*)"
            )
            if not path:
                self._show_model_choice(*self._model_choice)
                return
            name = path
        self.load_model(name, self._ui.device.currentText())

    def load_model(self, name_or_path: str, device: str = "auto") -> None:
        """Switch to a registry model or checkpoint file (loads in the background)."""
        self._show_model_choice(name_or_path, device)
        self._start_model_load(name_or_path, device)

    def _show_model_choice(self, name: str, device: str) -> None:
        m = self._ui.model
        i = m.findData(name)
        if i < 0:
            m.insertItem(m.count() - 1, Path(name).name, name)
            i = m.count() - 2
            m.setItemData(i, name, 3)  # tooltip: the full path
        m.setCurrentIndex(i)
        self._ui.device.setCurrentText(device)

    def _start_model_load(self, name: str, device: str) -> None:
        self._jobs.cancel("model")
        import_torch()
        desc = f"Loading model {name} on {device}… (first use of a downloadable model downloads it)"
        self._say(desc)
        self._jobs.start(("model", name, device), desc, load_model_cached, name, device,
                         on_result=self._on_model_loaded, on_error=self._on_job_error)

    def _on_model_loaded(self, key, model) -> None:
        if self._closed:
            return
        self._model_choice = key[1:]
        self._session.set_model(model)
        self._cancelled = None
        self._show_memory_option(model)
        scale = self._show_magnification()
        int8 = " (int8 encoder)" if getattr(model, "int8_encoder", None) is not None else ""
        # kept on the status line, as a commit's confirmation, until the next prompt or slice (the hint that
        # follows a load replaced it at once, and "(int8 encoder)" with it)
        self._last_commit = (f"Model {model.name} ({model.arch}) ready on {model.device}{int8}"
                             + (f", slices magnified {scale:g}×." if scale is not None else "."))
        self._say(self._last_commit)
        self._reset_result()
        self._schedule()

    def _show_memory_option(self, model) -> None:
        """"With SAM 2's memory" is offered for SAM 2 / 2.1 models only (unchecked otherwise)."""
        from napari_sam.core.sam2_model import is_sam2

        box = self._ui.propagate_memory
        box.setEnabled(is_sam2(model.sam))
        if not box.isEnabled():
            box.setChecked(False)

    def _show_magnification(self):
        """Show the predictor's input magnification (None, control disabled, for 1024-canvas models)."""
        pred, box = self._session.predictor, self._ui.magnification
        box.blockSignals(True)
        box.setValue(pred.input_scale)
        box.blockSignals(False)
        box.setEnabled(pred.native)
        return pred.input_scale if pred.native else None

    def _on_magnification(self, value: float) -> None:
        """A new input magnification: every slice is embedded again at it."""
        pred = self._session.predictor
        if self._closed or pred is None or not pred.native or value == pred.input_scale:
            return
        self._session.set_input_scale(value)
        self._cancelled = None
        self._say(f"Slices are now magnified {value:g}× before the encoder; this slice is embedded again.")
        self._reset_result()
        self._schedule()

    def _on_job_error(self, key, exc) -> None:
        if self._closed:
            return
        if key[0] == "model":
            self._show_model_choice(*self._model_choice)
            loaded = self._session.model
            keep = f" Still using {loaded.name}." if loaded is not None else " Choose another model."
            why = str(exc).rstrip()
            self._say(f"Could not load model {key[1]!r}: {why}{'' if why.endswith('.') else '.'}{keep}", error=True)
        else:
            self._pending_commit = None
            self._say(f"SAM failed on this slice: {exc}", error=True)

    def _on_cancel(self) -> None:
        kinds = self._jobs.kinds()
        self._jobs.cancel()
        if "model" in kinds:
            self._show_model_choice(*self._model_choice)
        self._pending_commit = None
        try:
            self._cancelled = self._token(current_plane(self._viewer, self._image)) if self._image is not None else None
        except PlaneError:
            self._cancelled = None
        self._say("Cancelled. Change the prompts (or the slice) to run SAM again.")

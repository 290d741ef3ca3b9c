"""The SAM dock widget: translates napari layer events into core calls.

Click points (positive/negative) or draw rectangles on the current slice; SAM
runs on that slice and shows its candidates in a preview layer; Commit writes
the chosen candidate into a Labels layer (undoable). See docs/widget.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QWidget

from napari_sam.core.models import REGISTRY

from . import _layers as L
from ._controls import Controls
from ._choice import Choosing, selection_changed
from ._keys import KeyBindings, shortcuts_text
from ._on_commit import Committing
from ._on_every_slice import EverySlice
from ._on_find import Finding
from ._on_find_stack import FindingInStack
from ._on_layers import LayerChoice
from ._on_model import ModelChoice
from ._on_precompute import Precomputing
from ._on_prompts import Prompting
from ._on_propagate import Propagating
from ._preview import Result
from ._session import Jobs, Session
from ._undo import UndoLog

if TYPE_CHECKING:
    import napari


class SamWidget(LayerChoice, ModelChoice, Prompting, Choosing, Committing, Finding, Propagating, EverySlice,
                FindingInStack, Precomputing, QWidget):
    """Segment Anything on the current 2D slice of an image layer.

    The ``_on_*`` handlers live in mixins by concern: ``_on_layers`` (which
    layers), ``_on_model`` (which model), ``_on_prompts`` (prompts -> SAM ->
    preview), ``_choice`` (which candidate of each object), ``_on_commit``
    (preview -> labels), ``_on_find`` (every object of a slice, no click), ``_on_propagate`` (labels ->
    through z) and ``_on_find_stack`` (every object of the stack, no click);
    ``_on_precompute`` embeds slices ahead of the user. This class builds
    the controls, wires the events and unwires them on close.
    """

    def __init__(self, napari_viewer: napari.Viewer, model: str = "embedded", device: str = "auto"):
        super().__init__()
        self._viewer = napari_viewer
        self._ui = Controls(self, {name: spec.description for name, spec in REGISTRY.items()})
        self._session = Session()
        self._jobs = Jobs(self._ui.set_busy)
        self._keys = KeyBindings(napari_viewer, self)
        self._undo = UndoLog()  # the widget's own steps in the labels layer's history
        self._image = self._points = self._boxes = self._labels = self._preview = None
        self._links: dict[object, list] = {}  # owner (layer or viewer) -> [(emitter, callback)]
        self._image_version = self._prompt_version = 0
        self._result: Result | None = None
        self._plane_key = self._pending_commit = self._cancelled = None
        self._last_commit = ""  # shown until the next prompt
        self._model_choice = (str(model), str(device))  # what is loaded (or loading first)
        self._closed, self._docked = False, False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(30)
        self.setToolTip(shortcuts_text())
        self.setMinimumWidth(320)
        self._init_precompute()
        self._connect_events()
        self._on_layers_changed()
        self.load_model(*self._model_choice)

    # ------------------------------------------------------------- wiring --
    def _link(self, owner, emitter, callback) -> None:
        emitter.connect(callback)
        self._links.setdefault(owner, []).append((emitter, callback))

    def _unlink(self, owner) -> None:
        for emitter, callback in self._links.pop(owner, []):
            emitter.disconnect(callback)

    def _connect_events(self) -> None:
        v, ui = self._viewer, self._ui
        for emitter in (v.layers.events.inserted, v.layers.events.removed):
            self._link(v, emitter, self._on_layers_changed)
        for emitter in (v.dims.events.current_step, v.dims.events.ndisplay, v.dims.events.order):
            self._link(v, emitter, self._on_dims_change)
        self._keys.bind()
        self.destroyed.connect(self._jobs.close)  # deleted with the window: drop late worker results
        self._timer.timeout.connect(self._update_preview)
        ui.image.activated.connect(self._on_image_choice)
        ui.points.activated.connect(lambda _: self._on_layer_choice("points"))
        ui.boxes.activated.connect(lambda _: self._on_layer_choice("boxes"))
        ui.labels.activated.connect(lambda _: self._on_layer_choice("labels"))
        ui.model.activated.connect(self._on_model_choice)
        ui.device.activated.connect(self._on_model_choice)
        ui.magnification.valueChanged.connect(self._on_magnification)
        ui.positive.toggled.connect(self._on_polarity_changed)
        ui.refine.toggled.connect(self._on_prompts_changed)
        ui.candidates.currentRowChanged.connect(self._on_candidate_row)
        ui.commit.clicked.connect(self._on_commit)
        ui.clear.clicked.connect(self._on_clear)
        ui.undo.clicked.connect(self._on_undo_commit)
        ui.cancel.clicked.connect(self._on_cancel)
        ui.propagate_object.clicked.connect(self._on_propagate_object)
        ui.propagate_all.clicked.connect(self._on_propagate_all)
        ui.every_slice.clicked.connect(self._on_every_slice)
        ui.find.clicked.connect(self._on_find)
        ui.find_stack.clicked.connect(self._on_find_stack)

    def _watch(self, role: str, layer) -> None:
        """Follow the events of the layer playing ``role`` (and forget the previous one)."""
        self._unlink(role)
        if role == "labels" and layer is not self._labels:
            self._undo.clear()
        setattr(self, "_" + role, layer)
        self._follow_keys()
        if layer is None:
            return
        ev = layer.events
        if role == "image":
            self._link(role, ev.data, self._on_image_data)
        elif role == "points":
            self._link(role, ev.data, self._on_prompts_changed)
            self._link(role, ev.features, self._on_prompts_changed)
            self._link(role, selection_changed(layer), self._on_points_selected)
            L.ensure_polarity(layer)
            L.set_new_point_polarity(layer, self._ui.positive.isChecked())
        elif role == "boxes":
            self._link(role, ev.data, self._on_prompts_changed)
            self._link(role, ev.features, self._on_prompts_changed)  # napari's paste (Ctrl-V) emits only this
            self._link(role, selection_changed(layer), self._on_boxes_selected)
        elif role == "labels":
            for e in (ev.paint, ev.data, ev.selected_label):
                self._link(role, e, self._on_labels_changed)
            for e in (ev.paint, ev.data):
                self._link(role, e, self._on_labels_edited)

    def _follow_keys(self) -> None:
        """The widget's keys on the layers it works with now (see ``_keys``)."""
        if not self._closed:
            self._keys.follow([self._image, self._points, self._boxes, self._preview], self._labels)

    @property
    def busy(self) -> bool:
        """True while SAM has work scheduled or running (model loading, slice encoding, propagation)."""
        return self._jobs.busy or self._timer.isActive() or self.propagating

    @property
    def model(self):
        """The loaded ``core.models.LoadedModel`` (None until the first model has loaded)."""
        return self._session.model

    def _say(self, text: str, *, error: bool = False) -> None:
        self._ui.status.setText(text)
        self._ui.status.setStyleSheet("color: #ff6b6b;" if error else "")
        if error:
            from napari.utils.notifications import show_warning

            show_warning(f"napari-sam: {text}")

    # -------------------------------------------------------------- close --
    def cleanup(self) -> None:
        """Disconnect every event and key binding, stop waiting for workers, remove the preview."""
        if self._closed:
            return
        self._closed = True
        self._timer.stop()
        self._jobs.cancel()
        self._propagation = None  # its worker stops at its next slice; nothing of it is written
        self._stop_precompute()
        self._keys.unbind()
        for owner in list(self._links):
            self._unlink(owner)
        if self._preview is not None and self._preview in self._viewer.layers:
            self._viewer.layers.remove(self._preview)
        self._image = self._points = self._boxes = self._labels = self._preview = self._result = None
        for combo in (self._ui.image, self._ui.points, self._ui.boxes, self._ui.labels):
            combo.clear()

    def closeEvent(self, event) -> None:
        self.cleanup()
        super().closeEvent(event)

    def event(self, e) -> bool:
        # napari's remove_dock_widget (the dock's close button) reparents us to None without close()
        if e.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.cleanup()
        return super().event(e)


"""Which layers the SAM widget works with: the image, prompt layers, target labels.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`: follows layers being
added, removed and renamed, creates prompt layers for a newly chosen image,
and refuses layers that do not fit the image (with a message).
"""

from __future__ import annotations

from . import _layers as L
from ._commit import read_only
from ._plane import same_transform, spatial_shape

_ROLES = {"points": "Points", "boxes": "Shapes", "labels": "Labels"}


class LayerChoice:
    """Layer bookkeeping of the SAM widget (needs its ``_viewer``, ``_ui``, ``_watch``...)."""

    def _on_layers_changed(self, event=None) -> None:
        v = self._viewer
        for ly in v.layers:
            if ly not in self._links:
                self._link(ly, ly.events.name, self._on_layers_renamed)
        for owner in [o for o in self._links if o is not v and not isinstance(o, str) and o not in v.layers]:
            self._unlink(owner)
        for role in ("image", "points", "boxes", "labels"):
            ly = getattr(self, "_" + role)
            if ly is not None and ly not in v.layers:
                self._watch(role, None)
                if role == "image":
                    self._reset_result()
                    self._sync_precompute()
                elif role != "labels" or self._ui.refine.isChecked():  # the preview's prompts are gone
                    self._reset_result()
                    self._on_prompts_changed()
        if self._preview is not None and self._preview not in v.layers:
            self._preview = None
        self._follow_keys()
        self._on_layers_renamed()
        if self._image is None and L.layers_of(v, "Image"):
            self._use_image(L.layers_of(v, "Image")[0])
        elif self._image is None:
            self._say("Open an image layer (File > Open, or File > Open Sample > napari-sam).")
        self._stop_stale_propagation()

    def _on_layers_renamed(self, event=None) -> None:
        ui, v = self._ui, self._viewer
        ui.fill_layers(ui.image, L.layers_of(v, "Image"), self._image, new_item=False)
        for role, kind in _ROLES.items():
            ui.fill_layers(getattr(ui, role), L.layers_of(v, kind), getattr(self, "_" + role), new_item=True)

    def _on_image_choice(self, index: int) -> None:
        layer = self._ui.image.itemData(index)
        if layer is not None and layer != self._image:
            self._use_image(layer)

    def _use_image(self, image) -> None:
        v = self._viewer
        if self._preview is not None and self._preview in v.layers:
            v.layers.remove(self._preview)  # it lies on the previous image
        self._watch("image", image)
        self._image_version += 1
        self._reset_result()
        for role, make in (("boxes", L.add_shapes_layer), ("points", L.add_points_layer), ("labels", None)):
            # this image's own layer if there is one, else the current one if it fits, else a new one
            name = f"{image.name} SAM {role}"
            found = next((ly for ly in L.layers_of(v, _ROLES[role]) if ly.name == name and self._fits(role, ly)), None)
            current = getattr(self, "_" + role)
            if found is None and current is not None and self._fits(role, current):
                found = current
            if found is None and make is not None:
                found = make(v, image)
            if found is None or found != current:
                self._watch(role, found)
        if self._points is not None:
            v.layers.selection.active = self._points
        self._on_layers_renamed()
        self._say(f"Image {image.name!r}: click positive/negative points or draw boxes on the slice.")
        self._schedule()
        self._stop_stale_propagation()

    def _misfit(self, role: str, layer) -> str | None:
        """Why ``layer`` cannot serve as the image's ``role`` layer, or None."""
        if role != "labels":
            return None if layer.ndim == self._image.ndim else \
                f"it has {layer.ndim} dimensions, the image {self._image.ndim}: choose '(new layer)' for one of its own"
        if layer.multiscale:
            return "it is multiscale: napari-sam writes into single-scale labels; choose '(new layer)'"
        if tuple(layer.data.shape) != spatial_shape(self._image):
            return (f"its shape {tuple(layer.data.shape)} is not the image's {spatial_shape(self._image)}: "
                    "choose '(new layer)'")
        if not same_transform(layer, self._image):  # written by data index: it must lie where the image lies
            return "its scale, translate or rotation differ: give it the image's"
        if read_only(layer.data):
            return f"it is read-only, {read_only(layer.data)}: napari-sam cannot write into it"
        return None

    def _fits(self, role: str, layer) -> bool:
        return self._misfit(role, layer) is None

    def _on_layer_choice(self, role: str) -> None:
        combo = getattr(self._ui, role)
        layer = combo.currentData()
        if layer is None and role != "labels" and self._image is not None:
            layer = (L.add_points_layer if role == "points" else L.add_shapes_layer)(self._viewer, self._image)
        why = self._misfit(role, layer) if layer is not None and self._image is not None else None
        if why:
            self._say(f"{layer.name!r} does not fit image {self._image.name!r} ({why}).", error=True)
            self._on_layers_renamed()
            return
        self._watch(role, layer)
        self._on_layers_renamed()
        self._on_prompts_changed()

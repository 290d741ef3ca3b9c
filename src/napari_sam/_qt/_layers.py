"""Create and recognise the layers the SAM widget works with.

Every layer the widget creates carries ``metadata["napari_sam_role"]``
("points", "boxes", "labels" or "preview") and the image's transform, so it
lies exactly on the image. The preview is a Labels layer holding just the
current slice (size 1 on the other axes, shifted onto the slice), so it is
never confused with, or written into, the user's labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._plane import Plane, spatial_shape

if TYPE_CHECKING:
    import napari

ROLE = "napari_sam_role"
POSITIVE_COLOR = "#39ff14"  # bright green: "this is the object"
NEGATIVE_COLOR = "#ff2d95"  # magenta: "not this"
BOX_COLOR = "#1ec8ff"  # sky blue
PREVIEW_COLOR = "#ffe600"  # yellow: SAM's proposal, never confused with the labels' colours
CURRENT_COLOR = "#ff8c00"  # orange: of several objects, the one whose candidate K steps


def role(layer) -> str | None:
    md = getattr(layer, "metadata", None)
    return md.get(ROLE) if isinstance(md, dict) else None


def layers_of(viewer: napari.Viewer, kind: str, *, exclude_preview: bool = True) -> list:
    """Layers whose class is ``kind`` ("Image", "Points", "Shapes", "Labels")."""
    out = [ly for ly in viewer.layers if ly.__class__.__name__ == kind]
    if exclude_preview:
        out = [ly for ly in out if role(ly) != "preview"]
    return out


def transform_kwargs(image) -> dict:
    """The image's data-to-world transform, as layer keyword arguments."""
    kw = dict(
        scale=image.scale,
        translate=image.translate,
        rotate=image.rotate,
        shear=image.shear,
        affine=image.affine.affine_matrix,
    )
    for attr in ("units", "axis_labels"):  # napari >= 0.6: keep them consistent across layers
        if hasattr(image, attr):
            kw[attr] = getattr(image, attr)
    return kw


class _keep_active:
    """Adding a layer selects it; give the selection back afterwards."""

    def __init__(self, viewer):
        self.viewer = viewer

    def __enter__(self):
        self.active = self.viewer.layers.selection.active

    def __exit__(self, *exc):
        if self.active is not None and self.active in self.viewer.layers:
            self.viewer.layers.selection.active = self.active


def _point_size(image) -> float:
    h, w = spatial_shape(image)[-2:]
    return float(np.clip(min(h, w) / 36.0, 4.0, 40.0))


def add_points_layer(viewer: napari.Viewer, image) -> napari.layers.Points:
    """An empty prompt Points layer on ``image``, in add mode, positive by default."""
    layer = viewer.add_points(
        np.empty((0, image.ndim)),
        ndim=image.ndim,
        name=f"{image.name} SAM points",
        features={"positive": np.zeros(0, bool)},
        feature_defaults={"positive": True},
        face_color="positive",
        face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
        border_color="white",
        border_width=0.15,
        size=_point_size(image),
        out_of_slice_display=False,
        metadata={ROLE: "points"},
        **transform_kwargs(image),
    )
    layer.mode = "add"
    return layer


def set_new_point_polarity(points, positive: bool) -> None:
    """Make new points of ``points`` positive or negative (other feature defaults unchanged)."""
    defaults = points.feature_defaults
    row = defaults.iloc[0].to_dict() if len(defaults) else {}
    row["positive"] = bool(positive)
    points.feature_defaults = row


def ensure_polarity(points) -> None:
    """Give a user's Points layer the ``positive`` feature (existing points positive)."""
    if "positive" not in points.features:
        points.features = points.features.assign(positive=np.ones(len(points.data), bool))


def add_shapes_layer(viewer: napari.Viewer, image) -> napari.layers.Shapes:
    """An empty prompt Shapes layer on ``image`` for boxes (rectangles)."""
    with _keep_active(viewer):
        layer = viewer.add_shapes(
            None,
            ndim=image.ndim,
            name=f"{image.name} SAM boxes",
            edge_color=BOX_COLOR,
            face_color="transparent",
            edge_width=max(1.0, _point_size(image) / 4),
            metadata={ROLE: "boxes"},
            **transform_kwargs(image),
        )
        layer.mode = "add_rectangle"
    return layer


def add_labels_layer(viewer: napari.Viewer, image) -> napari.layers.Labels:
    """An empty Labels layer the shape of ``image`` (without RGB) to commit into."""
    with _keep_active(viewer):
        return viewer.add_labels(
            np.zeros(spatial_shape(image), np.uint32),
            name=f"{image.name} SAM labels",
            metadata={ROLE: "labels"},
            **transform_kwargs(image),
        )


def _preview_geometry(image, plane: Plane) -> tuple[tuple[int, ...], np.ndarray]:
    """(data shape, translate) of a preview holding only ``plane``."""
    nd = len(plane.fixed) + 2
    shape = [1] * nd
    shape[plane.axes[0]], shape[plane.axes[1]] = plane.shape
    # translate so that preview pixel 0 lands on the plane: data2physical(offset)
    world = np.asarray(image.data_to_world(plane.offset()), float)
    translate = np.asarray(image.affine.inverse(world), float)
    return tuple(shape), translate


def show_preview(viewer: napari.Viewer, preview, image, plane: Plane, label_image: np.ndarray,
                 current: int | None = None):
    """Show ``label_image`` (H, W) int on ``plane``, label ``current`` (if any) in CURRENT_COLOR; returns
    the preview layer (created if needed)."""
    shape, translate = _preview_geometry(image, plane)
    data = np.asarray(label_image).reshape(shape)
    if preview is not None and preview in viewer.layers and preview.ndim != len(shape):
        viewer.layers.remove(preview)  # it was another image's
        preview = None
    if preview is None or preview not in viewer.layers:
        kw = transform_kwargs(image)
        kw["translate"] = translate
        with _keep_active(viewer):
            preview = viewer.add_labels(
                data, name="SAM preview", opacity=0.5, blending="translucent", metadata={ROLE: "preview"}, **kw
            )
            _one_colour(preview, current)
        return preview
    preview.translate = translate
    preview.data = data
    if preview.metadata.get(_CURRENT) != current:
        _one_colour(preview, current)
    return preview


_CURRENT = "napari_sam_current"  # the preview's metadata: the label shown in CURRENT_COLOR


def _one_colour(preview, current: int | None = None) -> None:
    """Every object of the preview in PREVIEW_COLOR, but label ``current`` in CURRENT_COLOR."""
    try:
        from napari.utils.colormaps import DirectLabelColormap

        colours = {None: PREVIEW_COLOR, 0: "transparent"}
        if current is not None:
            colours[int(current)] = CURRENT_COLOR
        preview.colormap = DirectLabelColormap(color_dict=colours)
    except (ImportError, TypeError, ValueError):  # older napari: keep its label colours
        pass
    preview.metadata[_CURRENT] = current


def clear_preview(preview) -> None:
    """Empty the preview (keeps the layer)."""
    if preview is not None and np.asarray(preview.data).any():
        preview.data = np.zeros_like(np.asarray(preview.data))


def move_below(viewer: napari.Viewer, layer, above: list) -> None:
    """Move ``layer`` just below the lowest of ``above`` (prompt layers stay on top)."""
    idx = [viewer.layers.index(ly) for ly in above if ly is not None and ly in viewer.layers]
    if layer is None or layer not in viewer.layers or not idx:
        return
    i, target = viewer.layers.index(layer), min(idx)
    if i > target:
        viewer.layers.move(i, target)

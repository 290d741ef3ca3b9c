"""The 2D plane the viewer shows, and the prompts that lie on it.

Everything here is in the *image layer's data coordinates*: the plane is
given by an integer index on every axis the viewer does not display, and the
two displayed axes (in data order) are the slice's rows and columns. Prompts
from a Points or Shapes layer are mapped through world coordinates into the
image's data coordinates, so prompt layers with other scale/translate work too.
No axis is ever swapped here: (row, col) goes to ``core.prompts.to_sam``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_sam.core.prompts import box_from_corners, clip_box, inside_slice

if TYPE_CHECKING:
    import napari


class PlaneError(ValueError):
    """The current view or a prompt layer cannot be used; the message says why."""


@dataclass(frozen=True)
class Plane:
    """One 2D slice of an image layer's data.

    fixed: ((axis, index), ...) for every axis not displayed.
    axes: (row_axis, col_axis) data axes shown, in data order.
    shape: (H, W) size of the slice; label: "z=5" style text for messages (one "name=index" per fixed axis).
    extent: the image's (spatial) shape, every axis; () when not known.
    names: every axis' name, as ``label`` gives them ("z", "c", "axis 1"...); () when not known.
    """

    fixed: tuple[tuple[int, int], ...]
    axes: tuple[int, int]
    shape: tuple[int, int]
    label: str
    extent: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    @property
    def index(self) -> tuple:
        """numpy index of the slice into the image's (spatial) data."""
        idx: list = [slice(None)] * (len(self.fixed) + 2)
        for a, i in self.fixed:
            idx[a] = i
        return tuple(idx)

    def full_index(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """nD fancy index of slice pixels (rows, cols), for ``Labels.data_setitem``."""
        idx: list = [None] * (len(self.fixed) + 2)
        for a, i in self.fixed:
            idx[a] = np.full(len(rows), i, dtype=np.intp)
        idx[self.axes[0]], idx[self.axes[1]] = np.asarray(rows, np.intp), np.asarray(cols, np.intp)
        return tuple(idx)

    def offset(self) -> np.ndarray:
        """Data coordinates of the slice's first pixel."""
        o = np.zeros(len(self.fixed) + 2)
        for a, i in self.fixed:
            o[a] = i
        return o


def image_data(image: napari.layers.Image):
    """Full-resolution data of an image layer (level 0 of a multiscale image)."""
    return image.data[0] if image.multiscale else image.data


def spatial_shape(image: napari.layers.Image) -> tuple[int, ...]:
    """The image's shape without its RGB(A) channel axis."""
    shape = tuple(image_data(image).shape)
    return shape[:-1] if image.rgb else shape


def _axis_names(viewer, shape: tuple[int, ...], offset: int) -> list[str]:
    """Names of the image's axes: the viewer's labels, or, for napari's numeric defaults, by their place
    in the data (... t, z, y, x; an axis of one slice, e.g. a single channel, is not counted), whichever two
    the viewer shows: a stack seen from the side slices along y."""
    nd = len(shape)
    given = [str(x) for x in viewer.dims.axis_labels[offset : offset + nd]]
    if not all(g.lstrip("-").isdigit() for g in given):
        return given
    names = {nd - 1: "x", nd - 2: "y"}
    outer = [a for a in range(nd - 3, -1, -1) if shape[a] > 1] or list(range(nd - 3, -1, -1))
    names.update(zip(outer, ("z", "t")))
    return [names.get(a, f"axis {a}") for a in range(nd)]


def current_plane(viewer: napari.Viewer, image: napari.layers.Image) -> Plane:
    """The plane of ``image`` the viewer shows now; PlaneError if there is none."""
    if viewer.dims.ndisplay != 2:
        raise PlaneError("SAM works on 2D slices: switch the viewer to 2D (the 2D/3D button, Ctrl-Y)")
    shape = spatial_shape(image)
    nd = len(shape)
    offset = viewer.dims.ndim - nd
    axes = tuple(sorted(a - offset for a in viewer.dims.displayed))
    if len(axes) != 2 or min(axes) < 0:
        raise PlaneError(f"the viewer does not show two axes of {image.name!r}; reset the axis order")
    pos = np.asarray(image.world_to_data(viewer.dims.point), float)
    fixed, names = [], []
    labels = _axis_names(viewer, shape, offset)
    for a in range(nd):
        if a in axes:
            continue
        i = int(np.round(pos[a]))  # as napari picks the slice it shows (a half rounds to even)
        if not 0 <= i < shape[a]:
            raise PlaneError(
                f"the current position is outside {image.name!r} on axis {labels[a]} "
                f"(index {i}, the image has {shape[a]}); move the slider back into the image"
            )
        fixed.append((a, i))
        names.append(f"{labels[a]}={i}")
    return Plane(tuple(fixed), axes, (shape[axes[0]], shape[axes[1]]), ", ".join(names) or "2D image", tuple(shape),
                 tuple(labels))


def same_transform(a, b) -> bool:
    """Whether layers ``a`` and ``b`` put the same data index at the same place in the world."""
    return (
        a.ndim == b.ndim
        and np.allclose(a.scale, b.scale)
        and np.allclose(a.translate, b.translate)
        and np.allclose(a.rotate, b.rotate)
        and np.allclose(a.shear, b.shear)
        and np.allclose(a.affine.affine_matrix, b.affine.affine_matrix)
    )


def to_image_coords(layer, image, coords: np.ndarray) -> np.ndarray:
    """(N, ndim) data coordinates of ``layer`` -> (N, ndim) data coordinates of ``image``."""
    coords = np.asarray(coords, float).reshape(-1, layer.ndim)
    if layer.ndim != image.ndim:
        raise PlaneError(
            f"layer {layer.name!r} has {layer.ndim} dimensions but image {image.name!r} has {image.ndim}: "
            f"choose or create a prompt layer for this image"
        )
    if same_transform(layer, image):
        return coords
    return np.array([image.world_to_data(layer.data_to_world(c)) for c in coords], float).reshape(-1, image.ndim)


def _on_plane(coords: np.ndarray, plane: Plane) -> np.ndarray:
    """Which ``coords`` lie on ``plane``: those napari would show the plane at (rounded as ``current_plane``)."""
    on = np.ones(len(coords), bool)
    for a, i in plane.fixed:
        on &= np.round(coords[:, a]) == i
    return on


def points_on_plane(points, image, plane: Plane) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices (K,), points (K, 2) (row, col), labels (K,) 1/0) of the points on ``plane``.

    A point's label comes from the layer's ``positive`` feature (all positive without it).
    """
    data = np.asarray(points.data)
    if len(data) == 0:
        return np.zeros(0, int), np.zeros((0, 2)), np.zeros(0, np.int64)
    coords = to_image_coords(points, image, data)
    on = _on_plane(coords, plane)
    feats = points.features
    pos = np.asarray(feats["positive"], bool) if "positive" in feats else np.ones(len(data), bool)
    idx = np.nonzero(on)[0]
    return idx, coords[on][:, list(plane.axes)], pos[on].astype(np.int64)


def points_inside(points: np.ndarray, labels: np.ndarray, plane: Plane) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(points, labels, notes): the points (K, 2) (row, col) that lie on the image (a click beside it is
    not used, and ``notes`` says so)."""
    on = inside_slice(points, plane.shape)
    if on.all():
        return points, labels, []
    h, w = plane.shape
    return points[on], labels[on], [f"{int((~on).sum())} point(s) outside the image (rows 0..{h - 1}, cols "
                                     f"0..{w - 1}) not used"]


AREA_SHAPES = ("rectangle", "ellipse", "polygon")  # drawn around an object: its upright bounding box is a box
MIN_BOX = 3.0  # px: a smaller rectangle is a click with the rectangle tool (napari makes a few screen pixels)


def boxes_on_plane(shapes, image, plane: Plane) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(indices (M,), boxes (M, 4) (row0, col0, row1, col1), notes) of the boxes on ``plane``.

    A rectangle, an ellipse or a polygon is one object: SAM gets the upright rectangle around it (SAM
    takes upright boxes only: a rotated one's is looser), cut to the slice (``core.prompts.clip_box``).
    Lines and paths, shapes under ``MIN_BOX`` px (or thinner than one) and shapes outside the slice are
    not used; ``notes`` says so, and what to do instead.
    """
    idx, boxes = [], []
    left_out = {"line": 0, "small": 0, "outside": 0, "rotated": 0}
    for i, (verts, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        coords = to_image_coords(shapes, image, verts)
        if not _on_plane(coords, plane).all():
            continue
        rc = coords[:, list(plane.axes)]
        box = box_from_corners(rc)
        size = box[2:] - box[:2]
        why = "line" if kind not in AREA_SHAPES else "small" if size.max() < MIN_BOX or size.min() < 1 else None
        clipped = clip_box(box, plane.shape) if why is None else None
        if why is None and clipped is None:
            why = "outside"
        if why is not None:
            left_out[why] += 1
            continue
        if kind != "polygon" and not _upright(rc, box):
            left_out["rotated"] += 1
        idx.append(i)
        boxes.append(clipped)
    return np.array(idx, int), np.array(boxes, np.float32).reshape(-1, 4), _shape_notes(left_out)


def _upright(corners: np.ndarray, box: np.ndarray) -> bool:
    """Whether a rectangle's (or ellipse's) corners (4, 2) (row, col) lie on its bounding ``box``'s rows."""
    return bool(np.all(np.isclose(corners[:, 0], box[0], atol=0.01) | np.isclose(corners[:, 0], box[2], atol=0.01)))


def _shape_notes(n: dict) -> list[str]:
    notes = []
    if n["line"]:
        notes.append(f"{n['line']} line(s) or path(s) not used (they enclose nothing): draw a rectangle around the "
                     "object, or click on it in the points layer")
    if n["small"]:
        notes.append(f"{n['small']} shape(s) under {MIN_BOX:g} px not used (a click with the rectangle tool?): "
                     "drag to draw a box around the object, or click on it in the points layer")
    if n["outside"]:
        notes.append(f"{n['outside']} shape(s) outside the image not used")
    if n["rotated"]:
        notes.append(f"{n['rotated']} rotated shape(s) used as the upright box around them (SAM takes upright boxes)")
    return notes


def plane_indices(layer, image, plane: Plane) -> list[int]:
    """Indices of the points or shapes of ``layer`` lying on ``plane`` (any shape type)."""
    if layer.__class__.__name__ == "Points":
        return [int(i) for i in points_on_plane(layer, image, plane)[0]]
    out = []
    for i, verts in enumerate(layer.data):
        if _on_plane(to_image_coords(layer, image, verts), plane).all():
            out.append(i)
    return out

"""THE one place where napari's (row, col) becomes SAM's (x, y) / XYXY.

napari (and numpy) index a 2D slice as (row, col) = (y, x), with pixel centres
at integer coordinates. SAM's prompt encoder takes points as (x, y) and boxes
as (x0, y0, x1, y1) in the coordinates of the *resized* image it encoded (it
adds the 0.5 pixel-centre shift itself). Everything that turns user prompts
into SAM prompts goes through :func:`to_sam` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class ObjectPrompt:
    """The prompts of one object on one slice, in napari's convention.

    points: (N, 2) float, (row, col). labels: (N,) int, 1 positive, 0 negative.
    box: (4,) float, (row0, col0, row1, col1), or None.
    mask: (H, W) bool (or integer, non-zero inside; or float of only 0.0 and 1.0) full-size mask, or (h, w)
    float low-res SAM logits, or None.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self):
        """Checks what SAM would take silently: NaN coordinates, labels that are SAM's own codes (-1 padding,
        2/3 box corners), a label count that does not match the points; an integer mask becomes bool."""
        self.points = np.asarray(self.points, np.float32).reshape(-1, 2)
        if not np.isfinite(self.points).all():
            raise ValueError("a point has a NaN or infinite coordinate: give (row, col) pixel coordinates")
        if self.labels is None or len(np.atleast_1d(self.labels)) == 0:
            self.labels = np.ones(len(self.points), np.int64) if len(self.points) else np.zeros(0, np.int64)
        labels = np.asarray(self.labels, np.float64).reshape(-1)
        if len(labels) != len(self.points):
            raise ValueError(f"{len(self.points)} point(s) but {len(labels)} point label(s): give one label per point "
                             "(1 positive, 0 negative)")
        bad = ~np.isin(labels, (0, 1))
        if bad.any():
            raise ValueError(f"point label {labels[bad][0]:g} is neither 1 (positive) nor 0 (negative)")
        self.labels = labels.astype(np.int64)
        if self.box is not None:
            box = np.asarray(self.box, np.float32)
            if box.size != 4:
                raise ValueError(f"a box is 4 numbers (row0, col0, row1, col1), got {box.size}: "
                                 "give one box per object")
            self.box = box.reshape(4)
            if not np.isfinite(self.box).all():
                raise ValueError("the box has a NaN or infinite coordinate: give (row0, col0, row1, col1) in pixels")
        if self.mask is not None:
            m = np.asarray(self.mask)
            # a drawn mask, never logits: integers, or floats that are all 0.0 / 1.0 (a mask saved or computed as
            # floats; read as SAM's logits it was a near-empty prompt, and propagation lost the object)
            if m.dtype.kind in "iu" or (m.dtype.kind == "f" and np.isin(m, (0.0, 1.0)).all()):
                self.mask = m != 0

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None and self.mask is None

    @property
    def mask_alone(self) -> bool:
        """A full-size bool mask and nothing else: the user's own drawing, kept as it is."""
        return self.mask is not None and np.asarray(self.mask).dtype == bool and not len(self.points) and self.box is None


def box_from_corners(vertices: np.ndarray) -> np.ndarray:
    """A napari Shapes rectangle's vertices (4, 2) (row, col) -> (row0, col0, row1, col1)."""
    v = np.asarray(vertices, np.float32).reshape(-1, 2)
    return np.array([v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max()], np.float32)


def to_sam(
    points_rc: np.ndarray | None,
    boxes_rc: np.ndarray | None,
    scale_rc: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """napari -> SAM coordinates.

    points_rc: (..., 2) float (row, col) in slice pixels, or None.
    boxes_rc: (..., 4) float (row0, col0, row1, col1), or None; corners may
        come in any order.
    scale_rc: (row_scale, col_scale) from the slice to SAM's resized input
        (``new_h / old_h``, ``new_w / old_w``, as segment-anything's
        ``ResizeLongestSide.apply_coords``).
    Returns (points_xy (..., 2) float32 as (x, y), boxes_xyxy (..., 4) float32).
    """
    sr, sc = float(scale_rc[0]), float(scale_rc[1])
    pts = None
    if points_rc is not None:
        p = np.asarray(points_rc, np.float64)  # float64 math, as segment-anything's apply_coords
        pts = np.stack([p[..., 1] * sc, p[..., 0] * sr], -1).astype(np.float32)
    bxs = None
    if boxes_rc is not None:
        b = np.asarray(boxes_rc, np.float64)
        r0, r1 = np.minimum(b[..., 0], b[..., 2]), np.maximum(b[..., 0], b[..., 2])
        c0, c1 = np.minimum(b[..., 1], b[..., 3]), np.maximum(b[..., 1], b[..., 3])
        bxs = np.stack([c0 * sc, r0 * sr, c1 * sc, r1 * sr], -1).astype(np.float32)
    return pts, bxs


def inside_slice(points_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N,) bool: which points (N, 2) (row, col) lie on a slice of ``shape`` (H, W), whose pixel edges are at
    -0.5 and H - 0.5, W - 0.5."""
    h, w = shape
    p = np.asarray(points_rc, float).reshape(-1, 2)
    return (p[:, 0] >= -0.5) & (p[:, 0] <= h - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= w - 0.5)


def clip_box(box_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """A box (4,) (row0, col0, row1, col1) cut to the pixels of a slice of ``shape`` (H, W): within
    [0, H - 1] x [0, W - 1], the slice's pixel centres (the part outside holds no image: SAM, given a box
    reaching far beyond the slice, answered an object with IoU 0.26 instead of 0.86). None when less
    than a pixel of the box lies on the slice."""
    h, w = shape
    r0, c0, r1, c1 = box_from_corners(np.asarray(box_rc, np.float32).reshape(2, 2))
    r0, r1 = max(r0, 0.0), min(r1, h - 1.0)
    c0, c1 = max(c0, 0.0), min(c1, w - 1.0)
    if r1 - r0 < 1 or c1 - c0 < 1:
        return None
    return np.array([r0, c0, r1, c1], np.float32)


def on_slice(o: ObjectPrompt, shape: tuple[int, int]) -> ObjectPrompt:
    """``o`` with its box cut to the slice of ``shape`` (``clip_box``); as it is when it has no box or
    less than a pixel of its box is on the slice (``check_inside`` decides whether that is refused)."""
    if o.box is None:
        return o
    box = clip_box(o.box, shape)
    return o if box is None else replace(o, box=box)


def check_inside(points_rc: np.ndarray | None, boxes_rc: np.ndarray | None, shape: tuple[int, int]) -> None:
    """Refuse prompts outside a slice of ``shape`` (H, W) with a message that says where."""
    h, w = shape
    if points_rc is not None and len(points_rc):
        p = np.asarray(points_rc, float).reshape(-1, 2)
        bad = ~inside_slice(p, shape)
        if bad.any():
            r, c = p[np.argmax(bad)]
            raise ValueError(
                f"point (row={r:g}, col={c:g}) is outside the slice of {h}x{w} pixels (rows 0..{h - 1}, cols 0..{w - 1})"
            )
    if boxes_rc is not None and len(boxes_rc):
        b = np.asarray(boxes_rc, float).reshape(-1, 4)
        for r0, c0, r1, c1 in b:
            if max(r0, r1) < -0.5 or min(r0, r1) > h - 0.5 or max(c0, c1) < -0.5 or min(c0, c1) > w - 0.5:
                raise ValueError(f"box (row0={r0:g}, col0={c0:g}, row1={r1:g}, col1={c1:g}) lies outside the slice of {h}x{w} pixels")

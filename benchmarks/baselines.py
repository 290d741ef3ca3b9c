"""A classical baseline a user could run without SAM, and segmentation metrics.

Baseline (per slice, from the same prompt points): Gaussian smoothing
(sigma 1.5), Otsu threshold, distance transform of the foreground, watershed
from its local maxima (min distance 4 px) plus the prompt points; the object is
the watershed region holding the prompt. Boxes give their centre as the seed,
and the result is clipped to the box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import find_boundaries, watershed


class ClassicalSlice:
    """Precomputes the per-slice part (smoothing, Otsu, distance, markers) once."""

    def __init__(self, image2d: np.ndarray):
        g = gaussian(image2d.astype(np.float32), 1.5, preserve_range=True)
        self.fg = g > threshold_otsu(g)
        self.dist = ndi.distance_transform_edt(self.fg)
        peaks = peak_local_max(self.dist, min_distance=4, labels=self.fg.astype(int), exclude_border=False)
        self.markers = np.zeros(image2d.shape, np.int32)
        self.markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)

    def segment(self, point_rc=None, box=None) -> np.ndarray:
        if box is not None:
            point_rc = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        r, c = int(round(point_rc[0])), int(round(point_rc[1]))
        if not self.fg[r, c]:
            return np.zeros_like(self.fg)
        markers = self.markers.copy()
        seed = markers.max() + 1
        # the prompt replaces the nearest automatic marker of its basin
        markers[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] = 0
        markers[r, c] = seed
        ws = watershed(-self.dist, markers, mask=self.fg)
        out = ws == seed
        if box is not None:
            clip = np.zeros_like(out)
            clip[int(box[0]) : int(box[2]) + 1, int(box[1]) : int(box[3]) + 1] = True
            out &= clip
        return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tol: float = 2.0) -> float:
    """Boundary F1: predicted outline pixels within ``tol`` px of the true one, and vice versa."""
    bp = find_boundaries(pred, mode="inner")
    bg = find_boundaries(gt, mode="inner")
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    dg = ndi.distance_transform_edt(~bg)
    dp = ndi.distance_transform_edt(~bp)
    precision = float((dg[bp] <= tol).mean())
    recall = float((dp[bg] <= tol).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)

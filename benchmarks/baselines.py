"""A classical baseline a user could run without SAM, and segmentation metrics.

Baseline (per slice, from the same prompt points): Gaussian smoothing
(sigma 1.5), Otsu threshold, distance transform of the foreground, watershed
on it seeded with the prompt points of all objects of the slice (one seed per
object, as a user seeds a watershed); an object is its seed's region. Boxes
give their centre as the seed, and each result is clipped to its box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import find_boundaries, watershed


class ClassicalSlice:
    """Smoothing + Otsu + distance transform once per slice; then a seeded
    watershed from the prompt points of *all* objects of the slice, as a user
    would seed it (each seed one object; seeds in background give nothing)."""

    def __init__(self, image2d: np.ndarray):
        g = gaussian(image2d.astype(np.float32), 1.5, preserve_range=True)
        self.fg = g > threshold_otsu(g)
        self.dist = ndi.distance_transform_edt(self.fg)

    def segment_all(self, seeds_rc: np.ndarray, boxes=None) -> np.ndarray:
        """seeds_rc: (n, 2) (row, col), one per object; boxes: optional (n, 4),
        whose centres replace the seeds and which clip each object.
        Returns (H, W) int labels, object k = k + 1."""
        if boxes is not None:
            b = np.asarray(boxes, float)
            seeds_rc = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
        markers = np.zeros(self.fg.shape, np.int32)
        for k, (r, c) in enumerate(np.round(np.asarray(seeds_rc)).astype(int)):
            if self.fg[r, c]:
                markers[r, c] = k + 1
        ws = watershed(-self.dist, markers, mask=self.fg)
        if boxes is not None:
            out = np.zeros_like(ws)
            for k, (r0, c0, r1, c1) in enumerate(np.round(b).astype(int)):
                sub = ws[r0 : r1 + 1, c0 : c1 + 1]
                out[r0 : r1 + 1, c0 : c1 + 1][sub == k + 1] = k + 1
            ws = out
        return ws


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

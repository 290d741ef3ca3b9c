"""Which of SAM's candidate masks an ambiguous prompt gets first.

SAM answers one click with 3 candidates and its IoU head predicts each one's
IoU; SAM shows the highest first ("score"). The embedded model's IoU head
carries little of that information: it ranks its first candidate highest for
almost every click (docs/embedded-model.md), and on a real image of nuclei
that candidate is too small (0.82x the annotated area), while the second is
the best for 80 of 125 nuclei. "score*edge" multiplies the predicted IoU by
how strongly the image changes along each candidate's outline (the mean
gradient magnitude of the slice, smoothed by a 1 px Gaussian, on the mask's
inner boundary): an outline on the object's edge is steep, one inside the
object or out in the background is flat. Measured in docs/embedded-model.md.

It is the embedded model's default; official SAM checkpoints keep "score"
(their IoU heads were trained on SA-1B's 1.1 B masks; not checked here).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

RULES = ("score", "score*edge")
EDGE_SIGMA = 1.0  # px, Gaussian smoothing before the gradient
_MARGIN = 6  # px of context around the candidates: the smoothing and Sobel stencils stay exact


def default_rule(native_resolution: bool) -> str:
    """The embedded model (native resolution) -> "score*edge"; SAM's ViTs -> "score"."""
    return "score*edge" if native_resolution else "score"


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"rank rule {rule!r} is not one of {', '.join(RULES)}")
    return rule


def edge_strength(gray: np.ndarray, masks: np.ndarray, r0: int = 0, c0: int = 0) -> np.ndarray:
    """(c,) mean gradient magnitude on each mask's inner boundary.

    gray: the normalised slice (H, W); masks: (c, h, w) bool crops at (r0, c0)
    of it (the whole slice by default). A mask of fewer than 3 px gets 0.
    """
    masks = np.asarray(masks, bool)
    out = np.zeros(len(masks))
    rows, cols = np.flatnonzero(masks.any((0, 2))), np.flatnonzero(masks.any((0, 1)))
    if not len(rows):
        return out
    H, W = gray.shape
    R0, C0 = max(r0 + rows[0] - _MARGIN, 0), max(c0 + cols[0] - _MARGIN, 0)
    R1, C1 = min(r0 + rows[-1] + 1 + _MARGIN, H), min(c0 + cols[-1] + 1 + _MARGIN, W)
    g = ndi.gaussian_filter(np.asarray(gray[R0:R1, C0:C1], np.float32), EDGE_SIGMA)
    grad = np.hypot(ndi.sobel(g, 0), ndi.sobel(g, 1))
    h, w = masks.shape[1:]
    for k, crop in enumerate(masks):
        m = np.zeros((R1 - R0, C1 - C0), bool)  # the crop, pasted into the region with context
        a, b = max(r0, R0), max(c0, C0)
        m[a - R0 : min(r0 + h, R1) - R0, b - C0 : min(c0 + w, C1) - C0] = crop[a - r0 : R1 - r0, b - c0 : C1 - c0]
        if m.sum() < 3:
            continue
        inner = m & ~ndi.binary_erosion(m)
        out[k] = float(grad[inner].mean())
    return out


def respects_clicks(masks: np.ndarray, points, labels, r0: int = 0, c0: int = 0) -> np.ndarray:
    """(c,) bool: the mask holds every positive click and no negative one
    (points (n, 2) (row, col) in slice pixels; masks crops at (r0, c0))."""
    masks = np.asarray(masks, bool)
    ok = np.ones(len(masks), bool)
    h, w = masks.shape[1:]
    for (r, c), lab in zip(np.asarray(points, float).reshape(-1, 2), np.asarray(labels).reshape(-1)):
        rr, cc = int(round(r)) - r0, int(round(c)) - c0
        inside = masks[:, rr, cc] if 0 <= rr < h and 0 <= cc < w else np.zeros(len(masks), bool)
        ok &= inside == bool(lab)
    return ok


def rank_keys(rule: str, scores: np.ndarray, gray: np.ndarray | None, masks: np.ndarray, r0: int = 0,
              c0: int = 0, points=None, labels=None) -> np.ndarray:
    """(c,) the number candidates are ranked by, highest first (ties: earlier first).

    "score*edge" also puts the candidates that contradict a click (a positive
    click outside, a negative one inside) after those that do not: measured on
    a corrective second click, docs/embedded-model.md."""
    scores = np.asarray(scores, np.float64)
    if rule == "score" or gray is None or len(scores) < 2:
        return scores
    keys = np.maximum(scores, 0.0) * edge_strength(gray, masks, r0, c0)
    if points is not None and len(points):
        keys = keys - np.where(respects_clicks(masks, points, labels, r0, c0), 0.0, 1e6)
    return keys

"""An object's result on the slice it was last decoded on (``Track``), and how it is measured against the
next slice's answer: overlaps, the sideways move, the candidate that continues it, its contrast.

What the stop and step rules (``propagate_rules``) are given to decide on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Track:
    """An object's result on the last slice it was decoded on.

    mask: (hc, wc) bool crop at (r0, c0); low_res: SAM's low-res logits of it.
    contrast0: the object's contrast on its prompted slice; peak_area: its
    largest area so far.
    """

    r0: int
    c0: int
    mask: np.ndarray
    low_res: np.ndarray
    score: float
    contrast0: float = 0.0
    peak_area: int = 0

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def deepest_point(self) -> np.ndarray:
        """(row, col) of the pixel farthest from the outline."""
        d = ndi.distance_transform_edt(np.pad(self.mask, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(d)), d.shape)
        return np.array([r + self.r0, c + self.c0], np.float32)

    def bbox(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1) inclusive, in slice pixels."""
        rows, cols = np.flatnonzero(self.mask.any(1)), np.flatnonzero(self.mask.any(0))
        return self.r0 + rows[0], self.c0 + cols[0], self.r0 + rows[-1], self.c0 + cols[-1]

    def grown_box(self, margin: float, shape) -> np.ndarray:
        r0, c0, r1, c1 = self.bbox()
        mr, mc = margin * (r1 - r0 + 1) + 1, margin * (c1 - c0 + 1) + 1
        h, w = shape
        return np.array([max(r0 - mr, 0), max(c0 - mc, 0), min(r1 + mr, h - 1), min(c1 + mc, w - 1)], np.float32)


def overlaps(a: Track, r0: int, c0: int, mask: np.ndarray) -> tuple[float, float]:
    """(IoU of the track's mask and another crop ``mask`` at (r0, c0), share of the track's mask inside it)."""
    if not a.mask.any() or not mask.any():
        return 0.0, 0.0
    R0, C0 = min(a.r0, r0), min(a.c0, c0)
    R1 = max(a.r0 + a.mask.shape[0], r0 + mask.shape[0])
    C1 = max(a.c0 + a.mask.shape[1], c0 + mask.shape[1])
    A = np.zeros((R1 - R0, C1 - C0), bool)
    B = np.zeros_like(A)
    A[a.r0 - R0 : a.r0 - R0 + a.mask.shape[0], a.c0 - C0 : a.c0 - C0 + a.mask.shape[1]] = a.mask
    B[r0 - R0 : r0 - R0 + mask.shape[0], c0 - C0 : c0 - C0 + mask.shape[1]] = mask
    inter = np.count_nonzero(A & B)
    return inter / max(np.count_nonzero(A | B), 1), inter / max(np.count_nonzero(A), 1)


def aligned_overlap(a: Track, r0: int, c0: int, mask: np.ndarray) -> tuple[float, float]:
    """(IoU of the track's mask and ``mask`` at (r0, c0) with their centroids brought together,
    the centroid's move in units of the track mask's equivalent radius)."""
    if not a.mask.any() or not mask.any():
        return 0.0, float("inf")
    ra, ca = np.argwhere(a.mask).mean(0) + (a.r0, a.c0)
    rb, cb = np.argwhere(mask).mean(0) + (r0, c0)
    dr, dc = int(round(rb - ra)), int(round(cb - ca))
    radius = np.sqrt(a.area / np.pi)
    return overlaps(a, r0 - dr, c0 - dc, mask)[0], float(np.hypot(rb - ra, cb - ca) / max(radius, 1.0))


def select_by_overlap(prev: Track):
    """A ``decode_objects`` selector: the candidate whose low-res mask best
    overlaps the previous low-res mask, times its predicted IoU."""
    ref = prev.low_res > 0

    def pick(scores, low):
        cand = low > 0
        inter = (cand & ref).sum((1, 2))
        union = (cand | ref).sum((1, 2))
        return int(np.argmax(scores * inter / np.maximum(union, 1)))

    return pick


RING = (1, 4)  # the surroundings: pixels 1 to 4 px outside the mask


def contrast(image2d: np.ndarray, labels2d: np.ndarray, r0: int, c0: int, mask: np.ndarray) -> float:
    """Mean intensity inside ``mask`` (a crop at (r0, c0)) minus the median of
    a ring of unlabelled pixels around it, on the raw slice ``image2d``."""
    if not mask.any():
        return 0.0
    p = RING[1] + 1
    h, w = image2d.shape
    R0, C0 = max(r0 - p, 0), max(c0 - p, 0)
    R1, C1 = min(r0 + mask.shape[0] + p, h), min(c0 + mask.shape[1] + p, w)
    m = np.zeros((R1 - R0, C1 - C0), bool)
    m[r0 - R0 : r0 - R0 + mask.shape[0], c0 - C0 : c0 - C0 + mask.shape[1]] = mask
    img = np.asarray(image2d[R0:R1, C0:C1], np.float32)
    ring = ndi.binary_dilation(m, iterations=RING[1]) & ~ndi.binary_dilation(m, iterations=RING[0])
    free = ring & (labels2d[R0:R1, C0:C1] == 0)
    ring = free if free.sum() >= 8 else ring
    if not ring.any():
        return float(img[m].mean())
    return float(img[m].mean() - np.median(img[ring]))

"""Fix SAM's named weaknesses on a mask: coarse boundaries and stray fragments.

SAM decodes masks at a quarter of its input resolution (the embedded model at
half) and upsamples them bilinearly, so edges are coarse; it also leaves small
disconnected fragments (SAM paper, section 7, "Limitations"). Two steps, each
on a crop around the mask:

1. ``keep_prompted``: keep the connected components that contain a positive
   point (or, for a box, the one nearest its centre); drop the others.
2. ``snap_boundary``: re-threshold a 2 px band around the predicted outline
   at the midpoint between the object's inside brightness (median of the
   eroded mask) and its surroundings (median of a ring outside the band), on
   the normalised slice smoothed with sigma 1 px; then fill holes and apply
   step 1 again. Skipped when the object is not brighter than its
   surroundings (contrast < 10 grey levels), where the rule has no meaning.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BAND = 2
MIN_CONTRAST = 10.0


def _crop(mask: np.ndarray, margin: int):
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])
    return slice(r0, r1), slice(c0, c1)


def keep_prompted(mask: np.ndarray, points=None, labels=None, box=None) -> np.ndarray:
    """Keep the components of ``mask`` (H, W) bool holding a positive point,
    else the one nearest the box centre, else the largest."""
    if not mask.any():
        return mask
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    keep: set[int] = set()
    if points is not None and len(points):
        for (r, c), lb in zip(np.asarray(points), np.asarray(labels)):
            ri, ci = int(round(r)), int(round(c))
            if lb == 1 and 0 <= ri < mask.shape[0] and 0 <= ci < mask.shape[1] and lab[ri, ci]:
                keep.add(int(lab[ri, ci]))
    if not keep:
        sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
        if box is not None:
            cr, cc = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            com = np.array(ndi.center_of_mass(mask, lab, index=np.arange(1, n + 1)))
            d = np.hypot(com[:, 0] - cr, com[:, 1] - cc)
            # nearest to the centre among the components of a useful size
            d[sizes < 0.2 * sizes.max()] = np.inf
            keep.add(int(np.argmin(d)) + 1)
        else:
            keep.add(int(np.argmax(sizes)) + 1)
    return np.isin(lab, list(keep))


def snap_boundary(mask: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Re-threshold the ``BAND``-px band around the outline of ``mask`` against ``gray`` (H, W)."""
    if mask.sum() < 9:
        return mask
    sl = _crop(mask, 4 * BAND + 4)
    m = mask[sl]
    g = ndi.gaussian_filter(gray[sl].astype(np.float32), 1.0)
    st = ndi.generate_binary_structure(2, 1)
    inner = ndi.binary_erosion(m, st, BAND)
    outer = ndi.binary_dilation(m, st, BAND)
    ring = ndi.binary_dilation(m, st, 3 * BAND) & ~outer
    core = inner if inner.sum() >= 4 else m
    if not ring.any():
        return mask
    v_in, v_out = float(np.median(g[core])), float(np.median(g[ring]))
    if v_in - v_out < MIN_CONTRAST:
        return mask
    t = 0.5 * (v_in + v_out)
    band = outer & ~inner
    new = inner | (band & (g > t))
    new = ndi.binary_fill_holes(new)
    out = mask.copy()
    out[sl] = new
    return out


def refine_mask(mask: np.ndarray, gray: np.ndarray | None, points=None, labels=None, box=None) -> np.ndarray:
    """Both steps on one (H, W) bool mask; ``gray`` is the normalised slice (uint8)."""
    out = keep_prompted(mask, points, labels, box)
    if gray is not None and out.any():
        out = keep_prompted(snap_boundary(out, gray), points, labels, box)
    return out


def tidy_mask(mask: np.ndarray, gray: np.ndarray | None, points=None, labels=None, box=None, *,
              snap: bool, fragments: bool) -> np.ndarray:
    """What a predictor does to each mask: ``refine_mask`` (snap + fragments) with ``snap``, else
    ``keep_prompted`` with ``fragments``, else the mask as SAM gave it."""
    if snap:
        return refine_mask(mask, gray, points, labels, box)
    return keep_prompted(mask, points, labels, box) if fragments else mask

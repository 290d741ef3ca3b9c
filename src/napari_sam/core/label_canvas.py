"""The labels a propagation run is building, with every pixel owned by one
object chosen by score.

A run works on a copy of the caller's labels (the caller applies the result
at the end, so a cancelled run changes nothing). Each object painted by the
run keeps, per slice, its per-pixel score (SAM's full-resolution mask logit)
on a crop around it. When two objects claim a pixel, the higher score wins,
whichever was painted first (a tie keeps the earlier owner); the result does
not depend on painting order. Pixels that already belonged to another object
before the run (an object the run does not propagate) are never taken.
"""

from __future__ import annotations

import numpy as np

USER_SCORE = np.float16(np.inf)  # a mask the user gave: no prediction can take its pixels


def label_dtype(top: int):
    """The smallest unsigned dtype of labels up to ``top`` (uint16 at least, as napari's Labels)."""
    return np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.uint64


def check_fits(dtype, ids) -> None:
    """ValueError unless labels of ``dtype`` hold every object id in ``ids`` exactly."""
    for oid in ids:
        try:
            fits = int(np.asarray(oid).astype(dtype)) == int(oid)
        except (OverflowError, ValueError, TypeError):
            fits = False
        if not fits:
            wide = np.dtype(label_dtype(int(oid))).name
            raise ValueError(f"object id {oid} does not fit the labels' dtype {np.dtype(dtype)}: "
                             f"pass labels.astype(np.{wide}), or use smaller ids")


class LabelCanvas:
    """labels: the (z, y, x) array being built (a copy of ``base``, or zeros).

    ids: the objects this run paints; their old pixels inside ``zs`` are
    cleared first, so a re-run replaces an object instead of adding to it.
    """

    def __init__(self, shape, base=None, ids=(), zs=None, dtype=None):
        if base is None:
            top = max([int(i) for i in ids] + [0])
            self.labels = np.zeros(shape, dtype or label_dtype(top))
        else:
            self.labels = np.array(base, copy=True)
            check_fits(self.labels.dtype, ids)
            ids = np.asarray(list(ids), self.labels.dtype)
            for z in range(*(zs or (0, self.labels.shape[0]))):  # a slice at a time: no stack-sized temporaries
                sl = self.labels[z]
                sl[np.isin(sl, ids)] = 0
        self._scores: dict[int, dict[int, tuple[int, int, np.ndarray]]] = {}

    def paint(self, z: int, oid: int, r0: int, c0: int, mask: np.ndarray, score: np.ndarray | float) -> np.ndarray:
        """Give ``oid`` the pixels of ``mask`` (a crop at (r0, c0) of slice ``z``)
        that no other object holds with a score >= ``score``.

        score: (hc, wc) per-pixel scores, or one number for the whole mask.
        Returns the pixels ``oid`` got, as a bool crop like ``mask``.
        """
        hc, wc = mask.shape
        sl = self.labels[z, r0 : r0 + hc, c0 : c0 + wc]
        sc = np.broadcast_to(np.asarray(score, np.float32), mask.shape)
        owned = self._scores.setdefault(z, {})
        if oid in owned:  # painted before on this slice: replace
            self.erase(z, oid)
        win = mask.copy()
        for other in np.unique(sl[mask]):
            other = int(other)
            if other in (0, oid):
                continue
            held = mask & (sl == other)
            if other not in owned:  # an object from before this run
                win &= ~held
                continue
            rr, cc = np.nonzero(held)
            orr, occ, osc = owned[other]
            theirs = osc[rr + r0 - orr, cc + c0 - occ].astype(np.float32)
            lose = theirs >= sc[rr, cc]
            win[rr[lose], cc[lose]] = False
        sl[win] = oid
        owned[oid] = (r0, c0, sc.astype(np.float16))
        return win

    def paint_full(self, z: int, oid: int, mask: np.ndarray, score: np.ndarray | float) -> tuple[int, int, int, int] | None:
        """``paint`` a full-slice bool ``mask`` (score: one number, or per pixel at the slice's size), cropped
        to its bounding box; the box (r0, c0, r1, c1), or None for an empty mask (nothing painted)."""
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            return None
        r0, c0, r1, c1 = int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
        sc = score if np.ndim(score) == 0 else score[r0:r1, c0:c1]
        self.paint(z, oid, r0, c0, mask[r0:r1, c0:c1], sc)
        return r0, c0, r1, c1

    def erase(self, z: int, oid: int) -> None:
        """Remove what this run painted of ``oid`` on slice ``z``."""
        if oid not in self._scores.get(z, {}):
            return
        r0, c0, s = self._scores[z].pop(oid)
        sl = self.labels[z, r0 : r0 + s.shape[0], c0 : c0 + s.shape[1]]
        sl[sl == oid] = 0

    def box(self, z: int, oid: int) -> tuple[int, int, tuple[int, int]]:
        """(r0, c0, shape) of the crop this run painted ``oid`` in on slice ``z``."""
        r0, c0, s = self._scores[z][oid]
        return r0, c0, s.shape

    def crop(self, z: int, oid: int, r0: int, c0: int, shape) -> np.ndarray:
        """The pixels ``oid`` holds on slice ``z`` in a crop, bool."""
        return self.labels[z, r0 : r0 + shape[0], c0 : c0 + shape[1]] == oid

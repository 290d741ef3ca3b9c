"""Which pixels of a label slice a commit changes, and to what.

Pure numpy: the widget turns the plan into ``Labels.data_setitem`` calls (so
napari's undo works), a script can apply it to an array directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Write", "next_label_id", "plan_commit"]


@dataclass
class Write:
    """Set pixels (rows, cols) of the slice to ``value``."""

    rows: np.ndarray
    cols: np.ndarray
    value: int

    @property
    def size(self) -> int:
        return len(self.rows)


def next_label_id(labels) -> int:
    """The first free object id: one more than the largest label (1 on an empty array or one without
    positive labels). A lazy array (zarr on disk, dask) is read a block at a time, never whole."""
    from .lazy import largest

    top = largest(labels)
    return 1 if top is None else max(int(top) + 1, 1)


def plan_commit(
    existing: np.ndarray,
    masks: list[np.ndarray],
    ids: list[int],
    *,
    overwrite: bool = False,
    replace: int | None = None,
) -> list[Write]:
    """Plan writing ``masks`` into the 2D label slice ``existing``.

    masks: (H, W) bool each; ids: the label each mask becomes.
    overwrite: False keeps every pixel that already has a (different) label;
        True lets the masks replace them.
    replace: a label being refined: its pixels on this slice that the new
        mask no longer covers go back to 0 (background).
    Masks are written in order; a later mask never takes pixels an earlier one
    of the same commit claimed. Pixels that already have their target value
    are not written (so an unchanged commit is no history entry).
    """
    existing = np.asarray(existing)
    claimed = np.zeros(existing.shape, bool)
    writes: list[Write] = []
    if replace is not None:
        union = np.zeros(existing.shape, bool)
        for m in masks:
            union |= m
        gone = (existing == replace) & ~union
        if gone.any():
            r, c = np.nonzero(gone)
            writes.append(Write(r, c, 0))
    for m, v in zip(masks, ids):
        free = m & ~claimed
        if not overwrite:
            free &= (existing == 0) | (existing == v)
        claimed |= free
        free &= existing != v
        if free.any():
            r, c = np.nonzero(free)
            writes.append(Write(r, c, int(v)))
    return writes

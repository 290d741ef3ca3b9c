"""What a propagation generator yields, and how a caller runs one to its end.

``propagate_objects``, ``batch_prompts_through_z`` (``core.through_z``) and
``propagate_memory`` (``core.sam2_memory``) are generators of :class:`Progress`
records (STYLE: long work yields progress) whose return value is the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Progress:
    """One slice of work done.

    done/total: slices visited so far / to visit (a slice can be visited by
    the prompted, upward and downward stages). z: the slice. stage:
    "prompted", "up", "down" (or "batch" for ``batch_prompts_through_z``). labels_slice:
    (y, x) copy of that slice's labels as they stand. objects: ids decoded on
    it. ended: (object id, "up"/"down", reason, z) for objects that stopped:
    here (z is this record's), or, on the last record, where the stop rule's
    last look after the run cut them (``propagate_step.recheck``); and
    (object id, "prompted", reason, z) for a prompted slice whose prompt gave
    no pixels (its other prompted slices carry the object through it).
    labels: the whole (z, y, x) result, on the last record only.
    """

    done: int
    total: int
    z: int
    stage: str
    labels_slice: np.ndarray
    objects: tuple[int, ...] = ()
    ended: tuple = ()
    labels: np.ndarray | None = field(default=None, repr=False)


def run_to_end(gen, progress=None):
    """Run a propagation generator to its end, ``progress(record)`` for each record; its return value."""
    while True:
        try:
            p = next(gen)
        except StopIteration as fin:
            return fin.value
        if progress is not None:
            progress(p)

"""Undo the widget's own writes into its labels layer (commits, propagations), whatever layer is selected.

napari's Ctrl-Z belongs to the Labels layer: it works only with that layer
selected, and undoes whatever the layer's last edit was. The widget remembers
its own writes, each one history step of the layer (a sample of the pixels it
changed, with their new values), and undoes one with ``Labels.undo()`` only
while it is the layer's last step:

* an edit that is not the widget's (a ``paint`` or ``data`` event outside
  :meth:`UndoLog.writing`) ends what the widget may undo;
* a step undone with napari's own Ctrl-Z has its pixels back to their old
  values, so it is skipped (and counts again once redone).

So the newest remembered step whose pixels still hold its values is the
layer's last step. Pure numpy over a Labels layer: no Qt.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

SAMPLE = 4096  # pixels kept per step: undoing a step reverts every pixel it changed, so a sample tells


@dataclass
class Step:
    what: str  # "commit of label 3 on z=4", for the status line
    index: tuple  # nD fancy index of (a sample of) the pixels the step changed
    values: np.ndarray  # their values right after it

    def applied(self, labels) -> bool:
        return bool(np.array_equal(np.asarray(labels.data[self.index]), self.values))


class UndoLog:
    """The widget's steps in one labels layer's history, oldest first."""

    def __init__(self, keep: int = 20):
        self._keep = keep
        self._labels = None
        self._steps: list[Step] = []
        self._writing = False

    @contextmanager
    def writing(self):
        """Around a write of the widget into the labels: its paint event is not an edit of the user's."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    def edited(self) -> None:
        """A paint or data event of the labels layer: the user's own edit, unless the widget is writing."""
        if not self._writing:
            self.clear()

    def clear(self) -> None:
        self._labels, self._steps = None, []

    def remember(self, labels, what: str, index: tuple) -> None:
        """The widget's write into ``labels`` (one history step) changed the pixels at ``index`` (nD fancy index)."""
        n = len(index[0]) if index else 0
        if n == 0:
            return
        if n > SAMPLE:
            pick = np.linspace(0, n - 1, SAMPLE).astype(np.intp)
            index = tuple(np.asarray(i)[pick] for i in index)
        if labels is not self._labels:
            self._labels, self._steps = labels, []
        self._steps.append(Step(what, index, np.asarray(labels.data[index]).copy()))
        del self._steps[: -self._keep]

    def undo(self, labels) -> Step | None:
        """Undo the widget's last step in ``labels`` if it is the layer's last one; returns it (else None)."""
        if labels is None or labels is not self._labels:
            return None
        for step in reversed(self._steps):
            if step.applied(labels):
                labels.undo()
                return step
        return None

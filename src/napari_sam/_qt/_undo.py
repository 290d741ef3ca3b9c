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
layer's last step. A step that cleared the prompts it used (a commit, prompts
on every slice) keeps them (:class:`Cleared`): undoing the step puts them back
where they were. Pure numpy over napari layers: no Qt.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

SAMPLE = 4096  # pixels kept per step: undoing a step reverts every pixel it changed, so a sample tells


@dataclass
class Cleared:
    """Prompts a step removed from a points or boxes layer, to put back when the step is undone."""

    layer: object  # the napari Points or Shapes layer
    data: list  # each prompt's data coordinates: a point (ndim,), a shape (vertices, ndim)
    features: object  # their rows of ``layer.features`` (a point's polarity), a DataFrame
    shape_type: list  # each shape's type ("rectangle", ...); empty for points

    @classmethod
    def take(cls, layer, idx: list[int]) -> Cleared:
        """Remove the prompts ``idx`` of ``layer``; returns them."""
        kinds = [layer.shape_type[i] for i in idx] if layer.__class__.__name__ == "Shapes" else []
        taken = cls(layer, [np.array(layer.data[i], copy=True) for i in idx],
                    layer.features.iloc[idx].reset_index(drop=True), kinds)
        layer.remove(idx)
        return taken

    def put_back(self) -> int:
        """Add the prompts back to their layer, with their features; those it holds again already are not
        doubled (an undo after a redo). Returns how many were added."""
        layer = self.layer
        missing = [k for k, d in enumerate(self.data) if not any(np.array_equal(d, x) for x in layer.data)]
        if not missing:
            return 0
        start = len(layer.data)
        if self.shape_type:
            layer.add([self.data[k] for k in missing], shape_type=[self.shape_type[k] for k in missing])
        else:
            layer.add(np.stack([self.data[k] for k in missing]))
        feats = layer.features.copy()
        for col in self.features.columns.intersection(feats.columns):
            feats.iloc[start:, feats.columns.get_loc(col)] = self.features[col].iloc[missing].to_numpy()
        layer.features = feats
        if not self.shape_type:
            layer.refresh_colors()  # a point's colour follows its polarity
        return len(missing)


@dataclass
class Step:
    what: str  # "commit of label 3 on z=4", for the status line
    index: tuple  # nD fancy index of (a sample of) the pixels the step changed
    values: np.ndarray  # their values right after it
    prompts: tuple = ()  # the prompts it cleared (``Cleared``), put back when it is undone

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

    def remember(self, labels, what: str, index: tuple, prompts=()) -> None:
        """The widget's write into ``labels`` (one history step) changed the pixels at ``index`` (nD fancy index)
        and cleared ``prompts`` (``Cleared``, for its undo)."""
        n = len(index[0]) if index else 0
        if n == 0:
            return
        if n > SAMPLE:
            pick = np.linspace(0, n - 1, SAMPLE).astype(np.intp)
            index = tuple(np.asarray(i)[pick] for i in index)
        if labels is not self._labels:
            self._labels, self._steps = labels, []
        self._steps.append(Step(what, index, np.asarray(labels.data[index]).copy(), tuple(prompts)))
        del self._steps[: -self._keep]

    def undo(self, labels) -> Step | None:
        """Undo the widget's last step in ``labels`` if it is the layer's last one; returns it (else None).
        The caller puts back its prompts (``Step.prompts``) whose layers are still in the viewer."""
        if labels is None or labels is not self._labels:
            return None
        for step in reversed(self._steps):
            if step.applied(labels):
                labels.undo()
                return step
        return None

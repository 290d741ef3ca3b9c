"""Which candidate the preview shows for each object of the slice, and which object K steps.

SAM gives each object up to four candidates (``core.objects.Candidates``). The user chooses one per
object: K / Shift-K and the candidate list act on the *current* object only, which is the object of
the prompt most recently added or moved, or of the point or box selected in the prompt layers (the
last object by default). An object is known by its own prompts, as ``core.objects.group_prompts``
makes it (a box with the points inside it, or the clicks outside every box): while the prompts of
other objects change, it keeps its choice; when its own change, it starts again at its best candidate.

:class:`Choice` is plain Python (no Qt); :class:`Choosing` is the mixin of
:class:`~napari_sam._qt.widget.SamWidget` that wires it to the keys, the candidate list and the
selection of the prompt layers.
"""

from __future__ import annotations

import numpy as np

from ._plane import PlaneError, boxes_on_plane, points_on_plane


def object_keys(asked: tuple) -> list[tuple]:
    """One key per object: its own prompts (an item of ``_preview.prompt_key``), and which of the objects
    asking exactly the same it is (two identical boxes are two objects)."""
    seen: dict = {}
    keys = []
    for k in asked:
        seen[k] = seen.get(k, -1) + 1
        keys.append((k, seen[k]))
    return keys


class Choice:
    """The candidate chosen for each object (``ranks[i]``: a row of ``candidates[i]``) and the current
    object (the one K steps), carried over from ``previous`` (the choice of the slice's previous answer)
    by object key: an object found there keeps its candidate (the same SAM output), a new one starts at
    its best; the current object is the last new one, else the previous current one if still there, else
    the last."""

    def __init__(self, keys: list, candidates: list, previous: Choice | None = None):
        self.keys = list(keys)
        self._tokens = [np.asarray(c.tokens) for c in candidates]
        old = previous.chosen() if previous is not None else {}
        self.ranks = [_row_of(t, old.get(k)) for k, t in zip(self.keys, self._tokens)]
        new = [i for i, k in enumerate(self.keys) if k not in old]
        if new:
            self.current = new[-1]
        elif previous is not None and previous.current_key in self.keys:
            self.current = self.keys.index(previous.current_key)
        else:
            self.current = len(self.keys) - 1

    @property
    def current_key(self):
        return self.keys[self.current]

    @property
    def rank(self) -> int:
        """The current object's chosen row."""
        return self.ranks[self.current]

    def chosen(self) -> dict:
        """{object key: the SAM output (``Candidates.tokens``) of its chosen candidate}."""
        return {k: int(t[r]) for k, t, r in zip(self.keys, self._tokens, self.ranks)}

    def step(self, step: int) -> None:
        """The current object's next (``step`` 1) or previous (-1) candidate, round."""
        self.ranks[self.current] = (self.rank + step) % len(self._tokens[self.current])

    def choose(self, row: int) -> None:
        """The current object's candidate at ``row`` of its list."""
        self.ranks[self.current] = int(np.clip(row, 0, len(self._tokens[self.current]) - 1))


def selection_changed(layer):
    """The emitter of ``layer.selected_data``'s changes: psygnal's ``items_changed(added, removed)`` (napari
    0.5 and later), napari's own ``changed`` event (with ``.added``) before."""
    events = layer.selected_data.events
    signal = getattr(events, "items_changed", None)  # not ``or``: a signal without connections is falsy
    return events.changed if signal is None else signal


def _row_of(tokens: np.ndarray, token) -> int:
    """Where SAM output ``token`` is among an object's candidates now (0, the best, when it is not)."""
    if token is None:
        return 0
    rows = np.nonzero(tokens == token)[0]
    return int(rows[0]) if len(rows) else 0


class Choosing:
    """K / Shift-K, the candidate list and the prompt layers' selection of the SAM widget."""

    _focused = None  # the key of the object last made current (``_selection_follows``)

    def _on_candidate_row(self, row: int) -> None:
        res = self._result
        if res is not None and row >= 0 and row != res.choice.rank:
            res.choice.choose(row)
            self._show_result()

    def _on_next_candidate(self, step: int = 1) -> None:
        if self._result is not None:
            self._result.choice.step(step)
            self._show_result()

    def _on_previous_candidate(self) -> None:
        self._on_next_candidate(-1)

    def _on_points_selected(self, added=(), removed=()) -> None:
        self._focus_selected("points", getattr(added, "added", added))

    def _on_boxes_selected(self, added=(), removed=()) -> None:
        self._focus_selected("boxes", getattr(added, "added", added))

    def _focus_selected(self, role: str, added) -> None:
        """A point or box selected in a prompt layer: its object becomes the one K steps. A selection
        emptied, or of a prompt SAM has not answered yet (a new one: it becomes current when SAM has
        answered it), changes nothing."""
        res, layer = self._result, getattr(self, "_" + role)
        if res is None or len(res.objects) < 2 or layer is None or not added or self._image is None:
            return
        on_plane, holding = (points_on_plane, _object_with_point) if role == "points" else \
            (boxes_on_plane, _object_with_box)
        try:
            idx, where, _ = on_plane(layer, self._image, res.plane)
        except PlaneError:
            return
        row = {int(i): k for k, i in enumerate(idx)}  # layer index -> row of ``where``
        match = [holding(res.objects, where[row[i]]) for i in sorted(added) if i in row]
        match = [i for i in match if i is not None]
        if match and match[-1] != res.choice.current:
            res.choice.current = match[-1]
            self._show_result()

    def _selection_follows(self) -> None:
        """Once another object is current, the prompt layer(s) the user is not in (not the active layer)
        forget their selection: napari selects every point it adds, and a click on a prompt already
        selected changes no selection, so selecting that point later would not make its object current.
        (A layer's selection only shows, and only matters, while it is the active layer.)"""
        res = self._result
        key = None if res is None or len(res.objects) < 2 else res.choice.current_key
        if key is None or key == self._focused:
            return
        self._focused = key
        active = self._viewer.layers.selection.active
        for layer in (self._points, self._boxes):
            if layer is not None and layer != active and len(layer.selected_data):
                layer.selected_data = set()


def _object_with_point(objects: list, rc: np.ndarray) -> int | None:
    """The object whose points hold ``rc`` (row, col)."""
    rc = np.asarray(rc, np.float32)
    for i, o in enumerate(objects):
        if len(o.points) and np.any(np.all(np.isclose(o.points, rc, atol=1e-3), axis=1)):
            return i
    return None


def _object_with_box(objects: list, box: np.ndarray) -> int | None:
    """The object whose box is ``box`` (row0, col0, row1, col1)."""
    box = np.asarray(box, np.float32)
    for i, o in enumerate(objects):
        if o.box is not None and np.allclose(o.box, box, atol=1e-3):
            return i
    return None

"""A candidate per object: with several objects on a slice, K / Shift-K and the candidate list step one
object (the current one) and C commits each object's chosen candidate.

Until session 14, K stepped one rank for every object together: with three objects of which one showed
the wrong candidate, K made the other two worse, and the docs said to prompt such an object alone.
Objects are prompted as the user does (boxes in the Shapes layer, a click outside them in the Points
layer) and selected with the layers' own mouse handlers (select mode); assertions are on the preview's
pixels, the candidate list, the status line and the labels. Uses the embedded model.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.synthetic import interior_point

from .test_widget import _objects_by_size, _preview, _press, _wait_preview, stack
from .test_widget_prompts import Z, _bbox, _drag, _settled, sam

pytestmark = pytest.mark.gui
__all__ = ["sam", "stack"]  # test_widget_prompts' viewer and widget on slice Z of test_widget's stack


def _add_box(boxes, mask) -> None:
    r0, c0, r1, c1 = _bbox(mask)
    boxes.add_rectangles(np.array([[Z, r0, c0], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0]], float))


def _select(viewer, layer, at) -> None:
    """Click the prompt at ``at`` (row, col) in the layer's select mode, as the user selects it (the layer
    made the active one first, as a click in the layer list does)."""
    viewer.layers.selection.active = layer
    layer.mode = "select"
    _drag(layer, (Z, *at))


def _lines(widget) -> list[str]:
    ui = widget._ui.candidates
    return [ui.item(i).text() for i in range(ui.count())]


def _ambiguous(widget) -> None:
    """Every object of the preview has 3 candidates that differ (the precondition of these tests)."""
    for i, c in enumerate(widget._result.candidates):
        assert len(c) == 3 and len({m.tobytes() for m in c.masks}) == 3, f"object {i + 1}: {len(c)} candidates"


def _three_objects(viewer, widget, qtbot, stack):
    """Boxes around the two largest objects of slice Z, a click on the third: (boxes, points, [A, B, C])."""
    lab = stack.labels[Z]
    masks = [lab == o for o in _objects_by_size(lab)[:3]]
    boxes, points = viewer.layers["nuclei SAM boxes"], viewer.layers["nuclei SAM points"]
    for n, m in enumerate(masks[:2], start=1):
        _add_box(boxes, m)
        _wait_preview(qtbot, viewer, widget, n_objects=n)
    points.add([[Z, *interior_point(masks[2])]])
    _wait_preview(qtbot, viewer, widget, n_objects=3)
    _ambiguous(widget)
    return boxes, points, masks


def _step(viewer, key: str, obj: int) -> None:
    """Press ``key``: only object ``obj``'s pixels of the preview change, every other object's stay."""
    before = _preview(viewer).copy()
    _press(viewer, key)
    after = _preview(viewer)
    assert not np.array_equal(before == obj, after == obj), f"{key} changed nothing of object {obj}"
    for other in {1, 2, 3} - {obj}:
        np.testing.assert_array_equal(before == other, after == other, f"{key} changed object {other}")


def test_k_steps_the_current_object_only_and_selecting_a_prompt_makes_its_object_current(sam, qtbot, stack):
    viewer, widget = sam
    boxes, points, (A, B, C) = _three_objects(viewer, widget, qtbot, stack)
    status = widget._ui.status.text()
    assert "3 objects. K steps object 3" in status and "select its box or point" in status, status
    assert _lines(widget)[0].startswith("object 3:  1.  predicted IoU"), _lines(widget)
    preview = viewer.layers["SAM preview"]
    assert preview.metadata["napari_sam_current"] == 3, "the current object is orange in the preview"

    _step(viewer, "K", 3)  # the last prompt added (the click) is the current object
    assert widget._ui.candidates.currentRow() == 1 and "candidate 2/3" in widget._ui.status.text()

    _select(viewer, boxes, interior_point(A))  # the first box selected: its object is the one K steps
    status = widget._ui.status.text()
    assert "K steps object 1" in status and "candidate 1/3" in status, status
    assert _lines(widget)[0].startswith("object 1:") and widget._ui.candidates.currentRow() == 0
    assert preview.metadata["napari_sam_current"] == 1
    _step(viewer, "K", 1)
    _step(viewer, "K", 1)
    assert widget._ui.candidates.currentRow() == 2

    _select(viewer, points, points.data[0][1:])  # the click selected: object 3 again, with the candidate it shows
    assert "K steps object 3" in widget._ui.status.text() and widget._ui.candidates.currentRow() == 1
    _step(viewer, "Shift-K", 3)
    assert widget._ui.candidates.currentRow() == 0

    lines = widget._ui.candidates  # a click on the current object's line chooses its candidate
    before = _preview(viewer).copy()
    lines.setCurrentRow(2)
    assert "candidate 3/3" in widget._ui.status.text()
    np.testing.assert_array_equal(before == 1, _preview(viewer) == 1)
    assert not np.array_equal(before == 3, _preview(viewer) == 3)


def test_objects_keep_their_choice_while_others_change_and_c_commits_each_choice(sam, qtbot, stack):
    viewer, widget = sam
    lab = stack.labels[Z]
    objs = _objects_by_size(lab)
    keep = np.zeros(stack.labels.shape, np.uint16)
    keep[Z][lab == objs[5]] = 7  # the user's objects, on this slice and the next
    keep[Z + 1][lab == objs[0]] = 3
    curated = viewer.add_labels(keep.copy(), name="curated")
    i = widget._ui.labels.findText("curated")
    widget._ui.labels.setCurrentIndex(i)
    widget._ui.labels.activated.emit(i)
    boxes, points, (A, B, C) = _three_objects(viewer, widget, qtbot, stack)

    _press(viewer, "K")  # object 3 (the click): its candidate 2
    _select(viewer, boxes, interior_point(A))
    _press(viewer, "K")
    _press(viewer, "K")  # object 1: its candidate 3
    chosen = _preview(viewer).copy()

    _add_box(boxes, lab == objs[3])  # a fourth object: the others keep their candidates
    status = _settled(qtbot, widget)
    shown = _wait_preview(qtbot, viewer, widget, n_objects=4)
    assert "K steps object 3" in status, "the new box (before the click in the objects' order) is current"
    assert widget._ui.candidates.currentRow() == 0, "a new object starts at its best candidate"
    for obj, new in ((1, 1), (2, 2), (3, 4)):  # the click's object comes after every box
        np.testing.assert_array_equal(chosen == obj, shown == new, f"object {obj} lost its candidate")

    points.add([[Z, *interior_point(A)]])  # a second prompt for object 1: it starts again at its best
    _settled(qtbot, widget)
    assert "K steps object 1" in widget._ui.status.text() and widget._ui.candidates.currentRow() == 0
    assert widget._result.choice.ranks[1:] == [0, 0, 1], widget._result.choice.ranks
    _press(viewer, "K")
    shown = _preview(viewer).copy()
    assert set(np.unique(shown)) == {0, 1, 2, 3, 4}

    _press(viewer, "C")
    after = np.asarray(curated.data)
    assert "Committed label 8, 9, 10, 11 on z=4" in widget._ui.status.text(), widget._ui.status.text()
    for obj in (1, 2, 3, 4):  # exactly the candidate shown of each object, as new ids in the objects' order
        np.testing.assert_array_equal(after[Z] == 7 + obj, (shown == obj) & (keep[Z] == 0), f"object {obj}")
    untouched = ~np.isin(after, [8, 9, 10, 11])
    np.testing.assert_array_equal(after[untouched], keep[untouched], "every other label untouched")


def test_one_object_is_as_before(sam, qtbot, stack):
    """One object: no object number in the list or the status line, no orange, K and C as always."""
    viewer, widget = sam
    lab = stack.labels[Z]
    viewer.layers["nuclei SAM points"].add([[Z, *interior_point(lab == _objects_by_size(lab)[1])]])
    first = _wait_preview(qtbot, viewer, widget).copy()
    _ambiguous(widget)
    assert _lines(widget)[0].startswith("1.  predicted IoU") and "object 1" not in widget._ui.status.text()
    assert viewer.layers["SAM preview"].metadata.get("napari_sam_current") is None
    _press(viewer, "K")
    second = _preview(viewer).copy()
    assert "1 object, candidate 2/3" in widget._ui.status.text() and not np.array_equal(first, second)
    _press(viewer, "C")
    np.testing.assert_array_equal(viewer.layers["nuclei SAM labels"].data[Z], second)


def test_choice_follows_objects_by_their_own_prompts():
    """``Choice`` without a viewer: kept by object key (the same SAM output), not by position in the list."""
    from napari_sam._qt._choice import Choice, object_keys
    from napari_sam.core.objects import Candidates

    def cands(tokens):
        n = len(tokens)
        return Candidates(np.zeros((n, 2, 2), bool), np.ones(n, np.float32), np.array(tokens))

    first = Choice(object_keys(("a", "b")), [cands([1, 2, 3]), cands([2, 1, 3])])
    assert first.current == 1 and first.ranks == [0, 0]
    first.step(-1)  # b: its last candidate (SAM output 3)
    first.current = 0
    first.choose(1)  # a: SAM output 2
    again = Choice(object_keys(("c", "b", "a")), [cands([1, 2, 3]), cands([3, 2, 1]), cands([2, 1, 3])], first)
    assert again.ranks == [0, 0, 0] and again.current == 0, "kept by SAM output; the new object is current"
    same = Choice(object_keys(("b", "a", "a")), [cands([2, 1, 3]), cands([1, 2, 3]), cands([1, 2, 3])], first)
    assert same.ranks == [2, 1, 0] and same.current == 2, "a second identical box is another object"
    before = Choice(object_keys(("a", "b", "c")), [cands([1])] * 3)
    before.current = 1
    assert Choice(object_keys(("b", "c")), [cands([1])] * 2, before).current == 0, "still there: still current"
    before.current = 0
    assert Choice(object_keys(("b", "c")), [cands([1])] * 2, before).current == 1, "removed: the last is current"

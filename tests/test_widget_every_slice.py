"""Prompts on every slice, in a real napari viewer: this slice's points and boxes applied to every slice.

The prompts are added as napari adds them when the user clicks; the assertions
are on the Labels data, the layer list, the prompt layers, undo/redo and the
status text. Uses the embedded model (skipped without it).
"""

from __future__ import annotations

import numpy as np
import pytest

from ._widget_stack import (  # the fixtures are imported to be used
    MIN_IOU,
    OBJ,
    OTHERS,
    Z,
    _iou,
    _run,
    _slowed,
    open_sam,  # the fixture ``sam`` uses
    sam,
    stack,
)

pytestmark = pytest.mark.gui


def test_prompts_on_every_slice_are_new_objects_where_they_are_and_one_undo_step(sam, qtbot, stack):
    """A click and a box on slice Z, 'Prompts on every slice': two new labels through the stack, left out of
    the slices their objects are not on, the same as the API; other labels kept; one Undo."""
    from napari_sam._qt._commit import META
    from napari_sam.core.propagate import propagate_labels
    from napari_sam.synthetic import interior_point

    viewer, widget, labels = sam
    gt = stack.labels
    labels.data[gt == 9] = 9  # the user's own object, through its slices
    before = np.array(labels.data, copy=True)
    pt = interior_point(gt[Z] == OBJ)
    viewer.layers["nuclei SAM points"].add([[Z, *pt]])
    rr, cc = np.nonzero(gt[Z] == OTHERS[1])
    r0, c0, r1, c1 = rr.min() - 2, cc.min() - 2, rr.max() + 2, cc.max() + 2
    viewer.layers["nuclei SAM boxes"].add_rectangles(np.array([[Z, r0, c0], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0]], float))

    status = _run(qtbot, widget, widget._ui.every_slice)
    after = np.array(labels.data, copy=True)
    qtbot.wait(widget._timer.interval() + 300)  # the cleared prompts re-run the preview: the summary stays
    assert widget._ui.status.text().startswith(status), widget._ui.status.text()

    assert "Prompts on every slice" in status and "label 10" in status and "label 11" in status, status
    changed = after != before
    assert (before[changed] == 0).all() and set(np.unique(after[changed])) == {10, 11}
    np.testing.assert_array_equal(after[before != 0], before[before != 0])
    gui = widget._session.predictor
    # boxes are the first objects (core.objects.group_prompts), the click outside them the next one
    api = propagate_labels(stack.image, {10: {Z: {"box": [r0, c0, r1, c1]}}, 11: {Z: {"points": pt[None]}}},
                           model=widget.model, through_z=True, labels=before, input_scale=gui.input_scale)
    np.testing.assert_array_equal(after[before == 0], api[before == 0])
    for mine, g in ((10, OTHERS[1]), (11, OBJ)):
        got_z, true_z = np.flatnonzero((after == mine).any((1, 2))), np.flatnonzero((gt == g).any((1, 2)))
        assert got_z[0] >= true_z[0] - 1 and got_z[-1] <= true_z[-1] + 1, (mine, got_z, true_z)
        assert _iou(after == mine, gt == g) >= MIN_IOU, mine
    assert len(viewer.layers["nuclei SAM points"].data) == 0 and len(viewer.layers["nuclei SAM boxes"].data) == 0
    recs = labels.metadata[META]["objects"]
    assert [(r["label"], r["every_slice"], r["box"] is None) for r in recs] == [(10, True, False), (11, True, True)]

    widget._ui.undo.click()
    np.testing.assert_array_equal(labels.data, before)
    assert "Undid the prompts on every slice of label 10, 11" in widget._ui.status.text(), widget._ui.status.text()


def test_during_a_run_c_is_refused_and_prompts_added_meanwhile_stay(sam, qtbot, stack, monkeypatch):
    """Prompts on every slice has taken its ids when it starts: C during the run must not commit (it could
    reuse them), and the run's end removes only the prompts it used, not a click added meanwhile."""
    from napari_sam._qt import _on_every_slice
    from napari_sam.synthetic import interior_point

    viewer, widget, labels = sam
    monkeypatch.setattr(_on_every_slice, "run_every_slice", _slowed(_on_every_slice.run_every_slice))
    points = viewer.layers["nuclei SAM points"]
    points.add([[Z, *interior_point(stack.labels[Z] == OBJ)]])
    widget._ui.every_slice.click()
    qtbot.waitUntil(lambda: widget._ui.progress.value() >= 1, timeout=30000)
    nxt = [Z, *interior_point(stack.labels[Z] == OTHERS[0])]
    points.add([nxt])
    widget._on_commit()  # what C does
    assert "still running" in widget._ui.status.text(), widget._ui.status.text()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=60000)

    out = np.asarray(labels.data)
    assert set(np.unique(out)) == {0, 1}, "only the run's object was written"
    assert _iou(out == 1, stack.labels == OBJ) >= MIN_IOU
    np.testing.assert_array_equal(points.data, [nxt])


# ------------------------------------------------------------ bug hunt (session 12) --
def test_a_refused_run_leaves_no_new_labels_layer(sam, qtbot, stack):
    """With no labels layer yet, the run creates one; refused ('selected label' for two objects), it left
    that empty layer behind."""
    from napari_sam.synthetic import interior_point

    viewer, widget, labels = sam
    viewer.layers.remove(labels)  # no labels layer: the run would make 'nuclei SAM labels'
    assert widget._labels is None
    widget._ui.selected_id.setChecked(True)
    points, boxes = viewer.layers["nuclei SAM points"], viewer.layers["nuclei SAM boxes"]
    points.add([[Z, *interior_point(stack.labels[Z] == OBJ)]])
    rr, cc = np.nonzero(stack.labels[Z] == OTHERS[1])
    r0, c0, r1, c1 = rr.min() - 2, cc.min() - 2, rr.max() + 2, cc.max() + 2
    boxes.add_rectangles(np.array([[Z, r0, c0], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0]], float))
    qtbot.waitUntil(lambda: not widget.busy and "candidate" in widget._ui.status.text(), timeout=30000)
    layers = [ly.name for ly in viewer.layers]

    widget._ui.every_slice.click()
    assert not widget.propagating
    assert "'selected label' puts every object into label 1, but this slice has prompts for 2 objects" in \
        widget._ui.status.text(), widget._ui.status.text()
    assert [ly.name for ly in viewer.layers] == layers, "no labels layer was added"
    assert widget._labels is None and widget._ui.labels.currentData() is None
    assert len(points.data) == 1 and len(boxes.data) == 1, "the prompts stay"


@pytest.mark.parametrize("action", ["commit", "prompts on every slice"])
def test_undo_puts_back_the_prompts_the_step_cleared_and_redo_leaves_them(sam, qtbot, stack, action):
    """Undo of Prompts on every slice left the clicks and boxes it had cleared gone; Undo (of it, as of a
    commit) puts them back as they were: the same points, their polarity, the same boxes. napari's redo
    writes the labels again and leaves the prompts; Undo once more does not double them."""
    from napari_sam.synthetic import interior_point

    viewer, widget, labels = sam
    gt = stack.labels
    points, boxes = viewer.layers["nuclei SAM points"], viewer.layers["nuclei SAM boxes"]
    points.add([[Z + 2, 10, 10]])  # another slice's prompt: neither cleared nor doubled
    points.add([[Z, *interior_point(gt[Z] == OBJ)]])
    assert gt[Z, 2, 2] == 0
    widget._ui.negative.setChecked(True)
    points.add([[Z, 2, 2]])  # a negative click, on the background
    widget._ui.positive.setChecked(True)
    rr, cc = np.nonzero(gt[Z] == OTHERS[1])
    r0, c0, r1, c1 = rr.min() - 2, cc.min() - 2, rr.max() + 2, cc.max() + 2
    boxes.add_rectangles(np.array([[Z, r0, c0], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0]], float))
    prompts = (points.data.copy(), points.features["positive"].tolist(), [b.copy() for b in boxes.data],
               list(boxes.shape_type))
    assert prompts[1] == [True, True, False]
    before = np.array(labels.data, copy=True)

    if action == "commit":
        qtbot.waitUntil(lambda: not widget.busy and "candidate" in widget._ui.status.text(), timeout=30000)
        widget._on_commit()  # what C does
        assert "Committed label 1, 2" in widget._ui.status.text(), widget._ui.status.text()
    else:
        assert "Prompts on every slice" in _run(qtbot, widget, widget._ui.every_slice)
    after = np.array(labels.data, copy=True)
    assert set(np.unique(after)) == {0, 1, 2}
    np.testing.assert_array_equal(points.data, [[Z + 2, 10, 10]])
    assert len(boxes.data) == 0

    def assert_prompts_as_before():
        np.testing.assert_array_equal(points.data, prompts[0])
        assert points.features["positive"].tolist() == prompts[1], "each point keeps its polarity"
        assert len(boxes.data) == 1 and list(boxes.shape_type) == prompts[3]
        np.testing.assert_array_equal(boxes.data[0], prompts[2][0])

    widget._ui.undo.click()
    np.testing.assert_array_equal(labels.data, before)
    assert_prompts_as_before()
    assert "Its 3 prompts are back." in widget._ui.status.text(), widget._ui.status.text()

    labels.redo()  # napari's Shift-Ctrl-Z on the labels layer
    np.testing.assert_array_equal(labels.data, after)
    assert_prompts_as_before()
    widget._ui.undo.click()
    np.testing.assert_array_equal(labels.data, before)
    assert_prompts_as_before()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)

"""Find all objects on this slice, in a real napari viewer: SAM's automatic masks committed as new labels on
the current slice only, outside the labels already there, as one undo step; Cancel writes nothing. Uses the
embedded model (skipped without it); the fixtures are those of test_widget_propagate.py."""

from __future__ import annotations

import numpy as np
import pytest

from ._widget_stack import OBJ, Z, _commit, _iou, open_sam, sam, stack  # noqa: F401 (fixtures)

pytestmark = pytest.mark.gui


def _find(qtbot, widget) -> str:
    widget._ui.find.click()
    assert widget._finding is not None and not widget._ui.find.isEnabled()
    qtbot.waitUntil(lambda: widget._finding is None, timeout=60000)
    assert widget._ui.find.isEnabled()
    return widget._ui.status.text()


def test_every_object_of_the_slice_becomes_a_new_label_and_one_undo_removes_them(sam, qtbot, stack):
    viewer, widget, labels = sam
    gt = stack.labels
    _commit(labels, gt[Z] == OBJ, 5)  # the user's own object, committed before
    labels.data[Z + 2][gt[Z + 2] > 0] = 9  # and labels painted on another slice
    before = np.array(labels.data, copy=True)

    status = _find(qtbot, widget)
    after = np.array(labels.data, copy=True)
    new = np.unique(after[Z][after[Z] != before[Z]])
    assert status.startswith(f"Found {len(new)} objects on z={Z}: labels 10-{9 + len(new)}"), status
    assert list(new) == list(range(10, 10 + len(new)))  # new ids above the largest there, in order
    changed = after != before
    assert not changed[np.arange(len(after)) != Z].any()  # this slice only
    assert (after[before != 0] == before[before != 0]).all()  # existing labels untouched
    # the other true objects of >= 80 px on the slice are found (IoU >= 0.5): measured 7 of 8 (one touching
    # pair drawn as one, 0.38), median 0.83
    ids, counts = np.unique(gt[Z][gt[Z] > 0], return_counts=True)
    ious = [max(_iou(after[Z] == k, gt[Z] == i) for k in new) for i in ids[counts >= 80] if i != OBJ]
    assert len(ious) == 8 and sum(v >= 0.5 for v in ious) >= 7 and np.median(ious) >= 0.8, ious
    recs = [r for r in labels.metadata["napari_sam"]["objects"] if r.get("found")]
    assert [r["label"] for r in recs] == list(new) and all(r["predicted_iou"] >= 0.5 for r in recs)

    widget._on_undo_commit()
    assert np.array_equal(np.asarray(labels.data), before)
    assert "Undid" in widget._ui.status.text()


def test_cancel_writes_nothing_and_a_2d_image_works(open_sam, qtbot, stack):
    import napari_sam.core.automatic as auto

    viewer, widget, labels = open_sam(stack.image, (Z, 0, 0))
    original = auto.finding  # the worker takes it from core.automatic when it starts: slowed down there

    def slowed(*args, **kwargs):  # 0.3 s after each batch of seeds: time to press Cancel
        import time

        gen = original(*args, **kwargs)
        while True:
            try:
                p = next(gen)
            except StopIteration as fin:
                return fin.value
            time.sleep(0.3)
            yield p

    auto.finding = slowed
    try:
        widget._ui.find.click()
        qtbot.waitUntil(lambda: widget._ui.progress.maximum() > 0, timeout=30000)  # seeds are being decoded
        widget._on_cancel()
        qtbot.waitUntil(lambda: widget._finding is None, timeout=30000)
    finally:
        auto.finding = original
    assert not np.asarray(labels.data).any()
    assert widget._ui.status.text() == "Finding objects cancelled: the labels are unchanged."

    _, widget2d, labels2d = open_sam(stack.image[Z], (0, 0))
    status = _find(qtbot, widget2d)
    n = len(np.unique(labels2d.data)) - 1
    assert status.startswith(f"Found {n} objects on ") and n >= 5, status


def test_the_score_control_keeps_only_surer_objects(open_sam, qtbot, stack):
    _, widget, labels = open_sam(stack.image[Z], (0, 0))
    widget._ui.find_score.setValue(0.9)
    _find(qtbot, widget)
    sure = [r for r in labels.metadata["napari_sam"]["objects"] if r.get("found")]
    assert sure and all(r["predicted_iou"] >= 0.9 for r in sure)
    widget._on_undo_commit()
    assert not np.asarray(labels.data).any()
    widget._ui.find_score.setValue(0.5)
    _find(qtbot, widget)
    n = len(np.unique(labels.data)) - 1
    assert n > len(sure), (n, len(sure))  # the default keeps more

"""Propagate object from several prompted slices, in a real napari viewer: an object clicked and
committed on one slice, more of the same label committed on another (the "selected label" commit
mode), then Propagate object. The gap between the two slices must be filled and the object extended
beyond them, with its id, every other label unchanged and one undo step. Uses the embedded model.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.synthetic import interior_point, make_stack

from ._widget_stack import _iou, _run, open_sam  # the fixture is imported to be used

pytestmark = pytest.mark.gui

LO, HI, OBJ, OTHER = 5, 15, 6, 13  # ground-truth object 6 of this stack lies on z=4-17, object 13 on 4-16


@pytest.fixture(scope="module")
def stack():
    return make_stack((20, 128, 128), seed=960003, kind="nuclei", radius_range=(10, 22), density=0.3)


def _click_and_commit(qtbot, viewer, widget, z, point) -> None:
    viewer.dims.current_step = (z, 0, 0)
    viewer.layers["nuclei SAM points"].add([[z, *point]])
    qtbot.waitUntil(lambda: not widget.busy and widget._result is not None, timeout=30000)
    viewer.window._qt_viewer._key_map_handler.press_key("C")
    qtbot.waitUntil(lambda: "Committed" in widget._ui.status.text(), timeout=30000)


def test_an_object_committed_on_two_slices_fills_the_gap_keeps_its_id_and_undoes(open_sam, qtbot, stack):
    viewer, widget, labels = open_sam(stack.image, (LO, 0, 0))
    gt = stack.labels
    # another object of the user's, on several slices, and a block of label 3 in the gap
    other = gt == OTHER
    labels.data[other] = 9
    labels.data[10, :3, :] = 3
    widget._ui.selected_id.setChecked(True)
    labels.selected_label = 5
    _click_and_commit(qtbot, viewer, widget, LO, interior_point(gt[LO] == OBJ))
    _click_and_commit(qtbot, viewer, widget, HI, interior_point(gt[HI] == OBJ))
    assert set(np.unique(labels.data)) == {0, 3, 5, 9}
    assert np.flatnonzero((labels.data == 5).any((1, 2))).tolist() == [LO, HI]
    before = np.array(labels.data, copy=True)
    viewer.dims.current_step = (LO, 0, 0)

    status = _run(qtbot, widget, widget._ui.propagate_object)
    after = np.array(labels.data, copy=True)

    assert "Propagated" in status and "label 5" in status, status
    changed = after != before
    assert (before[changed] == 0).all() and set(np.unique(after[changed])) == {5}
    np.testing.assert_array_equal(after[before != 0], before[before != 0])  # every other label, bit for bit
    reached = np.flatnonzero((after == 5).any((1, 2)))
    assert set(range(LO, HI + 1)) <= set(reached), f"the gap is filled: {reached}"
    assert reached[-1] > HI, f"and the object goes on beyond (z=4, its last true slice below, is faint): {reached}"
    ious = {z: round(_iou(after[z] == 5, gt[z] == OBJ), 2) for z in range(gt.shape[0])}
    # measured: 0.70 on z=5, 0.83-0.92 on z=6-15, 0.73 on z=16; 3D 0.86 (z=4 and 17, its faint ends, not reached)
    assert min(ious[z] for z in range(LO + 1, HI)) >= 0.5, ious
    assert _iou(after == 5, gt == OBJ) >= 0.7

    widget._ui.undo.click()
    np.testing.assert_array_equal(labels.data, before)

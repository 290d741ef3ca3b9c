"""The z tools' controls in a real napari viewer: the slices set, Cancel, refusals, stops, Undo.

Objects are committed by writing their ground-truth mask on the middle slice
of a synthetic stack into the labels layer (as a commit would); the assertions
are on the Labels data (unchanged when a run is refused, cancelled or
stopped), its history and the status text. Uses the embedded model (skipped
without it).
"""

from __future__ import annotations

import numpy as np
import pytest

from ._widget_stack import (  # the fixtures are imported to be used
    OBJ,
    OTHERS,
    Z,
    _commit,
    _no_workers,
    _run,
    _slowed,
    open_sam,  # the fixture ``sam`` uses
    sam,
    stack,
)

pytestmark = pytest.mark.gui


def test_cancel_midway_leaves_the_labels_unchanged(sam, qtbot, stack, monkeypatch):
    from napari_sam._qt import _on_propagate

    viewer, widget, labels = sam
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    before = np.array(labels.data, copy=True)
    undo_depth = len(labels._undo_history)
    records = []
    # the real run, slowed down so that Cancel lands in the middle of it
    monkeypatch.setattr(_on_propagate, "run_propagation", _slowed(_on_propagate.run_propagation, records))
    widget._ui.propagate_object.click()
    qtbot.waitUntil(lambda: widget._ui.progress.value() >= 2, timeout=30000)
    assert not widget._ui.cancel.isHidden() and not widget._ui.progress.isHidden()
    widget._ui.cancel.click()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30000)

    assert "cancelled" in widget._ui.status.text(), widget._ui.status.text()
    assert 2 <= len(records) < records[0].total, "the worker stopped midway"
    np.testing.assert_array_equal(labels.data, before)
    assert len(labels._undo_history) == undo_depth, "nothing entered the history"
    assert widget._ui.propagate_object.isEnabled()


def test_the_slices_set_bound_propagation_and_prompts_on_every_slice(sam, qtbot, stack):
    from napari_sam.synthetic import interior_point

    viewer, widget, labels = sam
    gt = stack.labels
    _commit(labels, gt[Z] == OBJ, 5)
    labels.selected_label = 5
    widget._ui.z_from.setValue(Z - 1)
    widget._ui.z_to.setValue(Z + 1)
    assert (gt == OBJ).any((1, 2))[[Z - 2, Z + 2]].all(), "the object goes on beyond the slices set"
    status = _run(qtbot, widget, widget._ui.propagate_object)
    assert "Propagated" in status and f"reached the last slice set (z={Z + 1})" in status, status
    assert np.flatnonzero((np.asarray(labels.data) == 5).any((1, 2))).tolist() == [Z - 1, Z, Z + 1]

    viewer.layers["nuclei SAM points"].add([[Z, *interior_point(gt[Z] == OTHERS[0])]])
    status = _run(qtbot, widget, widget._ui.every_slice)
    assert "Prompts on every slice" in status, status
    assert np.flatnonzero((np.asarray(labels.data) == 6).any((1, 2))).tolist() == [Z - 1, Z, Z + 1]

    widget._ui.z_from.setValue(Z + 1)
    before = np.array(labels.data, copy=True)
    widget._ui.propagate_object.click()
    assert not widget.propagating and f"z={Z} is outside the slices set" in widget._ui.status.text()
    widget._ui.z_to.setValue(-1)  # 'last'
    assert widget._ui.z_to.text() == "last"
    widget._ui.z_from.setValue(99)
    widget._ui.every_slice.click()
    assert not widget.propagating and "hold none of this stack's z=0–11" in widget._ui.status.text()
    np.testing.assert_array_equal(labels.data, before)


def test_clear_messages_instead_of_crashes(sam, qtbot, stack):
    viewer, widget, labels = sam
    status = widget._ui.status
    widget._ui.propagate_object.click()  # nothing committed yet; the selected label is not on this slice
    assert not widget.propagating and f"is not on z={Z}" in status.text(), status.text()
    widget._ui.propagate_all.click()
    assert not widget.propagating and "no objects on" in status.text(), status.text()
    labels.selected_label = 0
    widget._ui.propagate_object.click()
    assert "background" in status.text()
    widget._ui.every_slice.click()
    assert not widget.propagating and f"no prompts on z={Z}" in status.text(), status.text()

    flat = viewer.add_image(stack.image[Z], name="flat")
    i = widget._ui.image.findText("flat")
    widget._ui.image.setCurrentIndex(i)
    widget._ui.image.activated.emit(i)
    assert widget._image is flat
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    widget._ui.propagate_all.click()
    assert not widget.propagating and "2D" in status.text(), status.text()
    widget._ui.every_slice.click()
    assert not widget.propagating and "needs a z-stack" in status.text(), status.text()


# ------------------------------------------------------------ bug hunt (session 11) --
def test_a_one_slice_range_is_refused_and_a_range_reports_its_own_edges(sam, qtbot, stack):
    """Slices 'Z to Z' used to run the whole propagation for nothing ("added no pixels"), and an object
    already committed outside the slices set hid where the run reached the set's edge."""
    viewer, widget, labels = sam
    gt = stack.labels
    _commit(labels, gt[Z] == OBJ, 5)
    _commit(labels, gt[Z + 3] == OBJ, 5, at=(Z + 3,))  # the same object, committed beyond the slices set
    labels.selected_label = 5
    before = np.array(labels.data, copy=True)
    widget._ui.z_from.setValue(Z)
    widget._ui.z_to.setValue(Z)
    for button in (widget._ui.propagate_object, widget._ui.propagate_all):
        button.click()
        assert not widget.propagating
        assert f"(z={Z}–{Z}) hold only z={Z}: nothing to carry the objects to; widen them" in \
            widget._ui.status.text(), widget._ui.status.text()
    np.testing.assert_array_equal(labels.data, before)

    widget._ui.z_from.setValue(Z - 1)
    widget._ui.z_to.setValue(Z + 1)
    status = _run(qtbot, widget, widget._ui.propagate_object)
    after = np.asarray(labels.data)
    assert f"up: reached the last slice set (z={Z + 1})" in status, status
    assert f"down: reached the first slice set (z={Z - 1})" in status, status
    assert np.flatnonzero((after == 5).any((1, 2))).tolist() == [Z - 1, Z, Z + 1, Z + 3]
    np.testing.assert_array_equal(after[before != 0], before[before != 0])
    np.testing.assert_array_equal(after[[Z - 2, Z + 2, Z + 3]], before[[Z - 2, Z + 2, Z + 3]])


@pytest.mark.parametrize("change", ["image", "image data", "labels removed"])
def test_a_run_whose_image_or_labels_go_away_stops_at_once(sam, qtbot, stack, monkeypatch, change):
    """Choosing another image (or removing the labels layer) mid-run used to let the run go on to its end,
    holding the encoder and showing its progress, only to write nothing."""
    from napari_sam._qt import _on_propagate

    viewer, widget, labels = sam
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    before = np.array(labels.data, copy=True)
    records = []
    monkeypatch.setattr(_on_propagate, "run_propagation", _slowed(_on_propagate.run_propagation, records))
    widget._ui.propagate_object.click()
    qtbot.waitUntil(lambda: len(records) >= 1, timeout=30000)
    if change == "image":
        viewer.add_image(stack.image[:, ::-1], name="other")
        i = widget._ui.image.findText("other")
        widget._ui.image.setCurrentIndex(i)
        widget._ui.image.activated.emit(i)
        why = "the widget left the image 'nuclei': the labels are unchanged. To run it, choose 'nuclei' again."
    elif change == "image data":
        viewer.layers["nuclei"].data = stack.image[:, ::-1].copy()
        why = "the data of 'nuclei' changed: the labels are unchanged. Run it again on the new data."
    else:
        viewer.layers.remove(labels)
        why = ("its labels layer 'curated' was removed: the labels are unchanged. Choose a labels layer (or "
               "commit), then run it again.")
    assert widget._ui.status.text() == f"Propagation stopped, because {why}", widget._ui.status.text()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30000)
    assert len(records) < records[0].total, "the worker stopped midway"
    # it stays, also when the slice's hint follows (the layer list changed): "... Next: click on an object..."
    assert widget._ui.status.text().startswith(f"Propagation stopped, because {why}"), widget._ui.status.text()
    assert widget._ui.propagate_status.text() == "Stopped: the labels are unchanged."
    np.testing.assert_array_equal(labels.data, before)
    assert widget._ui.propagate_object.isEnabled() and widget._ui.commit.isEnabled()


def test_undo_with_nothing_left_says_so(sam, qtbot, stack):
    """Once every step is undone, Undo used to tell the user to select the labels layer and press Ctrl-Z,
    which does nothing."""
    viewer, widget, labels = sam
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    empty = np.zeros_like(labels.data)
    assert "Propagated" in _run(qtbot, widget, widget._ui.propagate_object)
    widget._ui.undo.click()
    assert "Undid the propagation of label 5" in widget._ui.status.text()
    labels.undo()  # the commit (napari's own Ctrl-Z)
    np.testing.assert_array_equal(labels.data, empty)
    widget._ui.undo.click()
    assert widget._ui.status.text() == "Nothing to undo: 'curated' has no change left to undo."
    np.testing.assert_array_equal(labels.data, empty)


def test_closing_the_widget_mid_run_writes_nothing_and_ends_the_run(sam, qtbot, stack, monkeypatch):
    from napari_sam._qt import _on_propagate

    viewer, widget, labels = sam
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    before = np.array(labels.data, copy=True)
    monkeypatch.setattr(_on_propagate, "run_propagation", _slowed(_on_propagate.run_propagation))
    widget._ui.propagate_object.click()
    qtbot.waitUntil(lambda: widget._ui.progress.value() >= 1, timeout=30000)
    viewer.window.remove_dock_widget(widget)
    assert not widget.propagating and not widget.busy
    _no_workers(qtbot)
    np.testing.assert_array_equal(labels.data, before)


def test_c_right_after_cancel_says_the_run_is_stopping(sam, qtbot, stack, monkeypatch):
    """Between Cancel and the worker's stop (the end of the slice it is on: seconds with a ViT on a CPU),
    C used to say the run was 'still running ... (or Cancel it)', after the user had cancelled it."""
    import threading

    from napari_sam._qt import _on_propagate

    viewer, widget, labels = sam
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    before = np.array(labels.data, copy=True)
    gate, real = threading.Event(), _on_propagate.run_propagation

    def held(*args):  # the run, held on its second slice until the test lets it go
        gen = real(*args)
        yield next(gen)
        gate.wait(20)
        yield from gen

    monkeypatch.setattr(_on_propagate, "run_propagation", held)
    widget._ui.propagate_object.click()
    qtbot.waitUntil(lambda: widget._ui.progress.value() >= 1, timeout=30000)
    widget._ui.cancel.click()
    assert widget.propagating
    widget._on_commit()  # what C does
    assert widget._ui.status.text() == ("The propagation is stopping (it finishes the slice it is on): "
                                        "commit in a moment."), widget._ui.status.text()
    gate.set()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30000)
    assert widget._ui.status.text() == "Propagation cancelled: the labels are unchanged."
    np.testing.assert_array_equal(labels.data, before)

"""Propagating again after a correction, in a real napari viewer: the slices an earlier propagation wrote
are redone from the corrected slice, what the user committed or painted is kept.

Without this, a second run changed nothing: every slice of the first run's result was taken as a prompt.
The expected result of a second run is the first run's result on the layer as the user left it, minus the
first run's slices: the same as propagating afresh from the slices the user made. Uses the embedded model
(skipped without it); the fixtures are those of test_widget_propagate.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from ._widget_stack import (  # the fixtures are imported to be used
    OBJ,
    OTHERS,
    Z,
    _commit,
    _iou,
    _run,
    open_sam,
    sam,
    stack,
)

pytestmark = pytest.mark.gui


def _fresh(widget, stack, labels: np.ndarray, ids) -> np.ndarray:
    """What a propagation of ``ids`` from ``labels`` gives with the widget's settings, run to the end outside
    the widget (another predictor, no ledger): the reference for a redone run."""
    from napari_sam._qt._propagate import run_propagation
    from napari_sam.core.cache import EmbeddingCache
    from napari_sam.core.predictor import SlicePredictor

    gui = widget._session.predictor
    pred = SlicePredictor(widget._session.model, normalize=gui.normalize, refine=gui.refine,
                          input_scale=gui.input_scale)
    gen = run_propagation(pred, stack.image, labels, list(ids), EmbeddingCache())
    while True:
        try:
            next(gen)
        except StopIteration as fin:
            return fin.value


def _replace(labels, z: int, label: int, mask2d) -> None:
    """The user's correction of ``label`` on slice ``z``: its old pixels there cleared, ``mask2d`` written, one
    undoable step (as a refine commit does)."""
    old = np.nonzero(np.asarray(labels.data[z]) == label)
    r, c = np.nonzero(mask2d)
    with labels.block_history():
        labels.data_setitem((np.full(len(old[0]), z), *old), 0)
        labels.data_setitem((np.full(len(r), z), r, c), label)


def test_a_corrected_slice_is_propagated_again_over_the_first_runs_slices(sam, qtbot, stack):
    viewer, widget, labels = sam
    gt = stack.labels
    truth = gt[Z] == OBJ
    rows = np.nonzero(truth.any(1))[0]
    poor = truth.copy()
    poor[rows.min() + (rows.max() - rows.min()) // 2 :] = False  # the top half only: a poor first commit
    _commit(labels, poor, 5)
    other = gt == OTHERS[0]
    other[Z] = False
    labels.data[other] = 9  # the user's other object, painted on other slices
    labels.selected_label = 5
    _run(qtbot, widget, widget._ui.propagate_object)
    first = np.array(labels.data, copy=True)
    first_z = set(np.flatnonzero((first == 5).any((1, 2))).tolist())
    assert len(first_z) >= 3

    _replace(labels, Z, 5, truth)  # the user corrects the prompted slice
    corrected = np.array(labels.data, copy=True)
    status = _run(qtbot, widget, widget._ui.propagate_object)
    after = np.array(labels.data, copy=True)

    base = np.where(corrected == 5, 0, corrected)
    base[Z][truth] = 5
    expected = _fresh(widget, stack, base, [5])
    np.testing.assert_array_equal(after, expected)  # as if the first run had never been
    assert (after == 9).sum() == (first == 9).sum() and (after[first == 9] == 9).all(), "label 9 is untouched"
    np.testing.assert_array_equal(after[Z], corrected[Z])
    outside = (first_z - {Z})
    assert "Redone" in status and "label 5 on" in status, status
    # the corrected object is better than the first run's, over the whole stack and on the redone slices
    assert _iou(after == 5, gt == OBJ) > _iou(first == 5, gt == OBJ) + 0.1
    zs = sorted(outside)
    assert _iou(after[zs] == 5, gt[zs] == OBJ) > _iou(first[zs] == 5, gt[zs] == OBJ) + 0.1

    widget._ui.undo.click()  # one step: the redone run, clearing and writing
    np.testing.assert_array_equal(labels.data, corrected)
    status = _run(qtbot, widget, widget._ui.propagate_object)  # undone: the first run's slices are known again
    np.testing.assert_array_equal(labels.data, after)


def test_a_slice_changed_by_hand_is_kept_and_prompts_the_run(sam, qtbot, stack):
    viewer, widget, labels = sam
    gt = stack.labels
    _commit(labels, gt[Z] == OBJ, 5)
    labels.selected_label = 5
    _run(qtbot, widget, widget._ui.propagate_object)
    first = np.array(labels.data, copy=True)
    assert (first[Z + 2] == 5).any() and (first[Z - 1] == 5).any()

    # the user paints slice Z+2 (a 3 px stripe across the object taken away): no longer the run's mask
    r, c = np.nonzero(first[Z + 2] == 5)
    cut = r == int(np.median(r))
    labels.data_setitem((np.full(cut.sum(), Z + 2), r[cut], c[cut]), 0)
    edited = np.array(labels.data, copy=True)
    viewer.dims.current_step = (Z - 1, 0, 0)  # the run starts from another slice the first run wrote
    status = _run(qtbot, widget, widget._ui.propagate_object)
    after = np.array(labels.data, copy=True)

    np.testing.assert_array_equal(after[Z], edited[Z])  # committed
    np.testing.assert_array_equal(after[Z + 2], edited[Z + 2])  # painted
    np.testing.assert_array_equal(after[Z - 1], edited[Z - 1])  # the current slice: where the run starts
    base = edited.copy()
    redo = [z for z in range(len(base)) if z not in (Z, Z + 2, Z - 1)]
    base[redo] = np.where(base[redo] == 5, 0, base[redo])
    np.testing.assert_array_equal(after, _fresh(widget, stack, base, [5]))
    assert "Redone" in status, status


def test_propagating_again_unchanged_changes_nothing_and_leaves_other_objects_alone(sam, qtbot, stack):
    viewer, widget, labels = sam
    gt = stack.labels
    _commit(labels, gt[Z] == OBJ, 5)
    _commit(labels, gt[Z] == OTHERS[1], 6)
    _run(qtbot, widget, widget._ui.propagate_all)
    first = np.array(labels.data, copy=True)
    assert (first == 6).any((1, 2)).sum() >= 3

    status = _run(qtbot, widget, widget._ui.propagate_all)  # nothing corrected: the same result
    np.testing.assert_array_equal(labels.data, first)
    assert "changed no pixels" in status and "Redone" in status, status

    _replace(labels, Z, 5, np.zeros_like(gt[Z], bool) | (gt[Z] == OBJ) & (np.arange(gt.shape[2]) % 2 == 0))
    corrected = np.array(labels.data, copy=True)
    labels.selected_label = 5
    _run(qtbot, widget, widget._ui.propagate_object)  # only label 5: label 6's slices are not redone
    after = np.array(labels.data, copy=True)
    np.testing.assert_array_equal(after == 6, corrected == 6)
    assert not np.array_equal(after == 5, corrected == 5)
    widget._ui.undo.click()
    np.testing.assert_array_equal(labels.data, corrected)


# ------------------------------------------------------------ without a viewer --
class _Layer:  # stands for a napari Labels layer: the ledger keys on it weakly
    pass


def test_redoing_reads_only_unchanged_propagated_slices_as_background_and_to_write_clears_what_is_not_redone():
    from napari_sam._qt._plane import Plane
    from napari_sam._qt._propagate import Changes, StackView
    from napari_sam._qt._redo import Propagated, Redoing, fingerprint, to_write

    data = np.zeros((4, 4, 4), np.uint16)
    data[0, :2, :2] = 5  # committed
    data[1, :2, :2] = 5  # written by a propagation
    data[2, :3, :3] = 5  # written by a propagation, then painted
    data[1, 3, 3] = data[2, 3, 3] = 7  # another object
    plane = Plane(((0, 0),), (1, 2), (4, 4), "z=0")
    view = StackView(data, plane, 0)
    book, layer = Propagated(), _Layer()
    book.add(layer, view, 5, 1, data[1] == 5)
    book.add(layer, view, 5, 2, np.pad(np.ones((2, 2), bool), ((0, 2), (0, 2))))  # what the run wrote there
    known = book.known(layer, [5], view)
    assert set(known) == {(5, 1), (5, 2)} and book.known(layer, [7], view) == {}

    seen = Redoing(view, known, keep=0)
    vol = np.asarray(seen)
    assert seen.redone == {0: [], 1: [5], 2: [], 3: []}
    assert not (vol[1] == 5).any() and vol[1, 3, 3] == 7, "the propagated slice reads as background, 7 stays"
    np.testing.assert_array_equal(vol[[0, 2, 3]], data[[0, 2, 3]])
    assert fingerprint(data[2] == 5) not in known[(5, 2)]

    # the new run gives 5 a single pixel on slice 1 and none elsewhere: the rest of its old pixels there go
    ch = Changes(4, {1: (np.array([1]), np.array([2]), np.array([5], np.uint16))}, {5: [0, 1]}, {1: [5]})
    z, r, c, v = to_write(view, ch, known)
    got = {(int(a), int(b), int(d)): int(e) for a, b, d, e in zip(z, r, c, v)}
    assert got == {(1, 0, 0): 0, (1, 0, 1): 0, (1, 1, 0): 0, (1, 1, 1): 0, (1, 1, 2): 5}
    # a slice painted since the run started is left alone, new pixels go into background only
    data[1, 0, 3] = 5
    ch = Changes(4, {1: (np.array([0, 2]), np.array([0, 0]), np.array([5, 5], np.uint16))}, {5: [1]}, {1: [5]})
    z, r, c, v = to_write(view, ch, known)
    assert {(int(a), int(b), int(d)): int(e) for a, b, d, e in zip(z, r, c, v)} == {(1, 2, 0): 5}

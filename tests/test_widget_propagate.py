"""Propagate object / Propagate all objects on this slice, in a real napari viewer: what a run writes.

Objects are committed by writing their ground-truth mask on the middle slice
of a synthetic stack into the labels layer (as a commit would), then the
buttons are pressed; the assertions are on the Labels data, its undo/redo
history and the status text. Uses the embedded model (skipped without it).
Range, Cancel, refusals and stops: test_widget_propagate_control.py; Prompts
on every slice: test_widget_every_slice.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from ._widget_stack import (  # the fixtures are imported to be used
    MIN_IOU,
    OBJ,
    OTHERS,
    Z,
    _commit,
    _iou,
    _no_workers,
    _run,
    open_sam,
    sam,
    stack,
)

pytestmark = pytest.mark.gui


def test_propagate_object_follows_it_writes_background_only_and_is_one_undo_step(sam, qtbot, stack):
    viewer, widget, labels = sam
    gt = stack.labels
    _commit(labels, gt[Z] == OBJ, 5)
    # the user's other labels: an object painted on other slices, and a block where ours will go on slice Z+1
    other = gt == OTHERS[0]
    other[Z] = False
    labels.data[other] = 9
    rows, cols = np.nonzero(gt[Z + 1] == OBJ)
    labels.data[Z + 1, rows.min() : rows.min() + 4, :] = 3
    labels.selected_label = 5
    before = np.array(labels.data, copy=True)

    status = _run(qtbot, widget, widget._ui.propagate_object)
    after = np.array(labels.data, copy=True)

    assert "Propagated" in status and "label 5" in status, status
    assert ("stopped at z=" in status) or ("reached" in status), status
    changed = after != before
    assert changed.any()
    assert (before[changed] == 0).all(), "only background pixels are written"
    assert set(np.unique(after[changed])) == {5}, "the object keeps its id"
    np.testing.assert_array_equal(after[before != 0], before[before != 0])  # other labels bit-for-bit
    np.testing.assert_array_equal(after[Z], before[Z])  # the prompted slice is kept as committed
    reached = np.flatnonzero((after == 5).any((1, 2)))
    assert len(reached) >= 3 and reached[0] < Z < reached[-1]
    assert _iou(after == 5, gt == OBJ) >= MIN_IOU
    from napari_sam.core.cache import cache_key, slice_signature

    keys = [cache_key(widget._session.predictor, slice_signature(np.asarray(stack.image[z]))) for z in reached]
    assert all(k in widget._session.cache for k in keys), "the slices it went through are in the session's cache"

    widget._ui.undo.click()  # one step: the whole run (the widget's Undo is the labels layer's undo)
    np.testing.assert_array_equal(labels.data, before)
    assert "Undid the propagation of label 5" in widget._ui.status.text()
    labels.redo()
    np.testing.assert_array_equal(labels.data, after)
    viewer.dims.current_step = (Z + 1, 0, 0)  # the status line moves on; the run's summary stays
    summary = widget._ui.propagate_status
    assert "label 5: z=" in summary.text() and "stopped at z=" in summary.toolTip()


def test_an_rgb_stack_propagates_like_its_gray_version(open_sam, qtbot, stack):
    gray8 = (stack.image / stack.image.max() * 255).astype(np.uint8)
    viewer, widget, labels = open_sam(np.repeat(gray8[..., None], 3, -1), (Z, 0, 0))
    assert viewer.layers["nuclei"].rgb
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    status = _run(qtbot, widget, widget._ui.propagate_object)
    assert "Propagated" in status, status
    assert _iou(np.asarray(labels.data) == 5, stack.labels == OBJ) >= MIN_IOU


def test_propagate_all_objects_on_this_slice_keeps_each_id(sam, qtbot, stack):
    viewer, widget, labels = sam
    gt = stack.labels
    ids = {OBJ: 11, OTHERS[0]: 12, OTHERS[1]: 13}
    for g, mine in ids.items():
        _commit(labels, gt[Z] == g, mine)
    before = np.array(labels.data, copy=True)

    status = _run(qtbot, widget, widget._ui.propagate_all)
    after = np.array(labels.data, copy=True)

    assert "Propagated" in status and all(f"label {m}" in status for m in ids.values()), status
    assert set(np.unique(after)) == {0, 11, 12, 13}
    changed = after != before
    assert (before[changed] == 0).all()
    for g, mine in ids.items():
        assert (after == mine).any((1, 2)).sum() >= 3, f"label {mine} reached fewer than 3 slices"
        assert _iou(after == mine, gt == g) >= MIN_IOU, f"label {mine}"
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


# ------------------------------------------------------------ without a viewer --
def test_stack_view_follows_the_last_hidden_axis_and_maps_writes_back():
    from napari_sam._qt._plane import Plane
    from napari_sam._qt._propagate import StackView, anchor_prompts, z_axis_of

    data = np.arange(2 * 5 * 6 * 7).reshape(2, 5, 6, 7)
    tz = Plane(((0, 1), (1, 3)), (2, 3), (6, 7), "t=1, z=3")  # (t, z, y, x) viewed as (y, x)
    view = StackView(data, tz, z_axis_of(tz))
    assert view.shape == (5, 6, 7) and (view[2] == data[1, 2]).all() and (view.volume() == data[1]).all()
    z, r, c = np.array([0, 4]), np.array([1, 5]), np.array([2, 6])
    np.testing.assert_array_equal(data[view.full_index(z, r, c)], data[1][z, r, c])

    side = Plane(((1, 2),), (0, 2), (5, 7), "axis 1=2")  # a 3D array viewed along its middle axis
    view = StackView(data[0], side, z_axis_of(side))
    vol = view.volume()
    assert view.shape == vol.shape == (6, 5, 7) and (vol == np.moveaxis(data[0], 1, 0)).all()
    np.testing.assert_array_equal(data[0][view.full_index(z, [1, 0], [3, 4])], vol[z, [1, 0], [3, 4]])

    labels = np.zeros((4, 3, 3), np.uint16)
    labels[0, 0, 0] = labels[2, 1, 1] = 5
    labels[2, 2, 2] = 7
    prompts = anchor_prompts(labels, [5])
    assert list(prompts) == [5] and sorted(prompts[5]) == [0, 2]
    assert prompts[5][2]["mask"].sum() == 1 and prompts[5][2]["mask"][1, 1]


def test_a_mask_prompt_works_whatever_grid_the_model_was_last_set_to(embedded_model, stack):
    """Regression: a committed mask as the only prompt failed on a native-resolution model whose
    prompt encoder was last set to another slice size (``SlicePredictor._mask_input``)."""
    from napari_sam._qt._propagate import run_propagation
    from napari_sam.core.cache import EmbeddingCache
    from napari_sam.core.embedded import set_grid
    from napari_sam.core.predictor import SlicePredictor

    set_grid(embedded_model.sam, (1024, 1024))  # as after SAM ran on a 1024 x 1024 image
    labels = np.zeros(stack.labels.shape, np.uint32)
    labels[Z][stack.labels[Z] == OBJ] = 5
    gen = run_propagation(SlicePredictor(embedded_model), stack.image, labels, [5], EmbeddingCache())
    while True:
        try:
            next(gen)
        except StopIteration as fin:
            out = fin.value
            break
    assert (out == 5).any((1, 2)).sum() >= 3 and not labels[Z + 1].any()


def test_propagation_takes_the_encoder_gate_and_pauses_the_background_precompute(sam, qtbot, stack, monkeypatch):
    import threading
    import time

    from napari_sam.core.cache import slice_signature
    from napari_sam.core.predictor import SlicePredictor

    viewer, widget, labels = sam
    real, lock = SlicePredictor.embed, threading.Lock()
    calls, running, most = [], [0], [0]

    def embed(self, slice2d, **kw):  # every encoder call of the process, slowed so that overlaps would show
        with lock:
            calls.append(slice_signature(np.asarray(slice2d)))
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.15)
            return real(self, slice2d, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(SlicePredictor, "embed", embed)
    widget._ui.precompute.setChecked(False)
    _no_workers(qtbot)
    widget._session.cache.clear()
    calls.clear()
    widget._ui.precompute.setChecked(True)  # a fresh background run from slice Z, nothing cached
    qtbot.waitUntil(lambda: len(calls) >= 1, timeout=20000)
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5

    widget._ui.propagate_object.click()
    assert widget.propagating and not widget.precomputing, "the background run is paused during the propagation"
    assert "paused" in widget._ui.precompute_status.text()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30000)
    assert "Propagated" in widget._ui.status.text()
    reached = np.flatnonzero((np.asarray(labels.data) == 5).any((1, 2)))
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)  # resumed after the run, then done

    assert most[0] == 1, "one encoder call at a time"
    assert sorted(calls) == sorted(set(calls)), "no slice encoded twice"
    signature = {slice_signature(np.asarray(stack.image[z])): z for z in range(stack.image.shape[0])}
    assert sorted(signature[s] for s in calls) == list(range(stack.image.shape[0])), "each slice once in all"
    from napari_sam.core.cache import cache_key

    keys = [cache_key(widget._session.predictor, slice_signature(np.asarray(stack.image[z]))) for z in reached]
    assert all(k in widget._session.cache for k in keys), "the propagation's slices are in the session's cache"


def test_an_error_inside_the_propagation_is_reported_and_changes_nothing(sam, qtbot, stack, monkeypatch):
    from napari_sam.core.predictor import SlicePredictor

    viewer, widget, labels = sam
    widget._ui.precompute.setChecked(False)
    _no_workers(qtbot)
    widget._session.cache.clear()  # the propagation has to run the encoder
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    before = np.array(labels.data, copy=True)
    undo_depth = len(labels._undo_history)
    real, calls = SlicePredictor.embed, []

    def embed(self, slice2d, **kw):  # torch raises RuntimeError for out-of-memory, bad shapes...
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, slice2d, **kw)

    monkeypatch.setattr(SlicePredictor, "embed", embed)
    widget._ui.propagate_object.click()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=15000)

    status = widget._ui.status
    assert "Propagation failed: CUDA out of memory (simulated)" in status.text(), status.text()
    assert "#ff6b6b" in status.styleSheet(), "shown as an error"
    assert len(calls) == 2, "it failed midway, on its second slice"
    np.testing.assert_array_equal(labels.data, before)
    assert len(labels._undo_history) == undo_depth
    assert widget._ui.propagate_object.isEnabled() and widget._ui.commit.isEnabled() and not widget.busy


# ------------------------------------------------------------ with a disk cache --
@pytest.fixture
def encoder_calls(monkeypatch):
    """The slices the image encoder ran on, as content signatures (every predictor of the process)."""
    from napari_sam.core.cache import slice_signature
    from napari_sam.core.predictor import SlicePredictor

    calls, real = [], SlicePredictor.embed

    def embed(self, slice2d, **kw):
        calls.append(slice_signature(np.asarray(slice2d)))
        return real(self, slice2d, **kw)

    monkeypatch.setattr(SlicePredictor, "embed", embed)
    return calls


def _fresh_then_from_disk(qtbot, widget, labels, path, calls) -> tuple[np.ndarray, np.ndarray]:
    """Propagate the selected label with the encoder, undo; precompute the whole stack to ``path``,
    empty the memory cache, propagate again. Returns the labels written by each run."""
    from napari_sam.core.disk_cache import DiskCache

    widget._ui.precompute.setChecked(False)
    _no_workers(qtbot)
    widget._session.cache.clear()
    before = np.array(labels.data, copy=True)
    assert "Propagated" in _run(qtbot, widget, widget._ui.propagate_object)
    fresh = np.array(labels.data, copy=True)
    assert calls, "without a disk cache the run encodes its slices"
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)

    widget._session.cache.clear()
    assert widget.precompute_stack(path)
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=60000)
    n = int(np.prod(widget._image.data.shape[:-2]))
    assert len(DiskCache.open(path).done()) == n, widget._ui.precompute_status.text()
    widget._session.cache.clear()  # as a new session: the embeddings are on disk only
    calls.clear()
    assert "Propagated" in _run(qtbot, widget, widget._ui.propagate_object)
    assert calls == [], "every slice's embedding came from the disk cache"
    return fresh, np.array(labels.data, copy=True)


def _same_labels(fresh: np.ndarray, disk: np.ndarray, label: int) -> None:
    """The run on fp16 disk embeddings writes what the fp32 one did, up to 2% of the object's pixels."""
    assert (disk == label).any((-2, -1)).sum() >= 3, "it propagated"
    differ = np.count_nonzero(fresh != disk)
    assert differ <= 0.02 * np.count_nonzero((fresh == label) | (disk == label)), f"{differ} px differ"


def test_propagation_reads_the_whole_stack_disk_cache(sam, qtbot, stack, encoder_calls, tmp_path):
    viewer, widget, labels = sam
    _commit(labels, stack.labels[Z] == OBJ, 5)
    labels.selected_label = 5
    fresh, disk = _fresh_then_from_disk(qtbot, widget, labels, tmp_path / "nuclei.zarr", encoder_calls)
    _same_labels(fresh, disk, 5)


def test_t_z_stack_propagation_reads_its_time_point_from_the_disk_cache(open_sam, qtbot, stack, encoder_calls,
                                                                        tmp_path):
    sub = stack.image[Z - 3 : Z + 3]
    tz = np.stack([sub[:, ::-1], sub])  # (t, z, y, x); time point 0 is another image (rows flipped)
    viewer, widget, labels = open_sam(tz, (1, 3, 0, 0))
    _commit(labels, stack.labels[Z] == OBJ, 5, at=(1, 3))
    labels.selected_label = 5
    fresh, disk = _fresh_then_from_disk(qtbot, widget, labels, tmp_path / "tz.zarr", encoder_calls)
    assert not disk[0].any(), "time point 0 is left alone"
    _same_labels(fresh, disk, 5)

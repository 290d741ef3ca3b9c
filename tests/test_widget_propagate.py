"""Propagate object / Propagate all objects on this slice, in a real napari viewer.

Objects are committed by writing their ground-truth mask on the middle slice
of a synthetic stack into the labels layer (as a commit would), then the
buttons are pressed; the assertions are on the Labels data, its undo/redo
history and the status text. Uses the embedded model (skipped without it).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.synthetic import make_stack

from .conftest import EMBEDDED

pytestmark = pytest.mark.gui

Z = 6
OBJ, OTHERS = 2, (4, 7)  # ground-truth ids of seed 2 lying well inside the stack around slice 6
# 3D IoU of a propagated object with its ground truth, measured in these tests with the embedded
# model (the committed slice as a mask prompt): object 2 0.78 (with a block of label 3 in its way on
# slice Z+1); all three together 0.79 / 0.84 / 0.85.
MIN_IOU = 0.7


@pytest.fixture(scope="module")
def stack():
    return make_stack((12, 128, 128), seed=2, kind="nuclei", radius_range=(10, 22), density=0.3)


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture
def open_sam(make_napari_viewer, qtbot):
    """open_sam(image, step) -> (viewer, widget, labels layer): the model loaded, the viewer at ``step``,
    an empty 'curated' labels layer of the image's shape chosen in the widget."""
    from napari_sam._qt.widget import SamWidget

    if not EMBEDDED.exists():
        pytest.skip(f"embedded weights not in this checkout ({EMBEDDED})")
    opened = []

    def open_(image, step):
        viewer = make_napari_viewer()
        viewer.add_image(image, name="nuclei")
        widget = SamWidget(viewer, model="embedded")
        viewer.window.add_dock_widget(widget, name="SAM")
        opened.append((viewer, widget))
        qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
        spatial = image.shape[:-1] if viewer.layers["nuclei"].rgb else image.shape
        labels = viewer.add_labels(np.zeros(spatial, np.uint32), name="curated")
        i = widget._ui.labels.findText("curated")
        widget._ui.labels.setCurrentIndex(i)
        widget._ui.labels.activated.emit(i)
        viewer.dims.current_step = step
        return viewer, widget, labels

    yield open_
    for viewer, widget in opened:
        qtbot.waitUntil(lambda: not widget.busy and not widget.precomputing, timeout=30000)
        if not widget._closed:  # a test may have closed it
            viewer.window.remove_dock_widget(widget)


@pytest.fixture
def sam(open_sam, stack):
    """(viewer, widget, labels layer) on slice Z of the (z, y, x) stack."""
    return open_sam(stack.image, (Z, 0, 0))


def _commit(labels, mask2d, label: int, at: tuple = (Z,)) -> None:
    """Write a mask on slice ``at`` (z, or (t, z)) as a commit would (one undoable step)."""
    r, c = np.nonzero(mask2d)
    with labels.block_history():
        labels.data_setitem((*(np.full(len(r), i) for i in at), r, c), label)


def _slowed(run, records=None):
    """``run`` (a propagation generator function) pausing 0.1 s after each progress record, so that the
    test can act while it runs; the records go into ``records``."""
    import time

    def slow(*args):
        gen = run(*args)
        while True:
            try:
                p = next(gen)
            except StopIteration as fin:
                return fin.value
            if records is not None:
                records.append(p)
            time.sleep(0.1)
            yield p

    return slow


def _run(qtbot, widget, button) -> str:
    button.click()
    assert widget.propagating and not widget._ui.commit.isEnabled() and not button.isEnabled()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30000)
    assert widget._ui.commit.isEnabled() and button.isEnabled()
    return widget._ui.status.text()


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


def _no_workers(qtbot) -> None:
    from napari.qt.threading import WorkerBase

    qtbot.waitUntil(lambda: not WorkerBase._worker_set, timeout=20000)


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
    assert widget._ui.status.text() == f"Propagation stopped, because {why}", widget._ui.status.text()
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

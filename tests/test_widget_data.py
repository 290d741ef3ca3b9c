"""The widget on the data a microscopist opens: lazy and large stacks, labels layers of their own.

Memory is measured with ``tracemalloc`` (numpy, zarr and dask buffers are traced; torch's are not),
so a test fails when the widget reads a whole array where one slice would do. Uses the embedded
model (skipped until its weights are in the checkout).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_sam.synthetic import interior_point, make_stack

from .test_widget import _choose, _model_source

pytestmark = pytest.mark.gui

Z = 5


@pytest.fixture(scope="module")
def stack():
    return make_stack((12, 128, 128), seed=3, radius_range=(10, 18), density=0.3)


def _largest_object(lab: np.ndarray) -> np.ndarray:
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    return lab == ids[np.argmax(counts)]


@pytest.fixture
def open_sam(make_napari_viewer, qtbot):
    """open_sam(data, **image_kwargs) -> (viewer, widget): the model loaded (magnification 1x: quick on
    large slices), no background precompute; every worker has ended at teardown."""
    from napari.qt.threading import WorkerBase

    from napari_sam._qt.widget import SamWidget

    made = []

    def open_(data, **kw):
        viewer = make_napari_viewer()
        viewer.add_image(data, name="img", **kw)
        widget = SamWidget(viewer, model=_model_source())
        widget._ui.precompute.setChecked(False)
        viewer.window.add_dock_widget(widget, name="SAM")
        made.append(widget)
        qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
        widget._ui.magnification.setValue(1.0)
        return viewer, widget

    yield open_
    for w in made:
        qtbot.waitUntil(lambda: not w.busy, timeout=60000)
        w.close()
    qtbot.waitUntil(lambda: not WorkerBase._worker_set, timeout=20000)


def _click_and_wait(qtbot, viewer, widget, point) -> None:
    viewer.layers["img SAM points"].add([point])
    qtbot.waitUntil(lambda: not widget.busy and "candidate" in widget._ui.status.text(), timeout=60000)


def _traced_peak(fn) -> int:
    """Bytes of the largest traced allocation total while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_commit_into_a_zarr_labels_layer_reads_it_a_block_at_a_time(open_sam, qtbot, stack, tmp_path):
    """The user's own labels, a zarr array on disk: a commit needs its largest id, and read the whole
    array into memory for it (twice its size, 3 s for 100 MB; 10 GB for a 300 x 2048 x 2048 stack)."""
    import zarr

    image = np.tile(stack.image, (9, 4, 4))[:100]  # (100, 512, 512)
    viewer, widget = open_sam(image)
    z = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=image.shape, chunks=(1, 512, 512),
                        dtype="uint32")
    z[30, :10, :10] = 7  # an object of the user's, far from the slice committed on
    z[Z, -5:, -5:] = 3
    viewer.add_labels(z, name="mine")
    _choose(widget._ui.labels, "mine")
    viewer.dims.current_step = (Z, 0, 0)
    gt = np.zeros(image.shape[1:], bool)
    gt[:128, :128] = _largest_object(stack.labels[Z])
    _click_and_wait(qtbot, viewer, widget, [Z, *interior_point(gt)])

    peak = _traced_peak(widget._on_commit)

    assert "Committed label 8 on z=5" in widget._ui.status.text(), widget._ui.status.text()
    assert peak < z.nbytes / 3, f"{peak / 1e6:.0f} MB allocated to commit into a {z.nbytes / 1e6:.0f} MB array"
    out = np.asarray(z[...])
    written = out[Z] == 8
    assert written.sum() > 0.6 * gt.sum() and (written & ~gt).sum() < 0.3 * gt.sum()
    out[Z][written] = 0
    expected = np.zeros(image.shape, np.uint32)
    expected[30, :10, :10] = 7
    expected[Z, -5:, -5:] = 3
    np.testing.assert_array_equal(out, expected)  # nothing else changed


def test_largest_reads_lazy_arrays_a_block_at_a_time(tmp_path):
    import dask.array as da
    import zarr

    from napari_sam.core.lazy import largest

    a = np.zeros((40, 64, 64), np.int32)
    a[33, 5, 7] = 9
    a[2, 0, 0] = -4
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=a.shape, chunks=(3, 64, 64), dtype="int32")
    z[...] = a
    for arr in (a, z, da.from_array(a, chunks=(5, 64, 64))):
        assert largest(arr) == 9 and largest(arr, block_bytes=1) == 9
    assert largest(np.zeros((0, 4), np.uint8)) is None


def test_propagation_on_a_large_stack_copies_the_labels_once(open_sam, qtbot, stack):
    """Propagating one object through a (120, 512, 512) stack held the labels 3.6 times over (a snapshot
    on the GUI thread, the run's copy, a second snapshot to compare at the end, whole-stack masks): 18 GB
    for a 300 x 2048 x 2048 stack, and the GUI frozen while the snapshots were copied."""
    image = np.tile(stack.image, (10, 4, 4))  # (120, 512, 512), slice z is stack slice z % 12
    viewer, widget = open_sam(image)
    viewer.dims.current_step = (Z, 0, 0)
    gt = np.zeros(image.shape[1:], bool)
    gt[:128, :128] = _largest_object(stack.labels[Z])
    _click_and_wait(qtbot, viewer, widget, [Z, *interior_point(gt)])
    widget._on_commit()
    labels = viewer.layers["img SAM labels"]
    assert labels.data.dtype == np.uint32 and labels.data.shape == image.shape
    theirs = np.zeros(gt.shape, bool)
    theirs[:128, :128] = stack.labels[Z + 1] > 0
    theirs &= ~np.pad(np.ones((64, 64), bool), ((0, 448), (0, 448)))  # the user's object: a piece of its path
    labels.data[Z + 1][theirs] = 40
    labels.selected_label = 1
    before = np.array(labels.data, copy=True)

    def run():
        widget._ui.propagate_object.click()
        qtbot.waitUntil(lambda: not widget.propagating, timeout=120000)

    peak = _traced_peak(run)

    status = widget._ui.status.text()
    assert "Propagated" in status and "label 1: z=" in status, status
    out = np.asarray(labels.data)
    # the run's own copy of the labels (core.label_canvas; its clearing of the object's old pixels went a slice
    # at a time in session 12: 1.75x before) and a bit per pixel in the widget (what was background), plus the
    # encoder's activations when a slice is not cached yet (~50 MB for a 512 px slice at 2x: 1.38x was seen when
    # the neighbouring-slice precompute had not reached the slices the run needed). Before: 3.5x
    assert peak < 1.5 * out.nbytes, f"{peak / 1e6:.0f} MB allocated to propagate in {out.nbytes / 1e6:.0f} MB of labels"
    new = out != before
    assert new.any((1, 2)).sum() >= 2, "it reached other slices"
    assert (before[new] == 0).all() and set(np.unique(out[new])) == {1}, "background pixels only, as label 1"
    widget._ui.undo.click()
    np.testing.assert_array_equal(labels.data, before)


def test_read_only_labels_layers_are_refused_with_a_message(open_sam, qtbot, stack, tmp_path):
    """Labels opened lazily (a dask array, as OME-Zarr readers give; a zarr opened for reading) were
    accepted, and the commit into them ended in a traceback (dask: NotImplementedError), nothing written."""
    import dask.array as da
    import zarr

    viewer, widget = open_sam(stack.image)
    mine = np.zeros(stack.image.shape, np.uint32)
    mine[2, :5, :5] = 4
    lazy = viewer.add_labels(da.from_array(mine, chunks=(1, 128, 128)), name="lazy")
    zarr.open_array(str(tmp_path / "ro.zarr"), mode="w", shape=mine.shape, dtype="uint32")[...] = mine
    viewer.add_labels(zarr.open_array(str(tmp_path / "ro.zarr"), mode="r"), name="on disk")
    status = widget._ui.status
    for name, what in (("lazy", "a dask array"), ("on disk", "a zarr array opened for reading")):
        _choose(widget._ui.labels, name)
        assert f"{name!r} does not fit" in status.text() and f"read-only, {what}" in status.text(), status.text()
        assert widget._ui.labels.currentText() != name
    viewer.dims.current_step = (Z, 0, 0)
    gt = _largest_object(stack.labels[Z])
    _click_and_wait(qtbot, viewer, widget, [Z, *interior_point(gt)])
    widget._on_commit()
    assert "Committed label 1 on z=5" in status.text(), status.text()
    out = np.asarray(viewer.layers["img SAM labels"].data)
    assert set(np.unique(out)) == {0, 1} and set(np.nonzero(out)[0]) == {Z}
    np.testing.assert_array_equal(np.asarray(lazy.data), mine)


def test_negative_labels_of_an_int_layer_are_left_alone(open_sam, qtbot, stack):
    """A user's int32 labels with negative ids: Propagate all failed ("object ids must be positive")
    after starting; now the negative labels are other objects, kept as they are."""
    viewer, widget = open_sam(stack.image)
    gt = _largest_object(stack.labels[Z])
    mine = np.zeros(stack.image.shape, np.int32)
    mine[Z][gt] = 2
    mine[Z, :6, :6] = -3
    mine[Z + 1, :6, :6] = -3
    labels = viewer.add_labels(mine.copy(), name="mine")
    _choose(widget._ui.labels, "mine")
    viewer.dims.current_step = (Z, 0, 0)
    widget._ui.propagate_all.click()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=60000)
    status = widget._ui.status
    assert "Propagated" in status.text() and "label 2: z=" in status.text(), status.text()
    out = np.asarray(labels.data)
    new = out != mine
    assert new.any((1, 2)).sum() >= 2 and set(np.unique(out[new])) == {2} and (mine[new] == 0).all()
    assert (out == -3).sum() == 72

    labels.selected_label = -3
    widget._ui.propagate_object.click()
    assert not widget.propagating
    assert "the selected label is -3: napari-sam follows objects with positive ids only" in status.text()
    np.testing.assert_array_equal(labels.data, out)


def test_a_stack_whose_labels_cannot_be_held_in_memory_gets_a_message(open_sam, qtbot, stack):
    """A lazy stack too large for labels in memory (here 3 million slices: 183 GB of uint32 labels): the
    first commit ended in a MemoryError traceback, nothing written and the status line unchanged."""
    import dask.array as da

    n = 1000

    def block(block_info=None):
        first = block_info[None]["array-location"][0][0]
        return stack.image[np.arange(first, first + n) % 12]

    huge = da.map_blocks(block, dtype=stack.image.dtype, chunks=((n,) * 3000, (128,), (128,)))
    viewer, widget = open_sam(huge)
    viewer.dims.current_step = (Z, 0, 0)
    _click_and_wait(qtbot, viewer, widget, [Z, *interior_point(_largest_object(stack.labels[Z]))])
    widget._on_commit()
    text = widget._ui.status.text()
    assert "a labels layer for 'img' (3000000, 128, 128) would need 183 GB of memory" in text, text
    assert "viewer.add_labels(zarr.open_array('labels.zarr'" in text and "choose it under Labels" in text
    assert [ly.name for ly in viewer.layers if ly.__class__.__name__ == "Labels"] == ["SAM preview"]


def test_a_slice_between_two_of_an_anisotropic_stack_is_the_one_napari_shows(open_sam, qtbot, stack):
    """Layers of different z spacing in one viewer (a 2 um stack beside a 1 um one): on a world position
    half-way between two slices napari shows the lower one (it rounds a half to even), the widget took the
    upper one, so the click there was not on its slice: nothing happened ("z=3: click on an object")."""
    viewer, widget = open_sam(stack.image, scale=(2, 1, 1))
    viewer.add_image(stack.image, name="fine", visible=False)  # z spacing 1: the slider moves by 1
    _choose(widget._ui.image, "img")
    image = viewer.layers["img"]
    viewer.dims.current_step = (5, 0, 0)  # world z = 5: data z = 2.5 of the 2 um stack
    qtbot.waitUntil(lambda: image._slice.image.raw.shape == (128, 128))
    shown = next(z for z in range(12) if np.array_equal(image._slice.image.raw, stack.image[z]))
    assert shown == 2
    gt = _largest_object(stack.labels[shown])
    points = viewer.layers["img SAM points"]
    points.add([points.world_to_data([5, *interior_point(gt)])])  # where the user clicked
    qtbot.waitUntil(lambda: not widget.busy and "candidate" in widget._ui.status.text(), timeout=30000)
    assert widget._ui.status.text().startswith("z=2:"), widget._ui.status.text()
    widget._on_commit()
    out = np.asarray(viewer.layers["img SAM labels"].data)
    assert set(np.nonzero(out)[0]) == {shown}
    assert ((out[shown] == 1) & gt).sum() > 0.6 * gt.sum()


def test_a_stack_with_a_single_channel_axis_propagates_along_z(open_sam, qtbot, stack):
    """A (z, 1, y, x) stack (one channel kept as an axis): propagation took the channel axis, the last hidden
    one, for z: "single slice along z: nothing to propagate to". It follows the axis with slices now."""
    image = stack.image[:, None]  # (12, 1, 128, 128)
    viewer, widget = open_sam(image)
    viewer.dims.current_step = (Z, 0, 0, 0)
    gt = _largest_object(stack.labels[Z])
    _click_and_wait(qtbot, viewer, widget, [Z, 0, *interior_point(gt)])
    widget._on_commit()
    labels = viewer.layers["img SAM labels"]
    labels.selected_label = 1
    widget._ui.propagate_object.click()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=120000)
    status = widget._ui.status.text()
    assert "Propagated" in status and "label 1: z=" in status, status  # the axis with slices is z, not t
    out = np.asarray(labels.data)[:, 0]
    oid = np.argmax(np.bincount(stack.labels[Z][gt]))
    truth = stack.labels == oid
    reached = out.any((1, 2))
    assert reached.sum() >= 3 and set(np.unique(out)) == {0, 1}
    inter, union = np.logical_and(out == 1, truth).sum(), np.logical_or(out == 1, truth).sum()
    assert inter / union > 0.5, f"3D IoU {inter / union:.2f}"


def _show_an_empty_candidate(qtbot, viewer, widget) -> None:
    """Press K until the status shows a candidate of 0 px."""
    from .test_widget import _press

    for _ in range(4):
        if " 0 px)" in widget._ui.status.text():
            return
        _press(viewer, "K")
    pytest.fail(f"no empty candidate: {widget._ui.status.text()}")


def test_an_empty_mask_is_not_committed_and_a_refined_label_is_left_as_it_is(open_sam, qtbot):
    """A click where SAM finds nothing (a blank slice), a candidate of 0 px shown: the commit said "the labels
    already hold exactly this mask", and in Refine mode it erased the selected label from the slice."""
    viewer, widget = open_sam(np.zeros((3, 64, 64), np.uint16))
    viewer.dims.current_step = (1, 0, 0)
    mine = np.zeros((3, 64, 64), np.uint32)
    mine[1, 10:20, 10:20] = 5
    viewer.add_labels(mine.copy(), name="mine")
    _choose(widget._ui.labels, "mine")
    viewer.layers["mine"].selected_label = 5
    _click_and_wait(qtbot, viewer, widget, [1, 48, 48])
    _show_an_empty_candidate(qtbot, viewer, widget)
    widget._on_commit()
    status = widget._ui.status.text()
    assert "SAM's mask on z=1 is empty (0 px): nothing was committed; show another candidate (K)" in status, status
    np.testing.assert_array_equal(viewer.layers["mine"].data, mine)

    widget._ui.refine.setChecked(True)  # label 5's mask on the slice as SAM's mask prompt, with the click
    qtbot.waitUntil(lambda: not widget.busy and "candidate 1/" in widget._ui.status.text(), timeout=60000)
    _show_an_empty_candidate(qtbot, viewer, widget)
    widget._on_commit()
    assert "is empty (0 px): nothing was committed" in widget._ui.status.text(), widget._ui.status.text()
    np.testing.assert_array_equal(viewer.layers["mine"].data, mine)


def test_a_refused_commit_leaves_no_new_labels_layer(open_sam, qtbot):
    """With no labels layer yet, a commit creates one; refused (an empty mask), it left that empty layer
    behind."""
    viewer, widget = open_sam(np.zeros((3, 64, 64), np.uint16))
    viewer.dims.current_step = (1, 0, 0)
    _click_and_wait(qtbot, viewer, widget, [1, 48, 48])
    _show_an_empty_candidate(qtbot, viewer, widget)
    layers = [ly.name for ly in viewer.layers]
    assert widget._labels is None and "img SAM labels" not in layers
    widget._on_commit()
    assert "is empty (0 px): nothing was committed" in widget._ui.status.text(), widget._ui.status.text()
    assert [ly.name for ly in viewer.layers] == layers, "no labels layer was added"
    assert widget._labels is None

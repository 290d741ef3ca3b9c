"""The widget embeds slices ahead of the user: neighbours in the background, or the whole stack to disk.

Every encoder run is recorded (``SlicePredictor.embed`` wrapped for the test),
as the slice it ran on, so the assertions are on what the encoder did: which
slices, in which order, and none at all when a slice was precomputed.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.cache import slice_signature
from napari_sam.synthetic import interior_point, make_stack

from .test_widget import _choose, _iou, _model_source, _objects_by_size, _our_callbacks, _wait_preview

pytestmark = pytest.mark.gui

NZ, Z = 8, 3


@pytest.fixture(scope="module")
def stack():
    return make_stack((NZ, 128, 128), seed=3, radius_range=(10, 18), density=0.3)


@pytest.fixture
def encoded(monkeypatch):
    """The slices the image encoder ran on, in order, as content signatures (every predictor of the process).

    ``encoded.delay = s`` makes each encoder run take s seconds longer (to catch a run half-way).
    """
    import time

    from napari_sam.core.predictor import SlicePredictor

    class Calls(list):
        delay = 0.0

    calls, real = Calls(), SlicePredictor.embed

    def embed(self, slice2d, **kw):
        calls.append(slice_signature(np.asarray(slice2d)))
        time.sleep(calls.delay)
        return real(self, slice2d, **kw)

    monkeypatch.setattr(SlicePredictor, "embed", embed)
    return calls


@pytest.fixture
def open_sam(make_napari_viewer, qtbot):
    """open_sam(data, z, lead=(t,)...) -> (viewer, widget) on slice z; every worker has ended at teardown."""
    from napari.qt.threading import WorkerBase

    from napari_sam._qt.widget import SamWidget

    made = []

    def open_(data, z, *, precompute=True, viewer=None, lead=()):
        if viewer is None:
            viewer = make_napari_viewer()
            viewer.add_image(data, name="nuclei")
        viewer.dims.current_step = (*lead, z, 0, 0)
        widget = SamWidget(viewer, model=_model_source())
        widget._ui.precompute.setChecked(precompute)  # before the model has loaded: nothing ran yet
        viewer.window.add_dock_widget(widget, name="SAM")
        made.append(widget)
        qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
        return viewer, widget

    yield open_
    for w in made:
        w.close()
    qtbot.waitUntil(lambda: not WorkerBase._worker_set, timeout=20000)


def _slices(stack_image, calls) -> list:
    """Encoder calls as slice indices of ``stack_image`` (z, or (t, z) for 4D)."""
    index = {slice_signature(np.asarray(stack_image[i])): i for i in np.ndindex(stack_image.shape[:-2])}
    out = [index[s] for s in calls]
    return [i[0] if len(i) == 1 else i for i in out]


def _click(qtbot, viewer, widget, stack, z, lead=()):
    """Go to slice z, click inside its largest object; returns (preview mask, ground truth)."""
    viewer.dims.current_step = (*lead, z, 0, 0)
    lab = stack.labels[z]
    gt = lab == _objects_by_size(lab)[0]
    viewer.layers["nuclei SAM points"].add([[*lead, z, *interior_point(gt)]])
    return _wait_preview(qtbot, viewer, widget) > 0, gt


def test_background_precompute_makes_the_next_slice_free(open_sam, qtbot, stack, encoded):
    viewer, widget = open_sam(stack.image, Z)
    status = widget._ui.precompute_status
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    assert f"{NZ}/{NZ} slices" in status.text()
    order = _slices(stack.image, encoded)
    assert sorted(order) == list(range(NZ)), "every slice once"
    assert order[0] == Z and order[1] == Z + 1, "the current slice first, then outward"
    assert widget._ui.precompute_stop.isHidden() and not widget.busy

    encoded.clear()
    mask, gt = _click(qtbot, viewer, widget, stack, Z + 1)
    assert encoded == [], "the slice's embedding came from the cache"
    assert _iou(mask, gt) >= 0.8


def test_moving_to_a_far_slice_recentres_the_precompute(open_sam, qtbot, stack, encoded):
    encoded.delay = 0.25
    viewer, widget = open_sam(stack.image, 0)
    qtbot.waitUntil(lambda: len(encoded) >= 1, timeout=30000)
    viewer.dims.set_current_step(0, NZ - 1)
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    order = _slices(stack.image, encoded)
    assert sorted(order) == list(range(NZ))
    far = order.index(NZ - 1)
    assert far <= 2, f"the slice moved to is encoded next (order {order}), not last"
    after = [abs(z - (NZ - 1)) for z in order[far:]]
    assert after == sorted(after), f"then outward from it: {order}"


def test_stop_and_closing_the_widget_stop_the_worker(open_sam, qtbot, stack, encoded):
    from qtpy.QtCore import Qt

    encoded.delay = 0.25
    viewer, widget = open_sam(stack.image, 0)
    qtbot.waitUntil(lambda: len(encoded) >= 1, timeout=30000)
    worker = widget._pc_runs.get("background").worker
    assert not widget._ui.precompute_stop.isHidden() and not widget._ui.precompute_bar.isHidden()
    with qtbot.waitSignal(worker.finished, timeout=10000):
        qtbot.mouseClick(widget._ui.precompute_stop, Qt.MouseButton.LeftButton)
    assert not widget.precomputing and "stopped" in widget._ui.precompute_status.text()
    n = len(encoded)
    assert n < NZ
    viewer.dims.set_current_step(0, 5)  # moving on does not restart a run the user stopped
    qtbot.wait(200)
    assert not widget.precomputing

    widget._ui.precompute.setChecked(False)
    widget._ui.precompute.setChecked(True)  # ticking the box again does
    assert widget.precomputing
    worker = widget._pc_runs.get("background").worker
    qtbot.waitUntil(lambda: len(encoded) > n, timeout=30000)
    with qtbot.waitSignal(worker.finished, timeout=10000):
        widget.close()
    n = len(encoded)
    assert n < NZ, "closing stopped it early"
    qtbot.wait(300)
    assert len(encoded) == n and not widget.precomputing
    assert _our_callbacks(viewer) == []


def test_whole_stack_to_disk_then_a_new_session_runs_no_encoder(open_sam, qtbot, stack, encoded, tmp_path):
    from napari_sam.core.disk_cache import DiskCache

    viewer, widget = open_sam(stack.image, Z, precompute=False)
    path = tmp_path / "nuclei.embeddings.zarr"
    assert widget.precompute_stack(path)
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    assert sorted(_slices(stack.image, encoded)) == list(range(NZ))
    assert len(DiskCache.open(path).done()) == NZ
    assert f"{NZ} slices ({NZ} encoded now)" in widget._ui.precompute_status.text()
    encoded.clear()
    mask, gt = _click(qtbot, viewer, widget, stack, Z + 2)
    assert encoded == [] and _iou(mask, gt) >= 0.8, "the slice came from the disk cache"
    # another image chosen and this one again: its cache is still read
    viewer.add_image(stack.image[::-1], name="flipped")
    _choose(widget._ui.image, "flipped")
    _choose(widget._ui.image, "nuclei")
    mask, gt = _click(qtbot, viewer, widget, stack, Z + 1)
    assert encoded == [], "the disk cache is read after switching back"
    # another magnification: the cache (2x) does not serve it, the slice is encoded at 1x
    widget._ui.magnification.setValue(1.0)
    mask, gt = _click(qtbot, viewer, widget, stack, Z)
    assert _slices(stack.image, encoded) == [Z] and widget._session.predictor.embedding.input_size == (128, 128)
    widget._ui.magnification.setValue(2.0)
    encoded.clear()

    viewer.window.remove_dock_widget(widget)
    viewer, again = open_sam(stack.image, Z - 1, precompute=False, viewer=viewer)
    assert again.precompute_stack(path)
    qtbot.waitUntil(lambda: not again.precomputing, timeout=40000)
    assert "(0 encoded now)" in again._ui.precompute_status.text()
    mask, gt = _click(qtbot, viewer, again, stack, Z - 1)
    assert encoded == [], "a new session reads every slice from the disk cache"
    assert _iou(mask, gt) >= 0.8


def _stopped_after(open_sam, qtbot, stack, encoded, tmp_path, n: int):
    """(viewer, widget, cache path): Precompute whole stack into tmp_path/"c.zarr", stopped (the Stop button)
    once ``n`` slices are encoded (each takes 0.25 s)."""
    from qtpy.QtCore import Qt

    encoded.delay = 0.25
    viewer, widget = open_sam(stack.image, 0, precompute=False)
    path = tmp_path / "c.zarr"
    widget.precompute_stack(path)
    qtbot.waitUntil(lambda: len(encoded) >= n, timeout=30000)
    with qtbot.waitSignal(widget._pc_runs.get("stack").worker.finished, timeout=10000):
        qtbot.mouseClick(widget._ui.precompute_stop, Qt.MouseButton.LeftButton)
    return viewer, widget, path


def test_whole_stack_stop_resumes_and_a_cache_of_another_image_is_refused(open_sam, qtbot, stack, encoded, tmp_path):
    from napari_sam.core.disk_cache import DiskCache

    viewer, widget, path = _stopped_after(open_sam, qtbot, stack, encoded, tmp_path, 3)
    text = widget._ui.precompute_status.text()
    assert "stopped" in text and "resume" in text
    done = DiskCache.open(path).done()
    assert 3 <= len(done) < NZ and len(done) == len(encoded), "every slice encoded is kept"

    encoded.clear()
    widget.precompute_stack(path)
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    assert len(DiskCache.open(path).done()) == NZ
    assert sorted(_slices(stack.image, encoded)) == sorted(set(range(NZ)) - {d[0] for d in done}), "only the rest"

    before = DiskCache.open(path).done()
    viewer.add_image(stack.image[:5], name="other")
    _choose(widget._ui.image, "other")
    (tmp_path / "file.txt").write_text("not a cache")
    assert not widget.precompute_stack(tmp_path / "file.txt")
    assert "is a file" in widget._ui.precompute_status.text()
    encoded.clear()
    widget.precompute_stack(path)
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=20000)
    shown = widget._ui.precompute_status.text()
    assert "image shape" in shown and "another cache file" in shown, "the reason, under the precompute bar"
    assert encoded == []
    kept = DiskCache.open(path)
    assert kept.done() == before and kept.settings["stack_shape"] == list(stack.image.shape), "left as it was"


def test_t_z_stack_background_then_whole_stack_reuses_memory(open_sam, qtbot, stack, encoded, tmp_path):
    from napari_sam.core.disk_cache import DiskCache

    tz = stack.image.reshape(2, NZ // 2, *stack.image.shape[1:])  # (t, z, y, x)
    viewer, widget = open_sam(tz, 1, lead=(1,))
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    t1 = [(1, z) for z in range(NZ // 2)]
    assert sorted(_slices(tz, encoded)) == t1, "the current time point only"

    encoded.clear()
    widget.precompute_stack(tmp_path / "tz.zarr")
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    assert sorted(_slices(tz, encoded)) == [(0, z) for z in range(NZ // 2)], "time point 1 came from memory"
    assert len(DiskCache.open(tmp_path / "tz.zarr").done()) == NZ


def test_whole_stack_into_a_new_folder_then_the_layer_data_replaced(open_sam, qtbot, stack, encoded, tmp_path):
    """A folder made in the file dialog ("New Folder") is a place for a new cache, not "not a cache"; once the
    layer's data is replaced (a crop), the cache no longer serves it: clicks segment the crop (they failed:
    "SAM failed on this slice: slice 3 has geometry ...") and leave the cache as it was."""
    from napari_sam.core.disk_cache import DiskCache

    viewer, widget = open_sam(stack.image, Z, precompute=False)
    path = tmp_path / "new folder é.zarr"
    path.mkdir()
    assert widget.precompute_stack(path)
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    assert f"{NZ} slices ({NZ} encoded now); clicks read it" in widget._ui.precompute_status.text()

    crop = stack.image[:, 8:120, 8:112].copy()
    viewer.layers["nuclei"].data = crop
    encoded.clear()
    lab = stack.labels[Z][8:120, 8:112]
    gt = lab == _objects_by_size(lab)[0]
    viewer.layers["nuclei SAM points"].add([[Z, *interior_point(gt)]])
    mask = _wait_preview(qtbot, viewer, widget) > 0
    assert "failed" not in widget._ui.status.text() and _iou(mask, gt) >= 0.8
    assert _slices(crop, encoded) == [Z], "the crop's slice is encoded"
    kept = DiskCache.open(path)
    assert len(kept.done()) == NZ and kept.get(Z, slice_signature(stack.image[Z])) is not None, "cache unchanged"


def test_whole_stack_that_cannot_write_says_so_and_clicks_still_work(open_sam, qtbot, stack, encoded, tmp_path):
    """A cache on a full disk or a read-only share: the run stops with the reason and how to resume, the
    slices done stay; a click on a slice it lacks is encoded (it failed with the write's error)."""
    from napari_sam.core.disk_cache import DiskCache

    viewer, widget, path = _stopped_after(open_sam, qtbot, stack, encoded, tmp_path, 2)
    done = DiskCache.open(path).done()
    missing = [z for z in range(NZ) if (z,) not in done]
    chunks = path / "features" / "c"
    if not chunks.is_dir():
        pytest.skip("not zarr's v3 chunk layout")
    for z in missing:
        (chunks / str(z)).write_text("")  # these slices cannot be written: an OSError, as on a full disk
    encoded.delay = 0.0
    widget.precompute_stack(path)
    qtbot.waitUntil(lambda: not widget.precomputing, timeout=40000)
    text = widget._ui.precompute_status.text()
    assert "could not write to c.zarr" in text and "slices done are kept" in text and "resume" in text, text
    assert DiskCache.open(path).done() == done

    encoded.clear()
    z = min(missing, key=lambda m: abs(m - Z))
    mask, gt = _click(qtbot, viewer, widget, stack, z)
    assert "failed" not in widget._ui.status.text() and _iou(mask, gt) >= 0.8
    assert _slices(stack.image, encoded) == [z]

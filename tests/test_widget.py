"""The SAM dock widget in a real napari viewer, driven by real layer events.

Prompts are added the way napari adds them when the user clicks (``Points.add``,
``Shapes.add_rectangles``), slices change through ``viewer.dims``, keys go
through the viewer's key handler; the assertions are on what the user sees:
the preview layer, the Labels data, undo/redo, the status text.
Uses the embedded model (skipped until its weights are in the checkout).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_sam
from napari_sam.synthetic import interior_point, make_stack

from .conftest import EMBEDDED

pytestmark = pytest.mark.gui

Z = 4


def _model_source() -> str:
    if EMBEDDED.exists():
        return "embedded"
    alt = os.environ.get("NAPARI_SAM_WIDGET_TEST_MODEL")  # a checkpoint path, for development
    if alt:
        return alt
    pytest.skip(f"embedded weights not in this checkout ({EMBEDDED})")


@pytest.fixture(scope="module")
def stack():
    return make_stack((8, 256, 256), seed=2, radius_range=(12, 30), density=0.3)


def _objects_by_size(lab: np.ndarray) -> list[int]:
    """Object ids on a slice, largest first, leaving out objects touching the border."""
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    keep = [(c, i) for i, c in zip(ids, counts) if i not in border]
    return [int(i) for c, i in sorted(keep, reverse=True)]


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# A click on the largest object of slice Z (object 7, 1,707 px): IoU 0.79 with the embedded model at its
# default 2x magnification (0.84 at 1.5x, 0.81 for session 3's model at 1.5x); clicks are judged by this bar.
MIN_CLICK_IOU = 0.75


@pytest.fixture
def sam(make_napari_viewer, qtbot, stack):
    """(viewer, widget, image layer): the widget docked as napari docks plugin widgets (public-only proxy)."""
    from napari.utils._proxies import PublicOnlyProxy

    from napari_sam._qt.widget import SamWidget

    source = _model_source()
    viewer = make_napari_viewer()
    image = viewer.add_image(stack.image, scale=stack.voxel_size, name="nuclei")
    widget = SamWidget(PublicOnlyProxy(viewer), model=source)
    viewer.window.add_dock_widget(widget, name="SAM")
    qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
    viewer.dims.current_step = (Z, 0, 0)
    yield viewer, widget, image
    if not widget._closed:
        qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
        viewer.window.remove_dock_widget(widget)


def _preview(viewer) -> np.ndarray:
    """The preview as (H, W) labels (0 where there is none)."""
    if "SAM preview" not in viewer.layers:
        return np.zeros((1, 1), np.uint8)
    d = np.asarray(viewer.layers["SAM preview"].data)
    return d.reshape(d.shape[-2:])


def _wait_preview(qtbot, viewer, widget, n_objects: int = 1):
    """Wait for SAM's answer; returns the preview (H, W) labels."""
    status = widget._ui.status
    qtbot.waitUntil(lambda: not widget.busy and "candidate" in status.text(), timeout=30000)
    found = len(np.unique(_preview(viewer))) - 1
    assert found == n_objects, f"preview shows {found} objects, expected {n_objects}; status: {status.text()}"
    return _preview(viewer)


def _press(viewer, key: str) -> None:
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def _choose(combo, text: str) -> None:
    """Pick an item of one of the widget's combo boxes as the user does."""
    i = combo.findText(text)
    assert i >= 0, f"{text!r} is not offered: {[combo.itemText(k) for k in range(combo.count())]}"
    combo.setCurrentIndex(i)
    combo.activated.emit(i)


def test_click_previews_object_commit_writes_new_id_on_this_slice_only_and_undoes(sam, qtbot, stack):
    viewer, widget, image = sam
    lab = stack.labels[Z]
    obj = _objects_by_size(lab)[0]
    gt = lab == obj
    # the user's curated labels: object 5 overlaps our object on this slice, 9 sits on the next slice
    before = np.zeros(stack.labels.shape, np.uint16)
    left = gt & (np.arange(gt.shape[1])[None, :] < np.nonzero(gt)[1].min() + 4)
    before[Z][left] = 5
    before[Z + 1][stack.labels[Z + 1] == obj] = 9
    curated = viewer.add_labels(before.copy(), name="curated", scale=stack.voxel_size)
    _choose(widget._ui.labels, "curated")
    points = viewer.layers["nuclei SAM points"]
    points.add([[1, 100, 100]])  # a prompt on another slice: not used, not cleared
    points.add([[Z, *interior_point(gt)]])

    preview = _wait_preview(qtbot, viewer, widget) > 0
    assert _iou(preview, gt) >= MIN_CLICK_IOU
    assert (curated.data == before).all(), "a preview never writes into the labels"

    _press(viewer, "C")
    after = np.asarray(curated.data).copy()
    changed = after != before
    assert changed[Z].sum() > 0.5 * gt.sum()
    assert not np.delete(changed, Z, axis=0).any(), "only the current slice changes"
    assert set(np.unique(after[changed])) == {10}, "a new object id: the largest label + 1"
    assert (after[before == 5] == 5).all() and (after[before == 9] == 9).all(), "existing labels are kept"
    np.testing.assert_array_equal(changed[Z], preview & (before[Z] == 0))
    assert [p[0] for p in points.data] == [1], "the slice's prompts are cleared, others stay"
    assert curated.selected_label == 10
    kept = int((preview & (before[Z] == 5)).sum())
    assert f"{kept} px kept their existing label" in widget._ui.status.text(), widget._ui.status.text()

    curated.undo()
    np.testing.assert_array_equal(curated.data, before)
    curated.redo()
    np.testing.assert_array_equal(curated.data, after)


def test_magnification_embeds_the_slice_again_and_clicks_still_segment(sam, qtbot, stack):
    viewer, widget, image = sam
    box = widget._ui.magnification
    own = widget.model.sam.image_encoder.input_scale  # the checkpoint's (2.0)
    assert own != 1.0 and box.isEnabled() and box.value() == own, "the embedded model's own magnification is shown"
    gt = stack.labels[Z] == _objects_by_size(stack.labels[Z])[0]
    viewer.layers["nuclei SAM points"].add([[Z, *interior_point(gt)]])
    assert _iou(_wait_preview(qtbot, viewer, widget) > 0, gt) >= MIN_CLICK_IOU
    assert widget._session.predictor.embedding.input_size == (round(256 * own),) * 2
    hint = "These objects are large (radius 22 px): Magnification 1× segments them better"
    assert hint in widget._ui.status.text(), "object 7 (1,707 px) is large: the widget suggests 1x"

    box.setValue(1.0)
    assert "magnified 1×" in widget._ui.status.text(), widget._ui.status.text()
    assert _iou(_wait_preview(qtbot, viewer, widget) > 0, gt) >= MIN_CLICK_IOU
    emb = widget._session.predictor.embedding
    assert widget._session.predictor.input_scale == 1.0 and emb.input_size == (256, 256), "embedded again at 1x"
    assert "Magnification 1×" not in widget._ui.status.text(), "no hint once at 1x"


def test_saved_labels_carry_the_prompts_of_each_commit(sam, qtbot, stack, tmp_path):
    import json

    import tifffile

    viewer, widget, image = sam
    lab = stack.labels[Z]
    obj = _objects_by_size(lab)[0]
    click = interior_point(lab == obj)
    viewer.layers["nuclei SAM points"].add([[Z, *click]])
    _wait_preview(qtbot, viewer, widget)
    _press(viewer, "C")
    labels = viewer.layers["nuclei SAM labels"]
    written = labels.save(str(tmp_path / "nuclei.tif"), plugin="napari-sam")
    assert written == [str(tmp_path / "nuclei.tif"), str(tmp_path / "nuclei.prompts.json")]
    np.testing.assert_array_equal(tifffile.imread(written[0]), labels.data)
    (rec,) = json.loads((tmp_path / "nuclei.prompts.json").read_text())["objects"]
    assert rec["label"] == 1 and rec["plane"] == {"axes": [0], "index": [Z]}
    assert rec["points"] == [[Z, *np.round(click, 3).tolist()]] and rec["point_labels"] == [1]
    assert rec["model"]["sha256"] == widget.model.checksum


def test_boxes_are_objects_and_commit_with_button(sam, qtbot, stack):
    from qtpy.QtCore import Qt

    viewer, widget, image = sam
    lab = stack.labels[Z]
    a, b = _objects_by_size(lab)[:2]
    boxes = viewer.layers["nuclei SAM boxes"]
    for obj in (a, b):
        rr, cc = np.nonzero(lab == obj)
        r0, c0, r1, c1 = rr.min() - 2, cc.min() - 2, rr.max() + 2, cc.max() + 2
        boxes.add_rectangles(np.array([[Z, r0, c0], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0]], float))
    preview = _wait_preview(qtbot, viewer, widget, n_objects=2)
    assert _iou(preview == 1, lab == a) >= 0.8 and _iou(preview == 2, lab == b) >= 0.8

    qtbot.mouseClick(widget._ui.commit, Qt.MouseButton.LeftButton)
    labels = viewer.layers["nuclei SAM labels"]
    assert set(np.unique(labels.data)) == {0, 1, 2}
    assert not np.delete(np.asarray(labels.data), Z, axis=0).any()
    assert _iou(labels.data[Z] == 1, lab == a) >= 0.8 and _iou(labels.data[Z] == 2, lab == b) >= 0.8
    assert len(boxes.data) == 0
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    assert "Committed label 1, 2" in widget._ui.status.text(), "the confirmation stays until the next prompt"


def _touching_pair(lab):
    for a in _objects_by_size(lab):
        ring = ndi.binary_dilation(lab == a, iterations=2) & (lab != a) & (lab > 0)
        for b in np.unique(lab[ring]):
            if (lab == b).sum() > 300:
                return a, int(b)
    raise AssertionError("no touching objects on this slice")


def test_negative_point_removes_a_neighbour(sam, qtbot, stack):
    viewer, widget, image = sam
    lab = stack.labels[Z]
    a, b = _touching_pair(lab)
    A, B = lab == a, lab == b
    points = viewer.layers["nuclei SAM points"]
    points.add([[Z, *interior_point(A)]])
    points.add([[Z, *interior_point(B)]])
    both = _wait_preview(qtbot, viewer, widget) > 0
    assert (both & B).sum() > 0.5 * B.sum(), "two positive clicks: the neighbour is in the mask"

    points.remove([1])  # the click on the neighbour becomes a negative one
    _press(viewer, "N")
    assert widget._ui.negative.isChecked()
    points.add([[Z, *interior_point(B)]])
    assert points.features["positive"].tolist() == [True, False]
    qtbot.waitUntil(lambda: not widget.busy and (_preview(viewer) > 0).sum() < both.sum(), timeout=30000)
    one = _preview(viewer) > 0
    assert (one & B).sum() < 0.2 * B.sum(), "the negative point removed the neighbour"
    assert (one & A).sum() > 0.6 * A.sum(), "the clicked object stays"


def test_a_second_click_corrects_the_mask_shown_and_removing_it_gives_the_first_back(sam, qtbot, stack):
    viewer, widget, image = sam
    A = stack.labels[Z] == _objects_by_size(stack.labels[Z])[0]
    points = viewer.layers["nuclei SAM points"]
    points.add([[Z, *interior_point(A)]])
    first = _wait_preview(qtbot, viewer, widget) > 0
    miss, extra = A & ~first, first & ~A
    if miss.sum() >= extra.sum():  # a corrective click where the mask shown is most wrong
        q = interior_point(miss)
    else:
        q = interior_point(extra)
        _press(viewer, "N")
    points.add([[Z, *q]])
    qtbot.waitUntil(lambda: not widget.busy and widget._result is not None
                    and len(widget._result.objects[0].points) == 2, timeout=30000)
    second = _preview(viewer) > 0
    carried = widget._result.objects[0].mask
    assert carried is not None and carried.dtype != bool, "the click is decoded from the mask shown (SAM's loop)"
    # one corrective click helps on average (benchmarks/eval_embedded.py: 0.79 -> 0.83 median), not on every
    # object: here the first mask is 0.88 and what it misses a thin band
    assert _iou(second, A) >= MIN_CLICK_IOU
    points.remove([1])
    qtbot.waitUntil(lambda: not widget.busy and widget._result is not None
                    and len(widget._result.objects[0].points) == 1, timeout=30000)
    assert np.array_equal(_preview(viewer) > 0, first), "removing the click gives back the first answer"


def test_slice_or_prompt_change_during_computation_writes_nothing(sam, qtbot, stack):
    viewer, widget, image = sam
    lab = stack.labels[Z]
    obj = _objects_by_size(lab)[0]
    points = viewer.layers["nuclei SAM points"]
    points.add([[Z, *interior_point(lab == obj)]])
    _press(viewer, "C")  # before SAM answered: the commit waits for the answer...
    assert widget.busy
    viewer.dims.current_step = (Z + 2, 0, 0)  # ...but the user moves on
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    qtbot.wait(100)
    assert "nuclei SAM labels" not in viewer.layers or not viewer.layers["nuclei SAM labels"].data.any()
    assert not _preview(viewer).any(), "no preview of slice Z is shown on slice Z + 2"

    viewer.dims.current_step = (Z, 0, 0)  # back: the preview comes (cached embedding), nothing written
    _wait_preview(qtbot, viewer, widget)
    assert "nuclei SAM labels" not in viewer.layers

    # a commit queued while the embedding is computed is dropped when the prompts change meanwhile
    viewer.dims.current_step = (Z + 1, 0, 0)
    other = _objects_by_size(stack.labels[Z + 1])[0]
    points.add([[Z + 1, *interior_point(stack.labels[Z + 1] == other)]])
    _press(viewer, "C")
    assert widget.busy
    points.add([[Z + 1, 5, 5]])
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    qtbot.wait(100)
    assert "nuclei SAM labels" not in viewer.layers


def test_cancel_stops_waiting_and_new_prompts_run_again(sam, qtbot, stack):
    from qtpy.QtCore import Qt

    viewer, widget, image = sam
    lab = stack.labels[Z]
    points = viewer.layers["nuclei SAM points"]
    points.add([[Z, *interior_point(lab == _objects_by_size(lab)[0])]])
    _press(viewer, "C")  # runs SAM now (the commit is queued until its answer)
    assert widget.busy and not widget._ui.cancel.isHidden(), "encoding the slice, Cancel offered"
    qtbot.mouseClick(widget._ui.cancel, Qt.MouseButton.LeftButton)
    assert not widget.busy and widget._ui.cancel.isHidden()
    assert "Cancelled" in widget._ui.status.text()
    qtbot.wait(1500)  # the abandoned worker finishes in the background: its result is not used
    assert not _preview(viewer).any() and "nuclei SAM labels" not in viewer.layers
    points.add([[Z, *interior_point(lab == _objects_by_size(lab)[1])]])
    _wait_preview(qtbot, viewer, widget)


def test_next_candidate_is_shown_and_committed(sam, qtbot, stack):
    viewer, widget, image = sam
    lab = stack.labels[Z]
    obj = _objects_by_size(lab)[1]
    viewer.layers["nuclei SAM points"].add([[Z, *interior_point(lab == obj)]])
    first = _wait_preview(qtbot, viewer, widget).copy()
    assert widget._ui.candidates.count() == 3 and widget._ui.candidates.currentRow() == 0
    scores = [float(widget._ui.candidates.item(i).text().split("IoU ")[1].split()[0]) for i in range(3)]
    assert scores == sorted(scores, reverse=True), "best predicted IoU first"
    _press(viewer, "K")
    assert widget._ui.candidates.currentRow() == 1
    second = _preview(viewer).copy()
    assert "candidate 2/3" in widget._ui.status.text()
    _press(viewer, "C")
    labels = viewer.layers["nuclei SAM labels"]
    np.testing.assert_array_equal(labels.data[Z] > 0, second > 0)
    if not (first == second).all():
        assert not (labels.data[Z] > 0)[(first > 0) & (second == 0)].any(), "the first candidate was not written"


def test_refine_from_labels_replaces_the_object_on_this_slice(sam, qtbot, stack):
    viewer, widget, image = sam
    lab = stack.labels[Z]
    obj = _objects_by_size(lab)[0]
    gt = lab == obj
    labels = viewer.add_labels(np.zeros(stack.labels.shape, np.uint32), name="mine", scale=stack.voxel_size)
    # a rough hand-drawn object: the ground truth cut in half, plus the same label on the next slice
    rough = gt & (np.arange(gt.shape[0])[:, None] < np.nonzero(gt)[0].mean())
    labels.data[Z][rough] = 3
    labels.data[Z + 1][stack.labels[Z + 1] == obj] = 3
    labels.selected_label = 3
    _choose(widget._ui.labels, "mine")
    before = np.asarray(labels.data).copy()
    widget._ui.refine.setChecked(True)
    viewer.layers["nuclei SAM points"].add([[Z, *interior_point(gt)]])
    refined = _wait_preview(qtbot, viewer, widget) > 0
    assert _iou(refined, gt) > _iou(rough, gt)
    _press(viewer, "C")
    after = np.asarray(labels.data)
    np.testing.assert_array_equal(after[Z] == 3, refined)
    np.testing.assert_array_equal(np.delete(after, Z, 0), np.delete(before, Z, 0))
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)

    # no click: the label's mask (and its box: SAM given a mask alone returned 0-7 px, and committing that
    # erased the label) gives the object back, here the half of it the rough label covers
    viewer.layers["nuclei SAM points"].data = np.zeros((0, 3))
    alone = _wait_preview(qtbot, viewer, widget) > 0
    assert _iou(alone, rough) >= 0.6, _iou(alone, rough)
    _press(viewer, "C")
    assert "Committed label 3" in widget._ui.status.text(), widget._ui.status.text()
    np.testing.assert_array_equal(np.asarray(labels.data)[Z] == 3, alone)


def test_4d_and_rgb_images(make_napari_viewer, qtbot, stack):
    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer()
    tz = np.stack([stack.image[2:7], stack.image[1:6]])  # (t, z, y, x)
    viewer.add_image(tz, name="tz")
    widget = SamWidget(viewer, model=_model_source())
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
    viewer.dims.current_step = (1, 3, 0, 0)
    lab = stack.labels[4]  # t=1, z=3 is stack slice 4
    obj = _objects_by_size(lab)[0]
    viewer.layers["tz SAM points"].add([[1, 3, *interior_point(lab == obj)]])
    _wait_preview(qtbot, viewer, widget)
    assert "t=1, z=3" in widget._ui.status.text()
    _press(viewer, "C")
    out = np.asarray(viewer.layers["tz SAM labels"].data)
    assert out.shape == tz.shape and _iou(out[1, 3] > 0, lab == obj) >= MIN_CLICK_IOU
    out[1, 3] = 0
    assert not out.any()
    # seen from the side (z and x shown), the slider moves y: named by its place in the data, not "z"
    from napari_sam._qt._plane import current_plane

    viewer.dims.order = (0, 2, 1, 3)
    assert current_plane(viewer, viewer.layers["tz"]).label.startswith("t=1, y="), \
        current_plane(viewer, viewer.layers["tz"]).label
    viewer.dims.order = (0, 1, 2, 3)

    rgb = np.repeat((stack.image[Z] / stack.image[Z].max() * 255).astype(np.uint8)[..., None], 3, -1)
    viewer.add_image(rgb, name="rgb", rgb=True)
    _choose(widget._ui.image, "rgb")
    pts = viewer.layers["rgb SAM points"]
    assert pts.ndim == 2
    pts.add([interior_point(stack.labels[Z] == _objects_by_size(stack.labels[Z])[0])])
    _wait_preview(qtbot, viewer, widget)
    _press(viewer, "C")
    assert viewer.layers["rgb SAM labels"].data.shape == rgb.shape[:2]
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    widget.close()


def test_layer_removal_rename_switch_and_bad_choices_keep_the_session(sam, qtbot, stack):
    viewer, widget, image = sam
    status = widget._ui.status
    lab = stack.labels[Z]
    click = [Z, *interior_point(lab == _objects_by_size(lab)[0])]

    viewer.layers["nuclei SAM points"].add([click])
    _wait_preview(qtbot, viewer, widget)
    viewer.layers.remove(viewer.layers["nuclei SAM points"])  # its prompts are gone: so is SAM's answer to them
    assert widget._ui.points.currentText() == "(new layer)"
    assert not _preview(viewer).any()
    _press(viewer, "C")
    assert "Nothing to commit" in status.text(), status.text()
    assert "nuclei SAM labels" not in viewer.layers or not viewer.layers["nuclei SAM labels"].data.any()
    _choose(widget._ui.points, "(new layer)")
    viewer.layers["nuclei SAM points"].add([click])
    _wait_preview(qtbot, viewer, widget)

    image.name = "renamed"
    assert widget._ui.image.currentText() == "renamed"

    viewer.add_labels(np.zeros((3, 10, 10), np.uint8), name="small")
    _choose(widget._ui.labels, "small")
    assert "does not fit" in status.text() and "its shape (3, 10, 10) is not the image's (8, 256, 256): choose " \
        "'(new layer)'" in status.text(), status.text()
    # the image's shape, but without its voxel size: commits by index would land elsewhere on screen
    viewer.add_labels(np.zeros(stack.labels.shape, np.uint32), name="unscaled")
    _choose(widget._ui.labels, "unscaled")
    assert "does not fit" in status.text() and "scale, translate or rotation differ" in status.text()
    assert widget._ui.labels.currentText() != "unscaled"

    viewer.add_points(np.zeros((0, 2)), name="flat points")
    _choose(widget._ui.points, "flat points")
    assert "does not fit" in status.text() and "it has 2 dimensions, the image 3: choose '(new layer)'" \
        in status.text(), status.text()

    widget.load_model("/nonexistent/sam.pth")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert "Could not load model" in status.text() and "not found" in status.text()
    assert widget.model is not None and widget._ui.model.currentText() != "sam.pth"

    viewer.add_image(stack.image[Z], name="plane")
    _choose(widget._ui.image, "plane")
    assert viewer.layers["plane SAM points"].ndim == 2
    viewer.layers.remove(viewer.layers["plane"])
    assert widget._ui.image.currentText() == "renamed"
    viewer.dims.ndisplay = 3
    viewer.layers["renamed SAM points"].add([click])
    qtbot.waitUntil(lambda: "switch the viewer to 2D" in status.text(), timeout=5000)
    viewer.dims.ndisplay = 2
    viewer.layers.remove(viewer.layers["renamed"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    assert widget._ui.image.count() == 0


def test_c_shift_c_and_k_work_whichever_of_the_widgets_layers_is_selected(sam, qtbot, stack):
    viewer, widget, image = sam
    lab = stack.labels[Z]
    objs = _objects_by_size(lab)
    points = viewer.layers["nuclei SAM points"]
    image.contrast_limits = (0, 1)  # an image layer's own C (auto-contrast once) would reset these

    viewer.layers.selection.active = image
    points.add([[Z, *interior_point(lab == objs[0])]])
    _wait_preview(qtbot, viewer, widget)
    _press(viewer, "K")
    assert widget._ui.candidates.currentRow() == 1
    _press(viewer, "Shift-K")
    assert widget._ui.candidates.currentRow() == 0
    _press(viewer, "C")
    labels = viewer.layers["nuclei SAM labels"]
    assert set(np.unique(labels.data[Z])) == {0, 1}, "C with the image selected commits"
    assert tuple(image.contrast_limits) == (0, 1), "and leaves the contrast alone"
    points.add([[Z, *interior_point(lab == objs[1])]])
    _press(viewer, "Shift-C")
    assert len(points.data) == 0, "Shift-C with the image selected clears the slice's prompts"

    others = [viewer.layers["nuclei SAM boxes"], labels, viewer.layers["SAM preview"]]
    for k, layer in enumerate(others, start=2):
        viewer.layers.selection.active = layer
        points.add([[Z, *interior_point(lab == objs[k - 1])]])
        _wait_preview(qtbot, viewer, widget)
        _press(viewer, "C")
        assert (labels.data[Z] == k).any(), f"C with {layer.name!r} selected commits"

    viewer.add_image(stack.image, name="other")
    _choose(widget._ui.image, "other")  # the widget leaves 'nuclei': its C is napari's again
    viewer.layers.selection.active = image
    _press(viewer, "C")
    assert tuple(image.contrast_limits) != (0, 1), "napari's auto-contrast"


def test_undo_last_commit_from_any_layer_and_naparis_own_undo_on_the_labels(sam, qtbot, stack):
    from qtpy.QtCore import Qt

    viewer, widget, image = sam
    lab = stack.labels[Z]
    a, b = _objects_by_size(lab)[:2]
    curated = viewer.add_labels(np.zeros(stack.labels.shape, np.uint16), name="curated", scale=stack.voxel_size)
    curated.data[Z + 1, :5, :5] = 7
    _choose(widget._ui.labels, "curated")
    points = viewer.layers["nuclei SAM points"]
    viewer.layers.selection.active = points
    status = widget._ui.status
    before = np.asarray(curated.data).copy()

    points.add([[Z, *interior_point(lab == a)]])
    _wait_preview(qtbot, viewer, widget)
    _press(viewer, "C")
    assert (curated.data[Z] == 8).any()
    _press(viewer, "Control-Z")  # the points layer is selected
    np.testing.assert_array_equal(curated.data, before)
    assert "Undid the commit of label 8" in status.text(), status.text()
    _press(viewer, "Control-Z")  # nothing of the widget's left: the user's own labels stay
    np.testing.assert_array_equal(curated.data, before)
    assert "Nothing to undo" in status.text(), status.text()

    points.add([[Z, *interior_point(lab == b)]])
    _wait_preview(qtbot, viewer, widget)
    _press(viewer, "C")
    committed = np.asarray(curated.data).copy()
    curated.data_setitem((np.array([Z + 2]), np.array([3]), np.array([3])), 9)  # the user paints after it
    viewer.layers.selection.active = image
    _press(viewer, "Control-Z")
    assert curated.data[Z + 2, 3, 3] == 9, "the user's paint is not undone by the widget"
    assert "Nothing to undo" in status.text(), status.text()
    viewer.layers.selection.active = curated
    _press(viewer, "Control-Z")  # napari's own undo of the labels layer
    np.testing.assert_array_equal(curated.data, committed)
    qtbot.mouseClick(widget._ui.undo, Qt.MouseButton.LeftButton)
    assert "Nothing to undo" in status.text(), "after a paint of the user's, the widget leaves the history alone"
    _press(viewer, "Control-Z")
    np.testing.assert_array_equal(curated.data, before)


def _our_callbacks(viewer) -> list:
    """Every napari event callback that belongs to napari_sam code."""
    groups = [viewer.events, viewer.dims.events, viewer.layers.events, viewer.layers.selection.events]
    groups += [ly.events for ly in viewer.layers]
    found = []
    for group in groups:
        for emitter in [group, *group.emitters.values()]:
            for cb in emitter.callbacks:
                owner = cb[0]() if isinstance(cb, tuple) and callable(cb[0]) else getattr(cb, "__self__", cb)
                mod = type(owner).__module__ if isinstance(cb, tuple) or hasattr(cb, "__self__") else cb.__module__
                if str(mod).startswith("napari_sam"):
                    found.append((emitter, cb))
    return found


@pytest.mark.parametrize("how", ["close", "dock close button"])
def test_closing_disconnects_every_event_and_key(sam, qtbot, how):
    viewer, widget, image = sam
    from app_model.types import KeyBinding

    assert _our_callbacks(viewer)
    assert KeyBinding.from_str("C") in viewer.keymap and KeyBinding.from_str("C") in image.keymap
    viewer.layers["nuclei SAM points"].add([[Z, 128, 128]])
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert KeyBinding.from_str("Ctrl-Z") in viewer.layers["SAM preview"].keymap
    if how == "close":
        widget.close()
    else:
        viewer.window.remove_dock_widget(widget)
    assert _our_callbacks(viewer) == []
    assert not any(k in viewer.keymap for k in map(KeyBinding.from_str, ["N", "K", "Shift-K", "C", "Shift-C"]))
    for layer in viewer.layers:
        assert not [f for f in layer.keymap.values() if f.__module__.startswith("napari_sam")], layer.name
    assert "SAM preview" not in viewer.layers
    viewer.layers["nuclei SAM points"].add([[Z, 20, 20]])  # the session's layers live on, silently
    viewer.dims.current_step = (Z + 1, 0, 0)


def test_closing_restores_a_users_own_key_binding(make_napari_viewer, qtbot):
    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer()

    def mine(v):
        pass

    viewer.bind_key("K", mine)
    widget = SamWidget(viewer, model=_model_source())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    widget.close()
    from app_model.types import KeyBinding

    assert viewer.keymap[KeyBinding.from_str("K")] is mine


def test_plugin_manifest_opens_the_widget(make_napari_viewer, qtbot):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    try:
        pm.get_manifest("napari-sam")
    except KeyError:
        pytest.skip("napari-sam is not installed (pip install -e .)")
    _model_source()
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam", "nuclei")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-sam", "SAM segmentation")
    assert type(widget).__name__ == "SamWidget" and "Keyboard shortcuts" in widget.toolTip()
    assert "nuclei SAM points" in viewer.layers
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    viewer.window.remove_dock_widget(dock)
    assert napari_sam.__version__


def test_model_list_offers_every_registry_model_with_its_description(sam):
    from qtpy.QtCore import Qt

    from napari_sam.core.models import REGISTRY

    _, widget, _ = sam
    combo = widget._ui.model
    names = [combo.itemText(i) for i in range(combo.count())]
    assert names[:-1] == list(REGISTRY) and "vit_t_lm" in names and names[-1].startswith("from file")
    tips = {combo.itemText(i): combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(combo.count())}
    assert tips["vit_t_lm"] == REGISTRY["vit_t_lm"].description
    assert "SAM 2" in tips[names[-1]]

"""The prompt layers and the candidate choice as a user works them in a real viewer.

Shapes are drawn, moved and edited with the Shapes layer's own mouse handlers (press, move, release),
points clicked with the Points layer's; keys go through napari's key handler, or to the widget's own
controls when they have the focus. Assertions are on what the user sees and gets: the preview, the
status line, the labels' pixels. Uses the embedded model (skipped until its weights are in the checkout).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.synthetic import interior_point

from .test_widget import MIN_CLICK_IOU, _iou, _model_source, _objects_by_size, _preview, _press, _wait_preview, stack

pytestmark = pytest.mark.gui

Z = 4
__all__ = ["stack"]  # the module's (8, 256, 256) stack, seed 2


@pytest.fixture
def sam(make_napari_viewer, qtbot, stack):
    """(viewer, widget): the model loaded, the viewer shown on slice Z, no background precompute."""
    from napari.qt.threading import WorkerBase

    from napari_sam._qt.widget import SamWidget

    source = _model_source()
    viewer = make_napari_viewer(show=True)
    viewer.add_image(stack.image, name="nuclei")
    widget = SamWidget(viewer, model=source)
    widget._ui.precompute.setChecked(False)
    viewer.window.add_dock_widget(widget, name="SAM")
    qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
    viewer.dims.current_step = (Z, 0, 0)
    yield viewer, widget
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    if not widget._closed:
        viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not WorkerBase._worker_set, timeout=20000)


def _mouse(layer, kind: str, at, modifiers=()) -> None:
    """One mouse event at world position ``at`` (z, row, col) through the layer's own mouse handlers."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    handler = {"press": mouse_press_callbacks, "move": mouse_move_callbacks, "release": mouse_release_callbacks}[kind]
    event = read_only_mouse_event(type=f"mouse_{kind}", is_dragging=kind == "move", position=tuple(map(float, at)),
                                  modifiers=list(modifiers), dims_displayed=[1, 2])
    handler(layer, event)


def _drag(layer, *path) -> None:
    """Press at ``path[0]``, move through the rest, release at the last (world (z, row, col))."""
    _mouse(layer, "press", path[0])
    for at in path[1:]:
        _mouse(layer, "move", at)
    _mouse(layer, "release", path[-1])


def _settled(qtbot, widget) -> str:
    """The status line once SAM has answered every change."""
    qtbot.wait(50)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    return widget._ui.status.text()


def _bbox(mask: np.ndarray, margin: float = 3) -> tuple[float, float, float, float]:
    rr, cc = np.nonzero(mask)
    return rr.min() - margin, cc.min() - margin, rr.max() + margin, cc.max() + margin


@pytest.mark.parametrize("box, clipped", [
    ((10, 20, 30, 40), (10, 20, 30, 40)),  # inside: as it is
    ((-40, 20, 30, 90), (0, 20, 30, 63)),  # reaching beyond the top and the right: cut to the pixel centres
    ((30, 40, 10, 20), (10, 20, 30, 40)),  # corners in any order
    ((-60, -60, -20, -20), None),  # outside
    ((-10, 5, 0.5, 30), None),  # less than a pixel of it on the slice
])
def test_clip_box_cuts_a_box_to_the_slice(box, clipped):
    from napari_sam.core.prompts import clip_box

    out = clip_box(np.array(box, float), (48, 64))
    assert (out is None) if clipped is None else np.allclose(out, clipped), out


def test_an_ellipse_or_polygon_around_an_object_is_its_box_and_a_line_says_what_to_do(sam, qtbot, stack):
    """Every shape but a rectangle was ignored ("1 shape(s) that are not rectangles were ignored"), also the
    polygon napari makes of a rectangle whose corner is moved with the direct-select tool: the preview of
    the box the user was adjusting disappeared."""
    viewer, widget = sam
    A = stack.labels[Z] == _objects_by_size(stack.labels[Z])[0]
    r0, c0, r1, c1 = _bbox(A)
    boxes = viewer.layers["nuclei SAM boxes"]
    boxes.mode = "add_ellipse"
    _drag(boxes, (Z, r0, c0), (Z, (r0 + r1) / 2, (c0 + c1) / 2), (Z, r1, c1))
    assert boxes.shape_type == ["ellipse"]
    ellipse = _wait_preview(qtbot, viewer, widget) > 0
    assert _iou(ellipse, A) >= 0.8, _iou(ellipse, A)

    boxes.data = []
    boxes.mode = "add_rectangle"
    _drag(boxes, (Z, r0, c0), (Z, r1, c1))
    _wait_preview(qtbot, viewer, widget)
    boxes.mode = "direct"  # a corner moved with the direct-select tool: napari makes the rectangle a polygon
    _drag(boxes, (Z, r0, c0), (Z, r0 - 1, c0 - 1), (Z, r0 - 2, c0 - 2))
    assert boxes.shape_type == ["polygon"]
    status = _settled(qtbot, widget)
    assert "candidate 1/" in status and "not used" not in status, status
    assert _iou(_preview(viewer) > 0, A) >= 0.8, _iou(_preview(viewer) > 0, A)

    boxes.data = []
    boxes.mode = "add_line"
    _drag(boxes, (Z, r0, c0), (Z, r1, c1))
    status = _settled(qtbot, widget)
    assert status == ("z=4: 1 line(s) or path(s) not used (they enclose nothing): draw a rectangle around the object, "
                      "or click on it in the points layer"), status
    assert not _preview(viewer).any()

    boxes.data = []
    boxes.mode = "add_rectangle"
    _drag(boxes, (Z, r0, c0), (Z, r1, c1))
    _wait_preview(qtbot, viewer, widget)
    boxes.mode = "select"  # turned by its rotation handle, a quarter of the way round its centre
    handle = boxes._selected_box[9]
    centre = np.array([(r0 + r1) / 2, (c0 + c1) / 2])
    turned = centre + np.array([[0.7, -0.7], [0.7, 0.7]]) @ (handle - centre)
    _drag(boxes, (Z, *handle), (Z, *turned))
    assert not np.allclose(np.asarray(boxes.data[0])[:, 1], r0) and boxes.shape_type == ["rectangle"]
    status = _settled(qtbot, widget)
    assert "candidate 1/" in status and "Note: 1 rotated shape(s) used as the upright box around them" in status, status


def test_a_click_with_the_rectangle_tool_is_no_box(sam, qtbot, stack):
    """A click with the rectangle tool makes a rectangle of a few screen pixels (1.3 px here; under 1 px when
    zoomed in): SAM got it as a box around the object, or, under 1 px, it vanished without a word."""
    viewer, widget = sam
    A = stack.labels[Z] == _objects_by_size(stack.labels[Z])[0]
    boxes = viewer.layers["nuclei SAM boxes"]
    boxes.mode = "add_rectangle"
    _drag(boxes, (Z, *interior_point(A)))
    assert len(boxes.data) == 1
    status = _settled(qtbot, widget)
    assert status == ("z=4: 1 shape(s) under 3 px not used (a click with the rectangle tool?): drag to draw a "
                      "box around the object, or click on it in the points layer"), status
    assert not _preview(viewer).any()


def test_prompts_beside_the_image_are_cut_to_it_or_left_out(sam, qtbot, stack):
    """A box reaching 40 px beyond the image gave an object at the border with IoU 0.26; a click beside
    the image, or a box entirely outside it, made the whole slice an error (no preview at all)."""
    viewer, widget = sam
    lab = stack.labels[Z]
    edge = np.unique(lab[:, 0])
    B = lab == max((i for i in edge if i), key=lambda i: (lab == i).sum())  # the largest object on the left edge
    r0, c0, r1, c1 = _bbox(B, 2)
    assert c0 < 0
    boxes = viewer.layers["nuclei SAM boxes"]
    boxes.add_rectangles(np.array([[Z, r0, c0 - 40], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0 - 40]], float))
    beyond = _wait_preview(qtbot, viewer, widget) > 0
    assert _iou(beyond, B) >= 0.8, _iou(beyond, B)

    boxes.data = []
    boxes.add_rectangles(np.array([[Z, -60, -60], [Z, -60, -20], [Z, -20, -20], [Z, -20, -60]], float))
    A = lab == _objects_by_size(lab)[0]
    points = viewer.layers["nuclei SAM points"]
    points.add([[Z, *interior_point(A)]])
    points.add([[Z, -12.0, 40.0]])  # a click just above the image
    shown = _wait_preview(qtbot, viewer, widget) > 0
    assert _iou(shown, A) >= MIN_CLICK_IOU
    status = widget._ui.status.text()
    assert ("Note: 1 point(s) outside the image (rows 0..255, cols 0..255) not used; "
            "1 shape(s) outside the image not used.") in status, status


def test_the_candidate_chosen_stays_when_a_box_is_put_back_and_is_what_commit_writes(sam, qtbot, stack):
    """A box dragged and put back where it was (or any event that leaves the prompts as they were) reset the
    choice to candidate 1, and C then committed candidate 1, not the one the user had picked."""
    viewer, widget = sam
    lab = stack.labels[Z]
    A = lab == _objects_by_size(lab)[1]
    before = np.zeros(stack.labels.shape, np.uint16)
    before[Z][lab == _objects_by_size(lab)[0]] = 7  # the user's objects, on this slice and the next
    before[Z + 1][A] = 3
    curated = viewer.add_labels(before.copy(), name="curated")
    i = widget._ui.labels.findText("curated")
    widget._ui.labels.setCurrentIndex(i)
    widget._ui.labels.activated.emit(i)
    boxes = viewer.layers["nuclei SAM boxes"]
    r0, c0, r1, c1 = _bbox(A, 4)
    boxes.add_rectangles(np.array([[Z, r0, c0], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0]], float))
    _wait_preview(qtbot, viewer, widget)
    _press(viewer, "K")
    assert "candidate 2/" in widget._ui.status.text()
    chosen = _preview(viewer) > 0

    boxes.mode = "select"
    centre = (Z, (r0 + r1) / 2, (c0 + c1) / 2)
    _drag(boxes, centre, (Z, centre[1] + 15, centre[2] + 10), centre)  # dragged away and put back
    status = _settled(qtbot, widget)
    assert "candidate 2/" in status and widget._ui.candidates.currentRow() == 1, status
    np.testing.assert_array_equal(_preview(viewer) > 0, chosen)

    _press(viewer, "C")
    after = np.asarray(curated.data)
    assert "Committed label 8 on z=4" in widget._ui.status.text(), widget._ui.status.text()
    np.testing.assert_array_equal(after[Z] == 8, chosen & (before[Z] == 0), "exactly the candidate shown, new id")
    keep = after != 8
    np.testing.assert_array_equal(after[keep], before[keep], "every other label untouched")


def test_after_clicking_a_candidates_line_its_keys_still_work(sam, qtbot, stack):
    """The docs: "Press K (or click a line)". After a click on a line the keyboard focus is in the list, where
    C and K did nothing at all (the list took them as a search), while the status line said "C commits"."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    viewer, widget = sam
    lab = stack.labels[Z]
    A = lab == _objects_by_size(lab)[1]
    viewer.layers["nuclei SAM points"].add([[Z, *interior_point(A)]])
    _wait_preview(qtbot, viewer, widget)
    window = viewer.window._qt_window
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    lines = widget._ui.candidates
    qtbot.mouseClick(lines.viewport(), Qt.MouseButton.LeftButton, pos=lines.visualItemRect(lines.item(2)).center())
    assert QApplication.focusWidget() is lines and "candidate 3/3" in widget._ui.status.text()
    qtbot.keyClick(lines, Qt.Key.Key_K)  # the next one: back to the first
    assert lines.currentRow() == 0 and "candidate 1/3" in widget._ui.status.text()
    qtbot.keyClick(lines, Qt.Key.Key_K, Qt.KeyboardModifier.ShiftModifier)
    assert lines.currentRow() == 2
    shown = _preview(viewer) > 0
    qtbot.keyClick(lines, Qt.Key.Key_C)
    labels = viewer.layers["nuclei SAM labels"]
    assert set(np.unique(labels.data)) == {0, 1}
    np.testing.assert_array_equal(labels.data[Z] == 1, shown)


def test_a_pasted_box_is_a_prompt(sam, qtbot, stack):
    """Ctrl-C / Ctrl-V of a box onto the next slice (napari puts it on the slice shown): napari's paste emits
    no data event, and nothing happened until some other change."""
    viewer, widget = sam
    lab = stack.labels[Z]
    obj = _objects_by_size(lab)[0]
    boxes = viewer.layers["nuclei SAM boxes"]
    r0, c0, r1, c1 = _bbox(lab == obj, 4)
    boxes.add_rectangles(np.array([[Z, r0, c0], [Z, r0, c1], [Z, r1, c1], [Z, r1, c0]], float))
    _wait_preview(qtbot, viewer, widget)
    viewer.layers.selection.active = boxes
    boxes.mode = "select"
    boxes.selected_data = {0}
    _press(viewer, "Control-C")
    viewer.dims.current_step = (Z + 1, 0, 0)
    _settled(qtbot, widget)
    assert not _preview(viewer).any()
    _press(viewer, "Control-V")
    assert [int(d[0, 0]) for d in boxes.data] == [Z, Z + 1]
    pasted = _wait_preview(qtbot, viewer, widget) > 0
    assert "z=5" in widget._ui.status.text()
    assert _iou(pasted, stack.labels[Z + 1] == obj) >= 0.8

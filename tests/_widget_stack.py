"""A synthetic nuclei stack in a real napari viewer with the SAM widget docked, for the tests of the z
tools (test_widget_propagate.py, test_widget_every_slice.py, test_widget_propagate_control.py).

Objects are committed by writing their ground-truth mask on the middle slice into the labels layer
(as a commit would). Import the fixtures (``stack``, ``open_sam``, ``sam``) into a test module to use
them. Uses the embedded model (skipped without it).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.synthetic import make_stack

from .conftest import EMBEDDED

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


def _no_workers(qtbot) -> None:
    from napari.qt.threading import WorkerBase

    qtbot.waitUntil(lambda: not WorkerBase._worker_set, timeout=20000)

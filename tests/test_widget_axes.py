"""The z tools of the widget on stacks with more axes than (z, y, x): which axis propagation follows,
and which slices of a whole-stack disk cache it reads.

A (z, c, y, x) stack whose axes the viewer names z, c, y, x (a reader's labels, or the user's) was
propagated through its channels, the last hidden axis; a (z, 1, y, x) stack propagated along z but
read the disk cache as if z were its last leading axis. Uses the embedded model (skipped without it).
"""

from __future__ import annotations

import numpy as np
import pytest

from ._widget_stack import OBJ, Z, _commit, _iou, _run, open_sam, stack  # noqa: F401 (fixtures)
from .test_widget_propagate import _fresh_then_from_disk, encoder_calls  # noqa: F401 (fixture)

pytestmark = pytest.mark.gui


def test_z_axis_follows_the_axis_names_and_never_channels():
    from napari_sam._qt._plane import Plane
    from napari_sam._qt._propagate import PropagateError, z_axis_of

    zc = Plane(((0, 5), (1, 0)), (2, 3), (6, 7), "z=5, c=0", (8, 2, 6, 7), ("z", "c", "y", "x"))
    assert z_axis_of(zc) == 0
    tc = Plane(((0, 5), (1, 0)), (2, 3), (6, 7), "t=5, C=0", (8, 2, 6, 7), ("t", "C", "y", "x"))
    assert z_axis_of(tc) == 0, "not the channels, even without a z"
    tz = Plane(((0, 1), (1, 3)), (2, 3), (6, 7), "t=1, z=3", (2, 5, 6, 7), ("t", "z", "y", "x"))
    assert z_axis_of(tz) == 1
    unnamed = Plane(((0, 1), (1, 3)), (2, 3), (6, 7), "t=1, z=3", (2, 5, 6, 7))
    assert z_axis_of(unnamed) == 1, "without names: the last hidden axis with slices, as before"
    channels = Plane(((0, 1),), (1, 2), (6, 7), "channel=1", (3, 6, 7), ("channel", "y", "x"))
    with pytest.raises(PropagateError, match="the axes not shown are channels"):
        z_axis_of(channels)


def test_a_stack_named_z_c_y_x_propagates_through_z_in_its_channel(open_sam, qtbot, stack):
    """Nuclei in channel 0, the same stack mirrored in channel 1; the object committed on z=Z, c=0. It was
    propagated along c ("Propagation added no pixels", or the object written into channel 1)."""
    image = np.stack([stack.image, stack.image[:, :, ::-1]], 1)  # (z, c, y, x)
    viewer, widget, labels = open_sam(image, (Z, 0, 0, 0))
    viewer.dims.axis_labels = ("z", "c", "y", "x")
    _commit(labels, stack.labels[Z] == OBJ, 3, at=(Z, 0))
    labels.selected_label = 3
    status = _run(qtbot, widget, widget._ui.propagate_object)
    assert "Propagated" in status and "label 3: z=" in status, status
    out = np.asarray(labels.data)
    assert not out[:, 1].any(), "nothing in the other channel"
    reached = np.nonzero(out[:, 0].any((1, 2)))[0]
    assert len(reached) >= 3 and Z in reached
    iou = _iou(out[:, 0] == 3, stack.labels == OBJ)
    assert iou > 0.5, f"3D IoU {iou:.2f}"


def test_an_image_whose_only_other_axis_is_channels_is_not_propagated(open_sam, qtbot, stack):
    image = np.stack([stack.image[Z], stack.image[Z + 1]])  # (c, y, x)
    viewer, widget, labels = open_sam(image, (0, 0, 0))
    viewer.dims.axis_labels = ("c", "y", "x")
    _commit(labels, stack.labels[Z] == OBJ, 3, at=(0,))
    labels.selected_label = 3
    before = np.array(labels.data, copy=True)
    widget._ui.propagate_object.click()
    assert not widget.propagating
    assert "the axes not shown are channels (c=0)" in widget._ui.status.text(), widget._ui.status.text()
    np.testing.assert_array_equal(labels.data, before)


def test_a_z_1_y_x_stack_propagates_from_its_whole_stack_disk_cache(open_sam, qtbot, stack, encoder_calls,
                                                                     tmp_path):
    """(z, 1, y, x): the disk cache's leading axes are (z, 1); the run read slice z' at (Z, z'): "Propagation
    failed: index out of bounds for dimension with length 1"."""
    viewer, widget, labels = open_sam(stack.image[:, None], (Z, 0, 0, 0))
    _commit(labels, stack.labels[Z] == OBJ, 5, at=(Z, 0))
    labels.selected_label = 5
    fresh, disk = _fresh_then_from_disk(qtbot, widget, labels, tmp_path / "z1.zarr", encoder_calls)
    assert (disk[:, 0] == 5).any((1, 2)).sum() >= 3
    differ = np.count_nonzero(fresh != disk)
    assert differ <= 0.02 * np.count_nonzero((fresh == 5) | (disk == 5)), f"{differ} px differ"

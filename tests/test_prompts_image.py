"""The one coordinate converter and the one normalisation."""

import numpy as np
import pytest

from napari_sam.core.image import to_sam_rgb
from napari_sam.core.prompts import ObjectPrompt, box_from_corners, check_inside, to_sam


def test_points_row_col_become_x_y_scaled_per_axis():
    pts, _ = to_sam(np.array([[10.0, 20.0], [0.0, 5.0]]), None, scale_rc=(2.0, 0.5))
    np.testing.assert_allclose(pts, [[10.0, 20.0], [2.5, 0.0]])  # (x=col*0.5, y=row*2)


def test_boxes_become_xyxy_with_corners_in_any_order():
    _, b = to_sam(None, np.array([[30.0, 40.0, 10.0, 5.0]]))
    np.testing.assert_allclose(b, [[5.0, 10.0, 40.0, 30.0]])


def test_napari_rectangle_vertices_to_box():
    verts = np.array([[10, 5], [10, 40], [30, 40], [30, 5]], float)
    np.testing.assert_allclose(box_from_corners(verts), [10, 5, 30, 40])


def test_points_outside_are_refused_with_the_slice_size():
    check_inside(np.array([[0.0, 0.0], [99.0, 49.0]]), None, (100, 50))
    with pytest.raises(ValueError, match=r"point \(row=100, col=3\) is outside the slice of 100x50"):
        check_inside(np.array([[100.0, 3.0]]), None, (100, 50))


@pytest.mark.parametrize("prompt, message", [
    (dict(points=[[np.nan, 5.0]]), "a point has a NaN or infinite coordinate"),
    (dict(points=[[4.0, 5.0]], labels=[-1]), "point label -1 is neither 1 .positive. nor 0 .negative."),
    (dict(points=[[4.0, 5.0]], labels=[2]), "point label 2 is neither"),
    (dict(points=[[4.0, 5.0]], labels=[1, 0]), r"1 point\(s\) but 2 point label\(s\)"),
    (dict(box=[np.nan, 1, 20, 20]), "the box has a NaN or infinite coordinate"),
])
def test_prompts_sam_would_take_silently_are_refused(prompt, message):
    """-1 and 2/3 are SAM's own codes (padding, box corners): passed through they gave IoU 0.01 / 0.44."""
    with pytest.raises(ValueError, match=message):
        ObjectPrompt(**prompt)


def test_an_integer_mask_is_a_mask_even_of_the_logits_grid_size(embedded_model):
    """A uint8 0/1 mask of a 128 px slice has the shape of the embedded model's low-res grid there: it was
    read as logits (IoU 0.003). It is a mask, as the same mask in bool."""
    from napari_sam import segment
    from napari_sam.synthetic import interior_point, make_image

    st = make_image((128, 128), seed=4, radius_range=(8, 14))
    gt = st.labels == np.bincount(st.labels.ravel())[1:].argmax() + 1
    pt = interior_point(gt)[None]
    kw = dict(points=pt, model=embedded_model, input_scale=2.0)
    as_bool = segment(st.image, mask=gt, **kw)
    as_uint8 = segment(st.image, mask=gt.astype(np.uint8), **kw)
    np.testing.assert_array_equal(as_uint8.masks, as_bool.masks)
    assert (as_bool.masks[0, 0] & gt).sum() / (as_bool.masks[0, 0] | gt).sum() > 0.7


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int32])
def test_normalisation_is_robust_and_in_range(dtype):
    rng = np.random.default_rng(0)
    a = (rng.random((64, 64)) * 100).astype(dtype)
    a[0, 0] = 100 if np.issubdtype(dtype, np.integer) and np.iinfo(dtype).max < 1000 else 60000  # a hot pixel
    out = to_sam_rgb(a)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    # the hot pixel does not set the contrast: the bulk still spans the range
    assert np.percentile(out[..., 0], 98) > 200


def test_nan_and_inf_are_handled():
    a = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    a[0, :5] = np.nan
    a[1, :5] = np.inf
    a[2, :5] = -np.inf
    out = to_sam_rgb(a)[..., 0]
    assert np.isfinite(out).all()
    assert (out[0, :5] == 0).all() and (out[1, :5] == 255).all() and (out[2, :5] == 0).all()


def test_bool_is_black_and_white():
    a = np.zeros((8, 8), bool)
    a[2:4] = True
    out = to_sam_rgb(a)
    assert set(np.unique(out)) == {0.0, 255.0}


def test_channels_one_or_composite():
    a = np.zeros((2, 16, 16), np.uint16)
    a[0, :8] = 1000
    a[1, 8:] = 50
    one = to_sam_rgb(a, channel_axis=0, channel=1)
    assert (one[8:, :, 0] > 200).all() and (one[:8, :, 0] < 1).all()
    comp = to_sam_rgb(a, channel_axis=0)  # 2 channels: composite of normalised channels
    assert np.allclose(comp[:8, :, 0], comp[8:, :, 0])
    with pytest.raises(ValueError, match="channel 5 does not exist: the image has 2 channels"):
        to_sam_rgb(a, channel_axis=0, channel=5)
    with pytest.raises(ValueError, match="channel=1 needs channel_axis"):  # was silently ignored
        to_sam_rgb(a[:, :, :], channel=1)
    with pytest.raises(ValueError, match=r"complex-valued: give its magnitude \(np.abs\)"):  # was a warning
        to_sam_rgb(a[0] * (1 + 1j))


def test_rgb_uint8_passes_through_unchanged_without_normalisation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_sam_rgb(a, channel_axis=-1, normalize="none"), a.astype(np.float32))


def test_stack_instead_of_slice_is_explained():
    with pytest.raises(ValueError, match="pick a slice of a stack first"):
        to_sam_rgb(np.zeros((3, 4, 5, 6)))


def _edge_object():
    from napari_sam.synthetic import make_stack

    st = make_stack((12, 128, 128), seed=900_778, kind="nuclei", radius_range=(10, 20), density=0.35)
    z = 6
    lab = st.labels[z]
    edge = [i for i in np.unique(lab[:, 0]) if i]
    oid = max(edge, key=lambda i: (lab == i).sum())  # the largest object on the left edge
    r, c = np.nonzero(lab == oid)
    return st, z, oid, np.array([r.min(), c.min(), r.max(), c.max()], np.float32)


def test_a_box_reaching_beyond_the_slice_is_cut_to_it(embedded_model):
    """A box 40 px beyond the left edge (drawn past the border in napari, or from a table) gave SAM no
    image there: the API, the CLI and propagation cut it to the slice, as the widget does."""
    import napari_sam

    st, z, oid, box = _edge_object()
    gt = st.labels[z] == oid
    wide = box - np.array([0, 40, 0, 0], np.float32)
    cut = box.copy()
    cut[1] = 0
    a = napari_sam.segment(st.image[z], boxes=[wide], model=embedded_model, multimask=False, input_scale=None)
    b = napari_sam.segment(st.image[z], boxes=[cut], model=embedded_model, multimask=False, input_scale=None)
    assert np.array_equal(a.masks, b.masks)
    iou = (a.masks[0, 0] & gt).sum() / (a.masks[0, 0] | gt).sum()
    assert iou >= 0.7, iou
    out = napari_sam.propagate(st.image, {7: {z: {"box": wide}}}, model=embedded_model, input_scale=None)
    m = out[z] == 7
    assert (m & gt).sum() / (m | gt).sum() >= 0.7
    assert set(np.unique(out)) == {0, 7}

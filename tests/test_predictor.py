"""The predictor against segment-anything's official SamPredictor, on a small
randomly initialised SAM saved to a file and loaded through our loader."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from napari_sam.core.models import load_model

    from ._sam_helpers import save_tiny_vit

    path = save_tiny_vit(tmp_path_factory.mktemp("ckpt") / "tiny_vit.pth")
    return load_model(str(path), device="cpu")


@pytest.fixture(scope="module")
def official(tiny_vit):
    from segment_anything import SamPredictor

    return SamPredictor(tiny_vit.sam)


@pytest.fixture(scope="module")
def rgb_image():
    rng = np.random.default_rng(1)
    img = (rng.random((300, 420, 3)) * 255).astype(np.uint8)
    img[100:180, 150:260] = (220, 200, 180)  # a bright object
    return img


@pytest.fixture(scope="module")
def pair(tiny_vit, official, rgb_image):
    from napari_sam.core.predictor import SlicePredictor

    ours = SlicePredictor(tiny_vit, normalize="none", fast=False)
    ours.set_image(rgb_image, channel_axis=-1)
    official.set_image(rgb_image)
    return ours, official


def test_embedding_equals_official(pair):
    ours, off = pair
    assert torch.equal(ours.embedding.features, off.features)
    assert ours.embedding.original_size == tuple(off.original_size)
    assert ours.embedding.input_size == tuple(off.input_size)


@pytest.mark.parametrize("multimask", [True, False])
def test_points_equal_official(pair, multimask):
    ours, off = pair
    pts_rc = np.array([[140.0, 200.0], [20.0, 30.0]])
    labels = np.array([1, 0])
    r = ours.predict(points=pts_rc, point_labels=labels, multimask=multimask)
    m, s, lr = off.predict(point_coords=pts_rc[:, ::-1].copy(), point_labels=labels, multimask_output=multimask)
    assert r.masks.shape == (1, 3 if multimask else 1, 300, 420)
    np.testing.assert_array_equal(r.masks[0], m)
    np.testing.assert_allclose(r.scores[0], s, atol=1e-4)
    np.testing.assert_allclose(r.low_res_logits[0], lr, atol=1e-4)


def test_box_and_mask_prompt_equal_official(pair):
    ours, off = pair
    box_rc = np.array([90.0, 140.0, 190.0, 270.0])  # row0, col0, row1, col1
    r = ours.predict(boxes=box_rc, multimask=False)
    m, s, lr = off.predict(box=box_rc[[1, 0, 3, 2]], multimask_output=False)
    np.testing.assert_array_equal(r.masks[0], m)
    np.testing.assert_allclose(r.scores[0], s, atol=1e-4)
    # refinement with the previous low-res logits as mask prompt
    pts = np.array([[140.0, 200.0]])
    r2 = ours.predict(points=pts, point_labels=[1], mask=r.low_res_logits[0], multimask=False)
    m2, s2, _ = off.predict(point_coords=pts[:, ::-1].copy(), point_labels=np.array([1]), mask_input=lr, multimask_output=False)
    np.testing.assert_array_equal(r2.masks[0], m2)
    np.testing.assert_allclose(r2.scores[0], s2, atol=1e-4)


def test_several_boxes_are_several_objects_in_one_batch(pair):
    ours, off = pair
    boxes_rc = np.array([[90.0, 140.0, 190.0, 270.0], [10.0, 10.0, 100.0, 120.0], [200, 300, 290, 410]])
    r = ours.predict(boxes=boxes_rc, multimask=False)
    bt = off.transform.apply_boxes_torch(torch.tensor(boxes_rc[:, [1, 0, 3, 2]]).float(), off.original_size)
    m, s, _ = off.predict_torch(None, None, boxes=bt, multimask_output=False)
    assert r.masks.shape == (3, 1, 300, 420)
    np.testing.assert_array_equal(r.masks, m.numpy())
    np.testing.assert_allclose(r.scores, s.numpy(), atol=1e-4)


def test_points_outside_slice_are_refused(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match=r"outside the slice of 300x420"):
        ours.predict(points=[[310.0, 5.0]])


def test_bad_mask_prompt_shape_is_explained(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match=r"expected the slice's shape \(300, 420\)"):
        ours.predict(points=[[140.0, 200.0]], mask=np.zeros((10, 10), bool))


def test_several_boxes_with_points_need_per_object_prompts(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="predict_objects"):
        ours.predict(points=[[1.0, 1.0]], boxes=[[0, 0, 5, 5], [6, 6, 9, 9]])


def test_no_image_set_is_explained(tiny_vit):
    from napari_sam.core.predictor import SlicePredictor

    with pytest.raises(RuntimeError, match="set_image"):
        SlicePredictor(tiny_vit).predict(points=[[1.0, 1.0]])

"""Every object of a z-stack without a click (``napari_sam.find_in_stack``, ``core.find_stack``), against the
ground truth of a generated stack, with the shipped model."""

import numpy as np
import pytest

import napari_sam
from napari_sam.core.find_stack import continuing, finding_in_stack, slices_to_look
from napari_sam.core.predictor import SlicePredictor

from .conftest import needs_embedded


@pytest.fixture(scope="module")
def nuclei():
    """A (16, 128, 128) stack of nuclei 3-9 slices deep, many of them absent from its middle slice."""
    from napari_sam.synthetic import make_stack

    return make_stack((16, 128, 128), seed=900_600, kind="nuclei", radius_range=(7.0, 14.0), density=0.35)


def _matched(gt, labels, min_voxels=200):
    """{true object of >= min_voxels: its best 3D IoU with one found object}."""
    out = {}
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    for i in ids[counts >= min_voxels]:
        m = gt == i
        out[int(i)] = max([((labels == k) & m).sum() / ((labels == k) | m).sum()
                           for k in np.unique(labels[m]) if k], default=0.0)
    return out


@needs_embedded
def test_objects_off_the_middle_slice_are_found_on_other_slices_and_carried_through_z(nuclei, embedded_model):
    gt = nuclei.labels
    one = napari_sam.find_in_stack(nuclei.image, model=embedded_model, every=100)  # the middle slice only
    found = napari_sam.find_in_stack(nuclei.image, model=embedded_model, every=3)
    assert one.looked == [8] and found.looked == [8, 5, 11, 2, 14]
    a, b = _matched(gt, one.labels), _matched(gt, found.labels)
    recall_one, recall = np.mean([v >= 0.5 for v in a.values()]), np.mean([v >= 0.5 for v in b.values()])
    # measured: of 51 crowded nuclei (density 0.35), 18 matched at 3D IoU >= 0.5 from the middle slice, 28 from
    # 5 slices; median 0.52
    assert len(b) == 51 and recall >= 0.5 and recall >= recall_one + 0.15, (recall_one, recall)
    assert np.median(list(b.values())) >= 0.45
    # every object has one id through z, recorded with the slice it was found on and its seed inside it
    ids = sorted(np.unique(found.labels[found.labels > 0]).tolist())
    assert ids == sorted(found.objects)
    for k, (z, seed, score) in found.objects.items():
        assert found.labels[z][tuple(np.round(seed).astype(int))] == k and 0 < score <= 1.5


@needs_embedded
def test_labels_given_are_kept_exactly_and_new_ids_follow_them(nuclei, embedded_model):
    gt = nuclei.labels
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    keep = ids[np.argsort(-counts)[:3]]
    drawn = np.where(np.isin(gt, keep), gt + 100, 0).astype(np.int32)
    drawn[8, :10, :10] = -1  # a signed layer's negative label: kept, never taken
    before = drawn.copy()
    found = napari_sam.find_in_stack(nuclei.image, model=embedded_model, every=4, labels=drawn)
    np.testing.assert_array_equal(drawn, before)  # the caller's array is not touched
    np.testing.assert_array_equal(found.labels[drawn > 0], drawn[drawn > 0])  # nor any of its pixels taken
    new = np.unique(found.labels[(found.labels > 0) & (drawn == 0)])
    assert len(new) >= 5 and new.min() > drawn.max() and found.labels.dtype == np.int64
    assert not set(new) & set(keep + 100)


@needs_embedded
def test_closing_the_run_midway_changes_nothing(nuclei, embedded_model):
    labels = np.zeros(nuclei.image.shape, np.uint16)
    gen = finding_in_stack(SlicePredictor(embedded_model), nuclei.image, every=4, labels=labels)
    stages = {next(gen).stage for _ in range(40)}
    gen.close()
    assert "find" in stages and not labels.any()


def test_slices_looked_on_go_outward_from_the_first():
    assert slices_to_look((0, 16), 4) == [8, 4, 12, 0]
    assert slices_to_look((0, 16), 4, z=0) == [0, 4, 8, 12]
    assert slices_to_look((2, 9), 1) == [5, 4, 6, 3, 7, 2, 8]
    with pytest.raises(ValueError, match="every=0: give how many slices apart"):
        slices_to_look((0, 16), 0)
    with pytest.raises(ValueError, match="z=20 is outside the slices 0..15"):
        slices_to_look((0, 16), 4, z=20)


def test_a_mask_over_an_object_that_ended_nearby_continues_it():
    labels = np.zeros((8, 20, 20), np.uint16)
    labels[1:4, 5:12, 5:12] = 1  # ends on slice 3
    labels[5, 0:4, 0:4] = 2  # on slice 5, where the mask is found
    mask = np.zeros((20, 20), bool)
    mask[6:11, 6:11] = True
    assert continuing(mask, labels, 5, 0.5, depth=2)  # slice 3 is two away
    assert not continuing(mask, labels, 5, 0.5, depth=1)
    labels[5, 15:18, 15:18] = 1  # the object is on slice 5 too: the mask is not its continuation
    assert not continuing(mask, labels, 5, 0.5, depth=2)


def test_find_in_stack_refuses_a_2d_image_and_unknown_settings():
    with pytest.raises(ValueError, match=r"takes a \(z, y, x\) stack, got one 2D slice of shape \(64, 64\): for "
                                         "one slice use find_objects"):
        napari_sam.find_in_stack(np.zeros((64, 64), np.uint8))
    with pytest.raises(TypeError, match=r"unknown settings \['min_scor'\]"):
        napari_sam.find_in_stack(np.zeros((4, 64, 64), np.uint8), min_scor=0.5)
    with pytest.raises(ValueError, match="use\n?.*find_in_stack"):
        napari_sam.find_objects(np.zeros((4, 64, 64), np.uint8))

"""Every object of a slice without a click (``napari_sam.find_objects``, ``core.automatic``), against the
ground truth of generated nuclei, with the shipped model."""

import numpy as np
import pytest

import napari_sam
from napari_sam.core.automatic import AutoSettings, find_objects, grid_seeds
from napari_sam.core.predictor import SlicePredictor

from .conftest import needs_embedded


@pytest.fixture(scope="module")
def nuclei():
    """A (8, 160, 160) stack of 41 nuclei (radius 6-14 px), 33 of >= 80 px on its slice 4."""
    from napari_sam.synthetic import make_stack

    return make_stack((8, 160, 160), seed=13, kind="nuclei", dtype="uint16", radius_range=(6.0, 14.0))


def _best_ious(gt, found, min_px=80):
    """Each true object of >= min_px: its IoU with the found object that overlaps it most."""
    out = {}
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    for i in ids[counts >= min_px]:
        m = gt == i
        under = np.unique(found[m])
        out[int(i)] = max([((found == k) & m).sum() / ((found == k) | m).sum() for k in under if k], default=0.0)
    return out


def _precision(gt, found):
    """Share of the found objects that are a true object (IoU >= 0.5 with one, of any size)."""
    hits = 0
    for k in np.unique(found[found > 0]):
        f = found == k
        hits += any((f & (gt == i)).sum() / (f | (gt == i)).sum() >= 0.5 for i in np.unique(gt[f]) if i)
    return hits / max(len(np.unique(found[found > 0])), 1)


@needs_embedded
def test_every_nucleus_of_a_slice_is_found_and_drawn_as_a_click_would(nuclei, embedded_model):
    gt = nuclei.labels[4]
    found = napari_sam.find_objects(nuclei.image[4], model=embedded_model)
    ious = _best_ious(gt, found.labels)
    assert len(ious) == 33
    # measured: all 33 found at IoU >= 0.5, median 0.862; 35 of the 36 found objects are true objects
    assert np.mean([v >= 0.5 for v in ious.values()]) >= 0.9
    assert np.median(list(ious.values())) >= 0.8
    assert _precision(gt, found.labels) >= 0.85
    # ids 1..n, best first; one object per pixel by construction; each object's seed lies in it
    assert sorted(np.unique(found.labels[found.labels > 0])) == list(range(1, found.n + 1))
    assert len(found.seeds) == len(found.scores) == len(found.stability) == found.n
    assert (found.scores >= AutoSettings.min_score).all() and (found.stability >= AutoSettings.min_stability).all()
    r, c = np.round(found.seeds).astype(int).T
    assert (found.labels[r, c] == np.arange(1, found.n + 1)).mean() >= 0.9


@needs_embedded
def test_labels_already_drawn_are_never_taken_and_not_found_again(nuclei, embedded_model):
    gt = nuclei.labels[4]
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    drawn = np.where(np.isin(gt, ids[counts >= 200][:5]), gt, 0).astype(np.uint16)
    alone = napari_sam.find_objects(nuclei.image[4], model=embedded_model)
    found = napari_sam.find_objects(nuclei.image[4], model=embedded_model, labels=drawn)
    assert not (found.labels[drawn > 0]).any()  # not a pixel of the drawn objects
    assert found.n <= alone.n - 5  # nor a leftover rim of them: 5 objects fewer
    rest = _best_ious(np.where(drawn > 0, 0, gt), found.labels)
    assert np.mean([v >= 0.5 for v in rest.values()]) >= 0.9  # the others are still found


@needs_embedded
def test_an_empty_or_flat_slice_gives_no_objects(embedded_model):
    pred = SlicePredictor(embedded_model)
    rng = np.random.default_rng(0)
    for img in (np.zeros((96, 96), np.uint16), rng.normal(100, 5, (96, 96)).astype(np.float32)):
        pred.set_image(img)
        found = find_objects(pred)
        assert found.n == 0 and not found.labels.any(), found.n


@needs_embedded
def test_found_objects_propagate_through_the_stack_as_drawn_masks(nuclei, embedded_model):
    found = napari_sam.find_objects(nuclei.image[4], model=embedded_model)
    labels = napari_sam.propagate(nuclei.image, found.prompts(4), model=embedded_model)
    assert np.array_equal(labels[4], found.labels)  # kept exactly on the slice they were found on
    gt = nuclei.labels
    ious = []
    for k in range(1, found.n + 1):  # each found object against the true object it is on slice 4
        under, n = np.unique(gt[4][found.labels == k], return_counts=True)
        true = under[np.argmax(n)]
        if true:
            a, b = labels == k, gt == true
            ious.append((a & b).sum() / (a | b).sum())
    # measured: 36 found objects on a true one, median 3D IoU 0.79 (p10 0.68), from no click at all
    assert len(ious) >= 33 and np.median(ious) >= 0.7, (len(ious), np.median(ious))


def test_bad_input_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match=r"one 2D slice.*\(4, 32, 32\).*stack\[z\]"):
        napari_sam.find_objects(np.zeros((4, 32, 32)))
    with pytest.raises(TypeError, match=r"unknown settings \['spacng'\]"):
        napari_sam.find_objects(np.zeros((32, 32)), spacng=3)
    with pytest.raises(ValueError, match="spacing=0.*>= 1"):
        AutoSettings(spacing=0).check()
    with pytest.raises(ValueError, match="min_score=1.5.*between 0 and 1"):
        AutoSettings(min_score=1.5).check()
    with pytest.raises(ValueError, match='not .auto.'):
        napari_sam.find_objects(np.zeros((32, 32)), input_scale="auto")


@needs_embedded
def test_labels_of_another_shape_are_refused(embedded_model):
    with pytest.raises(ValueError, match=r"labels given have shape \(10, 10\), the slice \(32, 32\)"):
        napari_sam.find_objects(np.zeros((32, 32)), model=embedded_model, labels=np.zeros((10, 10), int))


def test_the_seed_grid_is_6_px_and_thinned_only_on_a_cpu_above_384_px():
    everywhere = AutoSettings(min_brightness=0)
    small, large = np.zeros((256, 256), np.uint8), np.zeros((1024, 1024), np.uint8)
    assert len(grid_seeds(small, everywhere, cpu=True)) == len(grid_seeds(small, everywhere, cpu=False)) == 43 ** 2
    assert len(grid_seeds(large, everywhere, cpu=True)) == 64 ** 2  # 16 px: ~4,096 points on a CPU
    assert len(grid_seeds(large, everywhere, cpu=False)) == 171 ** 2  # 6 px on a GPU
    assert len(grid_seeds(large, AutoSettings(min_brightness=0, spacing=6), cpu=True)) == 171 ** 2
    # the grid covers the slice evenly: pixel centres from ~half a spacing in
    g = grid_seeds(small, everywhere)
    assert 2 <= g.min() and g.max() <= 253
    bright = np.zeros((256, 256), np.uint8)
    bright[100:140, 100:140] = 200  # fluorescence: seeds only on (and just around) the bright part
    r, c = grid_seeds(bright, AutoSettings()).T
    assert len(r) and (r > 90).all() and (r < 150).all() and (c > 90).all() and (c < 150).all()

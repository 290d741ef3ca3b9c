"""``napari_sam.segment`` encodes a slice once however many calls click on it (``api.EMBEDDINGS``), gives
exactly what a fresh encoding gives, and never serves a stale embedding for an edited array."""

import numpy as np
import pytest

import napari_sam
from napari_sam import api
from napari_sam.core.predictor import SlicePredictor
from napari_sam.synthetic import interior_point, make_image

from .test_embedded import _iou, scene  # noqa: F401  (scene: 256 px nuclei, the ids of the large ones)


@pytest.fixture
def encodes(monkeypatch):
    """The slices the encoder runs on, in order; the API's embeddings emptied before and after."""
    seen = []
    real = SlicePredictor.embed

    def counting(self, slice2d, **kw):
        seen.append(np.array(slice2d, copy=True))
        return real(self, slice2d, **kw)

    monkeypatch.setattr(SlicePredictor, "embed", counting)
    api.EMBEDDINGS.clear()
    yield seen
    api.EMBEDDINGS.clear()


def test_clicking_objects_one_call_at_a_time_encodes_the_slice_once(embedded_model, scene, encodes):
    st, ids = scene
    ids = ids[:6]
    clicks = [interior_point(st.labels == i) for i in ids]
    first = [napari_sam.segment(st.image, points=[p], model=embedded_model, input_scale=None) for p in clicks]
    assert len(encodes) == 1  # one slice, one encoding, for six calls
    ious = [_iou(r.best()[0], st.labels == i) for r, i in zip(first, ids)]
    assert np.median(ious) >= 0.75 and min(ious) >= 0.6, ious
    # a copy of the array (another object, the same pixels) is the same slice
    again = napari_sam.segment(st.image.copy(), points=[clicks[0]], model=embedded_model, input_scale=None)
    assert len(encodes) == 1
    # exactly what encoding afresh gives: masks, scores and logits
    api.EMBEDDINGS.clear()
    fresh = napari_sam.segment(st.image, points=[clicks[0]], model=embedded_model, input_scale=None)
    assert len(encodes) == 2
    for r in (first[0], again):
        assert np.array_equal(r.masks, fresh.masks)
        assert np.array_equal(r.scores, fresh.scores)
        assert np.array_equal(r.low_res_logits, fresh.low_res_logits)


def test_an_array_edited_in_place_is_encoded_again(embedded_model, scene, encodes):
    st, ids = scene
    img = st.image.copy()
    gt = st.labels == ids[0]
    p = interior_point(gt)
    before = napari_sam.segment(img, points=[p], model=embedded_model, input_scale=None).best()[0]
    assert _iou(before, gt) >= 0.6
    img[gt] = np.median(img[st.labels == 0]).astype(img.dtype)  # the nucleus painted out, in place
    after = napari_sam.segment(img, points=[p], model=embedded_model, input_scale=None).best()[0]
    assert len(encodes) == 2
    assert _iou(after, gt) < 0.5  # the edited image's answer, not the nucleus that is gone


def test_each_magnification_and_channel_is_its_own_encoding(embedded_model, scene, encodes):
    st, ids = scene
    p = interior_point(st.labels == ids[0])
    rgb = np.stack([st.image, st.image[::-1], st.image[:, ::-1]], -1)
    runs = [dict(input_scale=1.0), dict(input_scale=2.0), dict(input_scale=1.0)]
    for kw in runs:
        napari_sam.segment(st.image, points=[p], model=embedded_model, **kw)
    assert len(encodes) == 2  # 1x and 2x, the second 1x call from memory
    a = napari_sam.segment(rgb, points=[p], channel_axis=-1, channel=0, model=embedded_model, input_scale=None)
    b = napari_sam.segment(rgb, points=[p], channel_axis=-1, channel=1, model=embedded_model, input_scale=None)
    assert len(encodes) == 4
    # each channel's answer is its own image's: channel 1 is the slice upside down
    flipped = napari_sam.segment(st.image[::-1].copy(), points=[p], model=embedded_model, input_scale=None)
    assert np.array_equal(b.masks, flipped.masks) and not np.array_equal(a.masks, b.masks)
    assert _iou(a.best()[0], st.labels == ids[0]) >= 0.6


def test_the_memory_budget_keeps_the_most_recent_slices(embedded_model, encodes, monkeypatch):
    images = [make_image((128, 128), seed=s).image for s in (1, 2, 3)]
    one = napari_sam.segment(images[0], points=[[64, 64]], model=embedded_model, input_scale=None)
    per_slice = api.EMBEDDINGS.nbytes
    monkeypatch.setattr(api.EMBEDDINGS, "max_bytes", 2 * per_slice)
    for img in images[1:]:
        napari_sam.segment(img, points=[[64, 64]], model=embedded_model, input_scale=None)
    assert len(api.EMBEDDINGS) == 2 and api.EMBEDDINGS.nbytes <= 2 * per_slice
    assert len(encodes) == 3
    napari_sam.segment(images[2], points=[[64, 64]], model=embedded_model, input_scale=None)
    assert len(encodes) == 3  # the most recent is kept
    again = napari_sam.segment(images[0], points=[[64, 64]], model=embedded_model, input_scale=None)
    assert len(encodes) == 4  # the oldest was let go, and is encoded again, to the same answer
    assert np.array_equal(again.masks, one.masks)

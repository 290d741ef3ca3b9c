"""core/choose.py: which candidate an ambiguous click shows first."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.core.choose import default_rule, edge_strength, rank_keys, respects_clicks


def _disc(shape, centre, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


@pytest.fixture
def nucleus():
    """A blurred, noisy nucleus of radius 12 (uint8, like the predictor's normalised slice) and 3
    candidates: too small (r 8), right (r 12), too large (r 17)."""
    rng = np.random.default_rng(0)
    truth = _disc((64, 64), (32, 32), 12)
    gray = ndi.gaussian_filter(truth * 160.0 + 30, 1.5) + rng.normal(0, 6, truth.shape)
    cands = np.stack([_disc((64, 64), (32, 32), r) for r in (8, 12, 17)])
    return np.clip(gray, 0, 255).astype(np.uint8), cands


def test_the_outline_on_the_edge_is_the_steepest(nucleus):
    gray, cands = nucleus
    s = edge_strength(gray, cands)
    assert np.argmax(s) == 1 and s[1] > 1.5 * max(s[0], s[2])
    # the same numbers from crops: the gradient is computed with enough context around them
    crop = edge_strength(gray, cands[:, 10:54, 12:56], r0=10, c0=12)
    np.testing.assert_allclose(crop, s, rtol=1e-5)
    assert edge_strength(gray, np.zeros((2, 64, 64), bool)).tolist() == [0.0, 0.0]


def test_score_times_edge_ranks_the_right_sized_mask_first(nucleus):
    gray, cands = nucleus
    scores = np.array([0.90, 0.85, 0.60])  # an IoU head that prefers the small one, as the embedded model's does
    assert np.argmax(rank_keys("score", scores, gray, cands)) == 0
    assert np.argmax(rank_keys("score*edge", scores, gray, cands)) == 1


def test_candidates_that_contradict_a_click_go_last(nucleus):
    gray, cands = nucleus
    scores = np.array([0.5, 0.9, 0.5])
    neg = [[32, 46]]  # inside the large candidate only... and a negative click at r 14 from the centre
    assert respects_clicks(cands, neg, [0]).tolist() == [True, True, False]
    pos = [[32, 42]]  # r 10: inside the right and the large candidates
    assert respects_clicks(cands, pos, [1]).tolist() == [False, True, True]
    keys = rank_keys("score*edge", scores, gray, cands, points=[[32, 32], [32, 22]], labels=[1, 0])
    assert np.argmax(keys) == 0, "the negative click at r 10 rules out the right and the large candidates"
    assert keys[1] < 0 and keys[2] < 0


def test_official_checkpoints_keep_sams_own_ranking():
    assert default_rule(native_resolution=False) == "score"
    assert default_rule(native_resolution=True) == "score*edge"


def test_a_bad_rule_is_refused_with_the_choices(embedded_model):
    from napari_sam.core.predictor import SlicePredictor

    with pytest.raises(ValueError, match="rank rule 'edge' is not one of score, score\\*edge"):
        SlicePredictor(embedded_model, rank="edge")
    assert SlicePredictor(embedded_model).rank == "score*edge"

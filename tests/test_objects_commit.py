"""core/objects.py (prompts -> objects -> ranked candidates) and core/commit.py (masks -> label writes), no viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.commit import next_label_id, plan_commit
from napari_sam.core.objects import group_prompts, predict_candidates


@pytest.mark.parametrize(
    "points, labels, boxes, expect",
    [
        ([[5, 5], [8, 8]], [1, 0], None, [(2, False)]),  # points only: one object
        ([[5, 5]], [0], None, []),  # only negative: nothing to segment
        (None, None, [[0, 0, 10, 10], [20, 20, 30, 30]], [(0, True), (0, True)]),  # each box one object
        ([[5, 5], [25, 25], [50, 50]], [1, 0, 1], [[0, 0, 10, 10], [20, 20, 30, 30]], [(1, True), (1, True), (1, False)]),
        ([[50, 50]], [0], [[0, 0, 10, 10]], [(0, True)]),  # a negative point outside every box is not used
    ],
)
def test_group_prompts(points, labels, boxes, expect):
    objects, notes = group_prompts(points, labels, boxes)
    assert [(len(o.points), o.box is not None) for o in objects] == expect
    if points is not None and not expect:
        assert notes


def test_a_point_belongs_to_the_smallest_box_around_it_and_a_mask_to_the_single_object():
    objects, _ = group_prompts([[6, 6]], [0], [[0, 0, 40, 40], [4, 4, 9, 9]])
    assert len(objects[0].points) == 0 and len(objects[1].points) == 1
    mask = np.zeros((50, 50), bool)
    (one,), _ = group_prompts([[6, 6]], [1], None, mask)
    assert one.mask is mask
    two, notes = group_prompts(None, None, [[0, 0, 4, 4], [5, 5, 9, 9]], mask)
    assert all(o.mask is None for o in two) and notes


class _FakePredictor:
    """predict_objects returning masks whose score tells which output they are."""

    def predict_objects(self, objects, multimask=True):
        from napari_sam.core.predictor import Prediction

        n, c = len(objects), 3 if multimask else 1
        scores = np.array([[0.5, 0.9, 0.7]] * n) if multimask else np.full((n, 1), 0.8)
        masks = np.zeros((n, c, 4, 4), bool)
        for k in range(c):
            masks[:, k, k] = True
        return Prediction(masks, scores, np.zeros((n, c, 2, 2)))

    def rank_keys(self, scores, masks, r0=0, c0=0, points=None, labels=None):  # the "score" rule
        return np.asarray(scores, float)


def test_candidates_are_ranked_by_predicted_iou_and_add_the_single_mask_answer_for_several_prompts():
    one_click, _ = group_prompts([[1, 1]], [1])
    (c,) = predict_candidates(_FakePredictor(), one_click)
    assert c.scores.tolist() == pytest.approx([0.9, 0.7, 0.5]) and c.tokens.tolist() == [2, 3, 1]
    two_clicks, _ = group_prompts([[1, 1], [2, 2]], [1, 0])
    (c,) = predict_candidates(_FakePredictor(), two_clicks)
    assert c.tokens.tolist() == [2, 0, 3, 1] and len(c) == 4
    mask, score, token = c.pick(99)  # clipped to the last
    assert token == 1 and score == pytest.approx(0.5)


def test_plan_commit_keeps_other_labels_unless_overwrite_and_new_masks_do_not_overlap():
    existing = np.zeros((6, 6), np.uint16)
    existing[0, :] = 4
    a = np.zeros((6, 6), bool)
    a[:3, :3] = True
    b = np.zeros((6, 6), bool)
    b[2:5, 2:5] = True
    assert next_label_id(existing) == 5 and next_label_id(np.zeros((0,), int)) == 1
    out = existing.copy()
    for w in plan_commit(existing, [a, b], [5, 6]):
        out[w.rows, w.cols] = w.value
    assert (out[0] == 4).all() and out[2, 2] == 5 and out[3, 3] == 6 and (out == 5).sum() == 6
    out = existing.copy()
    for w in plan_commit(existing, [a], [5], overwrite=True):
        out[w.rows, w.cols] = w.value
    assert (out[0, :3] == 5).all() and (out[0, 3:] == 4).all()
    assert plan_commit(out, [a], [5], overwrite=True) == [], "nothing changes, nothing is written"


def test_plan_commit_refine_replaces_the_label_on_the_slice():
    existing = np.zeros((5, 5), np.uint8)
    existing[:2] = 3
    new = np.zeros((5, 5), bool)
    new[1:4] = True
    out = existing.copy()
    for w in plan_commit(existing, [new], [3], replace=3):
        out[w.rows, w.cols] = w.value
    np.testing.assert_array_equal(out == 3, new)

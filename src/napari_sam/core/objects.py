"""From the prompts on one slice to objects, and from objects to ranked candidates.

The interactive tools (the napari widget, scripts) collect every prompt that
lies on the current slice: points with a positive/negative label, rectangles,
maybe the mask of an existing object. :func:`group_prompts` decides which
prompts belong to which object; :func:`predict_candidates` asks SAM for each
object's candidate masks and ranks them (``SlicePredictor.rank``).

All coordinates are napari's: (row, col) pixels of the slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import ObjectPrompt, box_from_corners

__all__ = ["Candidates", "group_prompts", "predict_candidates", "box_from_corners"]


@dataclass
class Candidates:
    """One object's candidate masks, best first.

    masks: (c, H, W) bool, best first: by SAM's predicted IoU, or for the
        embedded model by the predicted IoU x the outline's image gradient
        (the predictor's ``rank``, ``core.choose``).
    scores: (c,) float, SAM's predicted IoU of each mask.
    tokens: (c,) int, which SAM output each mask came from: 0 is the
        single-mask answer, 1..3 the multimask answers.
    low_res: (c, h, w) float, SAM's low-resolution logits of each mask: the
        mask prompt for the object's next click (SAM's interactive loop).
    """

    masks: np.ndarray
    scores: np.ndarray
    tokens: np.ndarray
    low_res: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def pick(self, rank: int) -> tuple[np.ndarray, float, int]:
        """(mask, score, token) of the candidate at ``rank`` (clipped to what exists)."""
        r = int(np.clip(rank, 0, len(self.scores) - 1))
        return self.masks[r], float(self.scores[r]), int(self.tokens[r])


def _inside(p: np.ndarray, box: np.ndarray) -> bool:
    return bool(box[0] - 0.5 <= p[0] <= box[2] + 0.5 and box[1] - 0.5 <= p[1] <= box[3] + 0.5)


def group_prompts(
    points_rc: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes_rc: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[list[ObjectPrompt], list[str]]:
    """Split the prompts of one slice into objects.

    points_rc: (N, 2) float (row, col); point_labels: (N,) 1 positive / 0 negative.
    boxes_rc: (M, 4) float (row0, col0, row1, col1); each box is one object.
    mask: (H, W) bool, an existing object to refine (mask prompt).

    Rules: without boxes all points (and the mask) make one object. With
    boxes, a point belongs to the smallest box containing it; points outside
    every box make one more object if one of them is positive. A mask goes to
    the single object; with several objects it is not used.
    Returns (objects, notes): notes explain prompts that were not used.
    """
    pts = np.zeros((0, 2), np.float32) if points_rc is None else np.asarray(points_rc, np.float32).reshape(-1, 2)
    lab = np.ones(len(pts), np.int64) if point_labels is None else np.asarray(point_labels, np.int64).reshape(-1)
    boxes = np.zeros((0, 4), np.float32) if boxes_rc is None else np.asarray(boxes_rc, np.float32).reshape(-1, 4)
    notes: list[str] = []
    objects: list[ObjectPrompt] = []
    if len(boxes) == 0:
        if lab.any() or mask is not None:
            objects.append(ObjectPrompt(pts, lab, None, mask))
        elif len(pts):
            notes.append("only negative points: add a positive point or a box")
        return objects, notes
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    owner = np.full(len(pts), -1)
    for i, p in enumerate(pts):
        inside = [j for j in range(len(boxes)) if _inside(p, boxes[j])]
        if inside:
            owner[i] = min(inside, key=lambda j: areas[j])
    for j, b in enumerate(boxes):
        sel = owner == j
        objects.append(ObjectPrompt(pts[sel], lab[sel], b, None))
    out = owner < 0
    if out.any():
        if lab[out].any():
            objects.append(ObjectPrompt(pts[out], lab[out], None, None))
        else:
            notes.append(f"{int(out.sum())} negative point(s) outside every box were not used")
    if mask is not None:
        if len(objects) == 1:
            objects[0].mask = mask
        else:
            notes.append("refining an existing label needs a single object: the label's mask was not used")
    return objects, notes


def _single_prompt(o: ObjectPrompt) -> bool:
    """One click or one box alone: ambiguous, SAM's multimask output fits."""
    return o.mask is None and (len(o.points) + (o.box is not None)) == 1


def predict_candidates(predictor, objects: list[ObjectPrompt]) -> list[Candidates]:
    """Each object's candidate masks on the predictor's current slice, best first.

    A single click or a single box is ambiguous: SAM's three multimask
    answers are the candidates. With more prompts (several points, a box and
    points, a mask) SAM's single-mask answer is added to the three.
    """
    out: list[Candidates | None] = [None] * len(objects)
    multi = predictor.predict_objects(objects, multimask=True)
    single_idx = [i for i, o in enumerate(objects) if not _single_prompt(o)]
    single = predictor.predict_objects([objects[i] for i in single_idx], multimask=False) if single_idx else None
    for i, o in enumerate(objects):
        masks, scores, low = multi.masks[i], multi.scores[i], multi.low_res_logits[i]
        tokens = np.arange(1, len(scores) + 1)
        keys = multi.scores[i] if multi.keys is None else multi.keys[i]
        if i in single_idx:
            j = single_idx.index(i)
            masks = np.concatenate([single.masks[j], masks])
            scores = np.concatenate([single.scores[j], scores])
            low = np.concatenate([single.low_res_logits[j], low])
            tokens = np.concatenate([[0], tokens])
            keys = predictor.rank_keys(scores, masks, points=o.points, labels=o.labels)
        order = np.argsort(-keys, kind="stable")
        out[i] = Candidates(masks[order], scores[order].astype(np.float32), tokens[order].astype(np.int64),
                            low[order].astype(np.float32))
    return out

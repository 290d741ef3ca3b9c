"""Would averaging over flips help? Each slice is encoded as it is and flipped (up-down, left-right, both),
every object is prompted on each (its click or box flipped alike), the full-resolution logits are flipped
back and averaged, the candidate with the highest mean predicted IoU is kept (pieces not connected to the
prompt dropped, as the embedded model's predictor does). Per object IoU with 1, 2 and 4 views.

    python benchmarks/eval_flip_tta.py [--stacks 8] [--seed0 800000]

A measurement, not a feature: 4 views cost 4 encoder passes per slice (session 11 result in
docs/embedded-model.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import iou  # noqa: E402
from eval_embedded import held_out, objects_of, print_per_object, validation_options  # noqa: E402

VIEWS = [(False, False), (False, True), (True, False), (True, True)]  # (flip rows, flip cols)


def _flip(a: np.ndarray, view) -> np.ndarray:
    if view[0]:
        a = a[..., ::-1, :]
    if view[1]:
        a = a[..., ::-1]
    return np.ascontiguousarray(a)


def main(argv=None):
    import torch

    import napari_sam
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.refine import keep_prompted

    args = validation_options(__doc__.split("\n")[0]).parse_args(argv)
    model = napari_sam.load_model(args.model, device="cpu")
    preds = [SlicePredictor(model, fragments=False) for _ in VIEWS]
    rows = []
    for _, img, lab, rng in held_out(args.stacks, args.seed0):
        h, w = img.shape
        for p, v in zip(preds, VIEWS):
            p.set_image(_flip(img, v))
        for gt, pt, box in objects_of(lab, rng):
            row = {}
            for kind in ("point", "box"):
                logits, scores = [], []
                for p, v in zip(preds, VIEWS):
                    q, b = pt.copy(), box.copy()
                    if v[0]:
                        q[0], b[[0, 2]] = h - 1 - q[0], h - 1 - b[[2, 0]]
                    if v[1]:
                        q[1], b[[1, 3]] = w - 1 - q[1], w - 1 - b[[3, 1]]
                    m = p.predict(points=q[None], point_labels=[1]) if kind == "point" else \
                        p.predict(boxes=b, multimask=False)
                    logits.append(_flip(p._postprocess(torch.as_tensor(m.low_res_logits)).numpy()[0], v))
                    scores.append(m.scores[0])
                for n in (1, 2, 4):
                    k = int(np.argmax(np.mean(scores[:n], 0)))
                    mask = np.mean(logits[:n], 0)[k] > 0
                    mask = keep_prompted(mask, pt[None], [1]) if kind == "point" else keep_prompted(mask, box=box)
                    row[f"{kind} x{n}"] = iou(mask, gt)
            rows.append(row)
    print_per_object(rows, args)


if __name__ == "__main__":
    main()

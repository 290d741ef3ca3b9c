"""Would feeding a prompt's own answer back to the decoder help, with no new click? SAM's decoder takes the
previous low-res logits as a mask prompt (the corrective loop of its training, and of the widget's second
click). Per object, on the same clicks and boxes as ``eval_embedded.py``:

* click: the candidate shown first (as the widget), against the same click decoded again with
  (a) that candidate's logits, (b) the box of that candidate, (c) both; single-mask output each;
* box: the box's mask, against the box decoded again with its own logits.

    python benchmarks/eval_mask_feedback.py [--stacks 8] [--seed0 800000]

A measurement, not a feature (session 12 result in docs/embedded-model.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import iou  # noqa: E402
from eval_embedded import held_out, objects_of, print_per_object, validation_options  # noqa: E402


def main(argv=None):
    import napari_sam
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.prompts import ObjectPrompt

    args = validation_options(__doc__.split("\n")[0]).parse_args(argv)
    pred = SlicePredictor(napari_sam.load_model(args.model, device="cpu"), refine=False)
    no_points = (np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    rows = []
    for _name, img, lab, rng in held_out(args.stacks, args.seed0):
        pred.set_image(img)

        def again(*prompt):
            return pred.predict_objects([ObjectPrompt(*prompt)], multimask=False).masks[0][0]

        for gt, p, box in objects_of(lab, rng):
            pt, pl = p[None].astype(np.float32), np.array([1])
            m = pred.predict(points=pt, point_labels=pl)
            top = int(m.best_index()[0])
            shown, logits = m.masks[0, top], m.low_res_logits[0, top]
            r = {"click: shown": iou(shown, gt), "click + its logits": iou(again(pt, pl, None, logits), gt)}
            rr, cc = np.nonzero(shown)
            if rr.size:
                shown_box = np.array([rr.min(), cc.min(), rr.max(), cc.max()], np.float32)
                r["click + its box"] = iou(again(pt, pl, shown_box), gt)
                r["click + its box + its logits"] = iou(again(pt, pl, shown_box, logits), gt)
            else:
                r["click + its box"] = r["click + its box + its logits"] = r["click: shown"]
            b = pred.predict(boxes=box, multimask=False)
            r["box"] = iou(b.masks[0, 0], gt)
            r["box + its logits"] = iou(again(*no_points, box, b.low_res_logits[0, 0]), gt)
            rows.append(r)
    print_per_object(rows, args)


if __name__ == "__main__":
    main()

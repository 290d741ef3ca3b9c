"""Which magnification suits which object size: the embedded model on 2D
synthetic images of one kind and size range at a time.

    python benchmarks/eval_sizes.py [--model embedded] [--scales 1.0,1.5,2.0,auto]

Images: ``napari_sam.synthetic.make_image`` (384 px, seeds 920000-920003,
never used in training), one row per (kind, radius range). Objects of >= 200
px that do not touch the border; 1 positive point at a random interior
location (the candidate shown first) and the object's box. Median IoU per
row and magnification; "auto" chooses the magnification per image from all
of its clicks (``core.magnify``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import iou  # noqa: E402

ROWS = [("nuclei", (5, 10)), ("nuclei", (12, 20)), ("cells", (12, 20)), ("cells", (25, 40)), ("cells", (40, 60))]
SEEDS = range(920_000, 920_004)


def measure(model, kind, radius_range, scale):
    """scale: a magnification, or "auto": per image, chosen from all of its clicks (``core.magnify``)."""
    from napari_sam.core.magnify import auto_scale, is_auto
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.prompts import ObjectPrompt
    from napari_sam.synthetic import interior_point, make_image

    out = []
    for seed in SEEDS:
        st = make_image((384, 384), seed=seed, kind=kind, radius_range=radius_range)
        rng = np.random.default_rng(seed)
        lab = st.labels
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        keep = [oid for oid, n in zip(ids, counts) if oid not in border and n >= 200]
        clicks = [interior_point(lab == oid, rng, depth=0.5) for oid in keep]
        s = scale
        if is_auto(scale):
            s, _ = auto_scale(model, st.image, [ObjectPrompt(np.array([p], np.float32), [1]) for p in clicks])
        pred = SlicePredictor(model, input_scale=s)
        pred.set_image(st.image)
        for oid, p in zip(keep, clicks):
            gt = lab == oid
            n = int(gt.sum())
            r = pred.predict(points=[p], point_labels=[1])
            top = r.masks[0][int(r.best_index()[0])]  # the candidate shown first
            rr, cc = np.nonzero(gt)
            b = pred.predict(boxes=np.array([rr.min(), cc.min(), rr.max(), cc.max()], float), multimask=False)
            out.append((n, iou(top, gt), iou(b.masks[0, 0], gt)))
    return np.array(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--scales", default="1.0,1.5,2.0,auto")
    args = ap.parse_args(argv)
    import napari_sam

    model = napari_sam.load_model(args.model, device="cpu")
    scales = [s if s == "auto" else float(s) for s in args.scales.split(",")]
    print(f"model {args.model} sha256={model.checksum[:12]}; median IoU, 1 point / box, at "
          + ", ".join(f"{s}x" for s in scales))
    for kind, rr in ROWS:
        res = [measure(model, kind, rr, s) for s in scales]
        cells = "  ".join(f"{np.median(o[:, 1]):.3f} / {np.median(o[:, 2]):.3f}" for o in res)
        print(f"{kind:6s} r {rr[0]:2d}-{rr[1]:2d} px  n={len(res[0]):3d}  median area {np.median(res[0][:, 0]):6.0f} px"
              f"  {cells}", flush=True)


if __name__ == "__main__":
    main()

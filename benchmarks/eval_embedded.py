"""Accuracy of a SAM model on held-out synthetic microscopy, per object,
side by side with the classical baseline measured on the same objects.

    python benchmarks/eval_embedded.py [--model embedded] [--stacks 12] [--json out.json]

Held-out data: ``napari_sam.synthetic.make_stack`` with seeds 900000 + i
(training used 100000 + i). Each stack (24, 256, 256) contributes 3 slices
(z at 30%, 50%, 70%); every object with >= 20 px on a slice is one sample.
``--like-training``: slices made as the training data is instead (``--seed0 100000``: the training
slices themselves), to compare seen with unseen data. ``--stardist-3d``: the slices of another
project's synthetic stack (StarDist's 3D test image).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import ClassicalSlice, boundary_f1, iou  # noqa: E402

EVAL_SEED0 = 900_000


def held_out(n_stacks: int, seed0: int = EVAL_SEED0):
    from napari_sam.synthetic import make_stack

    for i in range(n_stacks):
        rng = np.random.default_rng(seed0 + i)
        kind = "cells" if i % 4 == 3 else "nuclei"
        dtype = "uint8" if i % 3 == 2 else "uint16"
        st = make_stack((24, 256, 256), seed=seed0 + i, kind=kind, dtype=dtype)
        for z in (7, 12, 17):
            yield f"{i}:{z}", st.image[z], st.labels[z], rng


def validation_options(description: str) -> argparse.ArgumentParser:
    """The options of a measurement on the validation stacks (``--model``, ``--stacks``, ``--seed0``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--stacks", type=int, default=8)
    ap.add_argument("--seed0", type=int, default=800_000, help="800000: the validation stacks")
    return ap


def objects_of(lab: np.ndarray, rng):
    """Each object of >= 20 px on a slice's labels: (its mask, a click at depth >= half its deepest point,
    its box (row0, col0, row1, col1)), the clicks drawn from ``rng`` in id order as in ``evaluate_images``."""
    from napari_sam.synthetic import interior_point

    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    for oid in ids[counts >= 20]:
        gt = lab == oid
        rr, cc = np.nonzero(gt)
        yield gt, interior_point(gt, rng, depth=0.5), np.array([rr.min(), cc.min(), rr.max(), cc.max()], np.float32)


def print_per_object(rows: list[dict], args) -> None:
    """One line per measure (every key of ``rows``): median, 10th percentile and mean over the objects."""
    print(f"{len(rows)} objects, stacks {args.seed0}..{args.seed0 + args.stacks - 1}")
    width = max(map(len, rows[0]))
    for key in rows[0]:
        v = np.array([r[key] for r in rows])
        print(f"{key:{width}s}  median {np.median(v):.3f}  p10 {np.percentile(v, 10):.3f}  mean {v.mean():.3f}")


def like_training(n_stacks: int, seed0: int):
    """Slices made as the training data is (``train_data._gen_one``: its random stack depth, z and dtype;
    normalised to 8 bit), the first 2 of each stack, from seeds ``seed0 + i``: with the training seeds
    (100000) the model's own training slices, with others unseen ones in the same form. How far apart the
    two are says whether the model is short of data (docs/embedded-model.md, session 12)."""
    from napari_sam.train_data import TRAIN_SEED0, _gen_one

    for i in range(n_stacks):
        imgs, labs = _gen_one(seed0 - TRAIN_SEED0 + i)
        rng = np.random.default_rng(i)
        for k, (im, lb) in enumerate(zip(imgs[:2], labs[:2])):
            yield f"{i}:{k}", im, lb, rng


def stardist_3d_slices():
    """Every slice of StarDist's synthetic 3D test stack (another project's generator: (31, 61, 57) voxels,
    51 small nuclei, noisier than ours; fetched by ``eval_real.stardist_files``): how the model carries
    over to a generator it was not made with, the issue's own check."""
    from eval_real import stardist_files

    img, lab = stardist_files("img3d.tif", "mask3d.tif")
    rng = np.random.default_rng(3)
    for z in range(img.shape[0]):
        yield f"stardist3d:{z}", img[z], lab[z], rng


def _corrective(gt, pred, rng):
    from scipy import ndimage as ndi

    fn, fp = gt & ~pred, pred & ~gt
    err, lab = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
    if not err.any():
        return None, None
    d = ndi.distance_transform_edt(err)
    return np.array(np.unravel_index(int(np.argmax(d)), d.shape), float), lab


def evaluate(model, n_stacks: int, seed0: int = EVAL_SEED0, input_scale=None, rank=None):
    return evaluate_images(model, held_out(n_stacks, seed0), input_scale, rank)


def evaluate_images(model, images, input_scale=None, rank=None):
    """Per-object rows for ``images``: (name, image, instance labels, rng) tuples.
    rank: how the 1-point candidates are ordered (``core.choose``; default the model's)."""
    from napari_sam.core.objects import predict_candidates
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.prompts import ObjectPrompt
    from napari_sam.core.refine import refine_mask
    from napari_sam.synthetic import interior_point

    from napari_sam.core.magnify import auto_scale, is_auto

    auto = is_auto(input_scale)
    pred = SlicePredictor(model, refine=False, input_scale=None if auto else input_scale, rank=rank)
    rows = []
    for name, img, lab, rng in images:
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        ids = ids[counts >= 20]
        pts_all = [interior_point(lab == oid, rng, depth=0.5) for oid in ids]
        if auto:  # per image, from all of its clicks (core.magnify)
            s, _ = auto_scale(model, img, [ObjectPrompt(np.array([p], np.float32), [1]) for p in pts_all])
            if s != pred.input_scale:
                pred = SlicePredictor(model, refine=False, input_scale=s, rank=rank)
        pred.set_image(img)
        gray = pred.embedding.gray
        cl = ClassicalSlice(img)
        boxes_all = []
        for oid in ids:
            rr, cc = np.nonzero(lab == oid)
            boxes_all.append([rr.min(), cc.min(), rr.max(), cc.max()])
        boxes_all = np.array(boxes_all, float).reshape(-1, 4)
        cl_pts = cl.segment_all(np.array(pts_all).reshape(-1, 2)) if len(ids) else None
        cl_box = cl.segment_all(None, boxes_all) if len(ids) else None
        for k, oid in enumerate(ids):
            gt = lab == oid
            p, box = pts_all[k], boxes_all[k]
            r = {"slice": name, "id": int(oid), "area": int(gt.sum())}
            m = pred.predict(points=p[None], point_labels=[1])
            cand = m.masks[0]
            ious = [iou(c, gt) for c in cand]
            top = int(m.best_index()[0])  # the candidate shown first (predictor's rank)
            r["point_top"] = ious[top]
            r["point_best3"] = max(ious)
            r["rank_ok"] = bool(ious[top] >= max(ious) - 1e-9)
            r["iou_rank_ok"] = bool(ious[int(np.argmax(m.scores[0]))] >= max(ious) - 1e-9)
            r["top_index"], r["best_index"] = top, int(np.argmax(ious))
            r["area_ratios"] = [float(c.sum() / gt.sum()) for c in cand]
            r["brightness"] = float(np.median(img[gt]))
            ref = refine_mask(cand[top], gray, p[None], np.array([1]))
            r["point_top_refined"] = iou(ref, gt)
            r["bf1_point"] = boundary_f1(cand[top], gt)
            r["bf1_point_refined"] = boundary_f1(ref, gt)
            r["frag_point"] = int(_n_components(cand[top]))
            r["frag_point_refined"] = int(_n_components(ref))
            s = pred.predict(points=p[None], point_labels=[1], multimask=False)
            r["point_single"] = iou(s.masks[0, 0], gt)
            b = pred.predict(boxes=box, multimask=False)
            r["box"] = iou(b.masks[0, 0], gt)
            bref = refine_mask(b.masks[0, 0], gray, box=box)
            r["box_refined"] = iou(bref, gt)
            r["bf1_box"] = boundary_f1(b.masks[0, 0], gt)
            r["bf1_box_refined"] = boundary_f1(bref, gt)
            q, ql = _corrective(gt, cand[top], rng)
            if q is None:
                r["two_points"] = r["point_top"]
                r["two_points_refined"] = r["point_top_refined"]
            else:
                # as the widget does: both clicks, the shown candidate's logits as mask prompt, and
                # the candidate it shows first (core.objects.predict_candidates)
                pts, pl = np.stack([p, q]).astype(np.float32), np.array([1, ql])
                c2 = predict_candidates(pred, [ObjectPrompt(pts, pl, None, m.low_res_logits[0, top])])[0].masks[0]
                r["two_points"] = iou(c2, gt)
                r["two_points_refined"] = iou(refine_mask(c2, gray, pts, pl), gt)
            r["classical_point"] = iou(cl_pts == k + 1, gt)
            r["classical_box"] = iou(cl_box == k + 1, gt)
            rows.append(r)
    return rows


def add_experiment_options(ap):
    ap.add_argument("--mask-threshold", type=float, default=None,
                    help="experiment: logit above which a pixel is in a mask (SAM's is 0)")
    ap.add_argument("--high-percentile", type=float, default=None,
                    help="experiment: the slice's intensity percentile mapped to white (napari-sam's is 99.8)")
    ap.add_argument("--rank", default=None, choices=("score", "score*edge"),
                    help="how a click's 3 candidates are ordered (default: the model's; core.choose)")
    ap.add_argument("--int8", default="auto", choices=("auto", "off"),
                    help="the embedded model's int8 encoder on the CPU (core.int8; default where the CPU has it); "
                         "off: fp32")


def apply_experiment_options(model, args):
    import napari_sam.core.image as image_mod

    if args.int8 == "off":
        model.int8_encoder = None
    if args.mask_threshold is not None:
        model.sam.mask_threshold = args.mask_threshold
    if args.high_percentile is not None:
        image_mod.PERCENTILES = (image_mod.PERCENTILES[0], args.high_percentile)


def _n_components(mask):
    from scipy import ndimage as ndi

    return ndi.label(mask)[1]


def summarise(rows):
    keys = [
        "point_top", "point_top_refined", "point_single", "point_best3", "two_points", "two_points_refined",
        "box", "box_refined", "classical_point", "classical_box",
        "bf1_point", "bf1_point_refined", "bf1_box", "bf1_box_refined",
    ]
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows])
        out[k] = {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "mean": float(v.mean())}
    out["rank_ok"] = float(np.mean([r["rank_ok"] for r in rows]))
    out["iou_rank_ok"] = float(np.mean([r["iou_rank_ok"] for r in rows]))
    out["fragmented_point"] = float(np.mean([r["frag_point"] > 1 for r in rows]))
    out["fragmented_point_refined"] = float(np.mean([r["frag_point_refined"] > 1 for r in rows]))
    out["n_objects"] = len(rows)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--stacks", type=int, default=12)
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed0", type=int, default=EVAL_SEED0,
                    help="first stack seed (900000: held-out; 800000: the validation stacks used to choose settings)")
    ap.add_argument("--input-scale", default=None,
                    help="magnification before the encoder (default: the model's), or auto (core.magnify)")
    ap.add_argument("--like-training", action="store_true",
                    help="slices made as the training data is (like_training); --seed0 100000: the training slices")
    ap.add_argument("--stardist-3d", action="store_true",
                    help="every slice of StarDist's synthetic 3D test stack instead (another generator)")
    add_experiment_options(ap)
    args = ap.parse_args(argv)
    import napari_sam

    t = time.time()
    model = napari_sam.load_model(args.model, device="cpu")
    apply_experiment_options(model, args)
    scale = args.input_scale if args.input_scale in (None, "auto") else float(args.input_scale)
    if args.stardist_3d:
        rows = evaluate_images(model, stardist_3d_slices(), scale, args.rank)
    elif args.like_training:
        rows = evaluate_images(model, like_training(args.stacks, args.seed0), scale, args.rank)
    else:
        rows = evaluate(model, args.stacks, args.seed0, scale, args.rank)
    s = summarise(rows)
    print(f"model {args.model} sha256={model.checksum[:12]} encoder {model.precision}  objects={s['n_objects']}  "
          f"({time.time() - t:.0f}s)")
    print(f"{'metric':28s} {'median':>7s} {'p10':>7s} {'mean':>7s}")
    for k, v in s.items():
        if isinstance(v, dict):
            print(f"{k:28s} {v['median']:7.3f} {v['p10']:7.3f} {v['mean']:7.3f}")
    print(f"the candidate shown first is the best of 3: {s['rank_ok']:.1%} "
          f"(SAM's predicted-IoU ranking alone: {s['iou_rank_ok']:.1%})")
    print(f"masks in >1 piece (1 point): raw {s['fragmented_point']:.1%}, refined {s['fragmented_point_refined']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": s, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

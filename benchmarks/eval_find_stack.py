"""Every object of a stack with no click: found on one slice, or on every few slices (``find_in_stack``),
against a classical 3D pipeline; on the held-out propagation stacks of ``eval_propagation.py``.

The true objects scored are those ``eval_propagation.py`` clicks (>= 10 px on their middle slice: 710
objects). Each true object is matched to the found object with which it has the highest 3D IoU (a found
object can serve one true object only, the largest first); recall: true objects matched at 3D IoU >= 0.5;
precision: found objects that match a true object at >= 0.5 (found objects under 10 px on every slice are
not counted); "within 1 slice": the matched object ends no more than one slice beyond the true z extent.

Methods:
* ``one slice``: ``find_objects`` on the middle slice, its objects propagated (``every`` > the stack);
* ``every N``: ``find_in_stack(every=N)``: the middle slice, then every N-th slice outward, each time only
  outside the objects already there, the new ones propagated;
* ``no link``: the same with ``link`` off (found masks continuing an object that ended on the next slice
  are kept as new objects);
* ``classical 3D``: Gaussian smoothing, Otsu, watershed of the 3D distance transform (z scaled by the
  stack's voxel size) from its own peaks: what a user would run without SAM.

    python benchmarks/eval_find_stack.py                       # ~15 min on 2 cores
    python benchmarks/eval_find_stack.py --every 4 --stacks 950000 950003
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))


def match(pred: np.ndarray, gt: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(3D IoU of each true object in ``ids`` with its match, slices beyond its true extent, found objects
    counted, found objects matching at >= 0.5)."""
    g = gt.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    both = (g > 0) & (p > 0)
    pairs, inter = np.unique(g[both] * (p.max() + 1) + p[both], return_counts=True)
    gi, pi = pairs // (p.max() + 1), pairs % (p.max() + 1)
    gsize = np.bincount(g, minlength=g.max() + 1)
    psize = np.bincount(p, minlength=p.max() + 1)
    iou = inter / (gsize[gi] + psize[pi] - inter)
    best = {}
    for k in np.argsort(-iou):
        best.setdefault(int(gi[k]), []).append((float(iou[k]), int(pi[k])))
    taken, out, bleed = set(), {}, {}
    gsl = ndi.find_objects(gt.astype(np.int64))
    psl = ndi.find_objects(pred.astype(np.int64))
    for i in sorted(ids, key=lambda i: -gsize[i]):
        cand = [(v, j) for v, j in best.get(i, []) if j not in taken]
        if not cand:
            out[i], bleed[i] = 0.0, 0
            continue
        v, j = cand[0]
        taken.add(j)
        out[i] = v
        gz, pz = gsl[i - 1][0], psl[j - 1][0]
        bleed[i] = max(gz.start - pz.start, 0, pz.stop - gz.stop)
    big = [j for j, sl in enumerate(psl, 1) if sl is not None
           and (pred[sl] == j).reshape(sl[0].stop - sl[0].start, -1).sum(1).max() >= 10]
    good = {j for v, j in zip(iou, pi) if v >= 0.5}
    return (np.array([out[i] for i in ids]), np.array([bleed[i] for i in ids]), len(big),
            len(good & set(big)))


def classical_3d(image: np.ndarray, z_scale: float = 2.0) -> np.ndarray:
    """Gaussian, Otsu, watershed of the distance transform (z voxels ``z_scale`` x as deep) from its peaks."""
    from skimage.filters import threshold_otsu
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    g = ndi.gaussian_filter(image.astype(np.float32), (1.0 / z_scale, 1.0, 1.0))
    fg = g > threshold_otsu(g)
    d = ndi.distance_transform_edt(fg, sampling=(z_scale, 1.0, 1.0))
    pk = peak_local_max(d, min_distance=3, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(pk.T)] = np.arange(1, len(pk) + 1)
    return watershed(-d, markers, mask=fg)


def main(argv=None):
    from eval_propagation import STACKS, generated, seed_points

    import napari_sam
    from napari_sam.core.cache import EmbeddingCache
    from napari_sam.core.find_stack import finding_in_stack
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.propagate_records import run_to_end

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--every", type=int, nargs="*", default=[8, 4, 2])
    ap.add_argument("--no-link", type=int, nargs="*", default=[4], help="every N to run also without link")
    ap.add_argument("--depth", type=int, nargs="*", default=[], help="also these link depths")
    ap.add_argument("--stacks", type=int, nargs="*", default=[s for s, _ in STACKS])
    args = ap.parse_args(argv)
    model = napari_sam.load_model("embedded")
    runs = {"one slice": dict(every=1000)}
    runs.update({f"every {e}": dict(every=e) for e in args.every})
    runs.update({f"every {e}, no link": dict(every=e, link=2.0) for e in args.no_link})
    runs.update({f"every {e}, link depth {d}": dict(every=e, link_depth=d) for e in args.every for d in args.depth})
    rows = {name: [[], [], 0, 0, 0.0] for name in [*runs, "classical 3D"]}
    for seed, kind, image, gt in generated([s for s in STACKS if s[0] in args.stacks]):
        ids = sorted(seed_points(gt))
        cache = EmbeddingCache(max_bytes=1 << 40)  # each slice encoded once for all runs
        pred = SlicePredictor(model)
        line = [str(seed), kind, f"{len(ids)} objects"]
        for name, kw in [*runs.items(), ("classical 3D", None)]:
            t = time.perf_counter()
            if kw is None:
                labels = classical_3d(image)
            else:
                labels = run_to_end(finding_in_stack(pred, image, cache=cache, **kw)).labels
            r = rows[name]
            r[4] += time.perf_counter() - t
            iou, bleed, nf, good = match(labels, gt, ids)
            r[0] += list(iou)
            r[1] += list(bleed)
            r[2] += nf
            r[3] += good
            line.append(f"{name}: found {nf}, recall {np.mean(iou >= 0.5):.2f}, median {np.median(iou):.3f}")
        print(" | ".join(line), flush=True)
    print("\n| held-out stacks, no click | true objects | found | recall (3D IoU >= 0.5) | precision | F1 "
          "| median / p10 3D IoU | within 1 slice (matched) | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (iou, bleed, nf, good, sec) in rows.items():
        iou, bleed = np.array(iou), np.array(bleed)
        rec, prec = float(np.mean(iou >= 0.5)), good / max(nf, 1)
        f1 = 2 * rec * prec / max(rec + prec, 1e-9)
        w = float(np.mean(bleed[iou >= 0.5] <= 1)) if (iou >= 0.5).any() else float("nan")
        print(f"| {name} | {len(iou)} | {nf} | {100 * rec:.1f}% | {100 * prec:.1f}% | {f1:.3f} | "
              f"{np.median(iou):.3f} / {np.percentile(iou, 10):.3f} | {100 * w:.1f}% | {sec:.0f} |")


if __name__ == "__main__":
    main()

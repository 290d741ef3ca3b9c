"""Every object on a slice without a click (``napari_sam.find_objects``), against the ground truth.

On the held-out slices of ``eval_embedded.py`` (6 stacks, z = 7, 12, 17; seeds 900000+; ``--seed0 800000``
for the validation stacks the settings were chosen on). Per slice, every true object of >= 20 px is matched
with the found object it overlaps most; it is found if their IoU is >= 0.5 (at most one found object can
match a true one then). Reported, pooled over the slices: recall (true objects found), precision (found
objects that are a true one), F1, and the median / p10 IoU of every true object with its best match (0 when
nothing overlaps it). Side by side, in the same run, a classical pipeline a user could run without SAM:
Gaussian smoothing (sigma 1.5), Otsu threshold, watershed on the distance transform seeded at its local
maxima (``peak_local_max``, min_distance 3).

    python benchmarks/eval_automatic.py --stacks 6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def classical(image2d: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    g = gaussian(image2d.astype(np.float32), 1.5, preserve_range=True)
    fg = g > threshold_otsu(g)
    dist = ndi.distance_transform_edt(fg)
    pk = peak_local_max(dist, min_distance=3, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(pk.T)] = np.arange(1, len(pk) + 1)
    return watershed(-dist, markers, mask=fg)


def match(gt: np.ndarray, pred: np.ndarray, min_px: int = 20):
    """-> (best IoU of each true object of >= min_px, number of found objects, number of them matched)."""
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    ids = ids[counts >= min_px]
    n_pred = len(np.unique(pred[pred > 0]))
    pairs = np.stack([gt.ravel(), pred.ravel()], 1).astype(np.int64)
    inter = {}
    both = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]
    if len(both):
        u, c = np.unique(both, axis=0, return_counts=True)
        inter = {(int(a), int(b)): int(n) for (a, b), n in zip(u, c)}
    g_area = dict(zip(*np.unique(gt, return_counts=True)))
    p_area = dict(zip(*np.unique(pred, return_counts=True)))
    best, matched = [], set()
    for oid in ids:
        ious = [(n / (g_area[oid] + p_area[p] - n), p) for (g, p), n in inter.items() if g == oid]
        b, p = max(ious, default=(0.0, None))
        best.append(b)
        if b >= 0.5:
            matched.add(p)
    # found objects matching a true object below min_px are not false positives
    small = set(np.unique(gt[gt > 0])) - set(ids)
    for (g, p), n in inter.items():
        if g in small and n / (g_area[g] + p_area[p] - n) >= 0.5:
            matched.add(p)
    return best, n_pred, len(matched)


def summary(name, best, n_pred, n_match, seconds):
    best = np.asarray(best)
    rec = float((best >= 0.5).mean())
    prec = n_match / max(n_pred, 1)
    f1 = 2 * prec * rec / max(prec + rec, 1e-9)
    return (f"| {name} | {len(best)} | {n_pred} | {rec:.1%} | {prec:.1%} | {f1:.3f} | {np.median(best):.3f} | "
            f"{np.percentile(best, 10):.3f} | {seconds:.1f} |")


def main(argv=None):
    from eval_embedded import held_out

    import napari_sam
    from napari_sam.core.automatic import AutoSettings, find_objects
    from napari_sam.core.predictor import SlicePredictor

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--stacks", type=int, default=6)
    ap.add_argument("--seed0", type=int, default=900_000, help="900000: held-out; 800000: validation")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an AutoSettings field")
    ap.add_argument("--per-slice", action="store_true")
    args = ap.parse_args(argv)
    kw = {}
    for s in args.set:
        k, v = s.split("=")
        kw[k] = None if v == "None" else (v == "True" if v in ("True", "False") else float(v))
    settings = AutoSettings(**kw)
    model = napari_sam.load_model(args.model)
    pred = SlicePredictor(model)
    rows = {"napari-sam": [[], 0, 0, 0.0], "classical": [[], 0, 0, 0.0]}
    for name, img, lab, _ in held_out(args.stacks, args.seed0):
        t = time.perf_counter()
        pred.set_image(img)
        found = find_objects(pred, settings)
        dt = time.perf_counter() - t
        t = time.perf_counter()
        cl = classical(img)
        dc = time.perf_counter() - t
        for key, out, sec in (("napari-sam", found.labels, dt), ("classical", cl, dc)):
            b, n, m = match(lab, out)
            r = rows[key]
            r[0] += b
            r[1] += n
            r[2] += m
            r[3] += sec
            if args.per_slice:
                print(key, name, f"{np.median(b) if b else 0:.3f}", len(b), n, m, f"{sec:.2f}s", flush=True)
    print(f"settings: {settings}")
    print("| method | true objects | found | recall (IoU >= 0.5) | precision | F1 | median IoU | p10 IoU | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, (b, n, m, sec) in rows.items():
        print(summary(key, b, n, m, sec))


if __name__ == "__main__":
    main()

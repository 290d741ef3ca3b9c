"""A whole stack with no click: every object found on one slice (``find_objects``), then propagated, against
a click on that slice for each object; on the held-out propagation stacks of ``eval_propagation.py``.

The objects scored are the true objects with >= 10 px on the slice looked on (z = 16 of 32, so many of them
are seen off their middle, some at their ends). Per object, 3D IoU and whether the result stays within one
slice of its true z extent, for:

* ``found``: ``find_objects`` on the slice, every object found propagated with its mask as the prompt (as
  ``napari-sam find`` + ``segment --masks --propagate`` and the widget's Find all + Propagate all run it).
  Each true object is scored against the found object covering most of its pixels on the slice (0 if none;
  a found object covering two true ones counts for the one it covers most);
* ``click``: the same objects clicked on that slice (deepest point), propagated together;
* ``click, no growth``: the same, with the stop rule's growth test off (``min_covered`` > 1), as before
  session 16: an object clicked near one of its ends was stopped on the next slice, where it is larger.

    python benchmarks/eval_find_propagate.py              # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None):
    from eval_propagation import MIN_AREA, STACKS, generated, score_objects, summarise

    import napari_sam
    from napari_sam.core.automatic import find_objects
    from napari_sam.core.cache import EmbeddingCache, embed_cached
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.propagate import propagate_objects, run_to_end
    from napari_sam.core.propagate_rules import StopRule
    from napari_sam.synthetic import interior_point

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--z", type=int, default=16)
    ap.add_argument("--without", type=int, nargs="*", default=[], help="leave out these stack seeds")
    ap.add_argument("--growing", type=float, nargs="*", default=[],
                    help="also clicks with these StopRule.min_contrast_growing values")
    args = ap.parse_args(argv)
    model = napari_sam.load_model("embedded")
    rules = {"click": StopRule(), "click, no growth": StopRule(min_covered=1.01)}
    rules.update({f"click, min_contrast_growing={g}": StopRule(min_contrast_growing=g) for g in args.growing})
    rows = {"found": [[], [], 0.0], **{name: [[], [], 0.0] for name in rules}}
    for seed, kind, image, gt in generated([s for s in STACKS if s[0] not in args.without]):
        z = args.z
        ids, counts = np.unique(gt[z][gt[z] > 0], return_counts=True)
        ids = [int(i) for i in ids[counts >= MIN_AREA]]
        cache = EmbeddingCache(max_bytes=1 << 40)
        pred = SlicePredictor(model)
        t = time.perf_counter()
        pred.set_embedding(embed_cached(pred, cache, image[z]))  # the propagations below reuse it
        found = find_objects(pred)
        out = run_to_end(propagate_objects(pred, image, found.prompts(z), cache=cache))
        relabel = np.zeros(found.n + 1, np.int64)
        for i in sorted(ids, key=lambda i: -(gt[z] == i).sum()):  # larger true objects claim first
            k = np.bincount(found.labels[gt[z] == i], minlength=found.n + 1)
            k[0] = 0
            if k.any() and relabel[k.argmax()] == 0:
                relabel[k.argmax()] = i
        mapped = relabel[out]
        rows["found"][2] += time.perf_counter() - t
        iou, bleed = score_objects(mapped, gt, ids)
        rows["found"][0] += list(iou)
        rows["found"][1] += list(bleed)
        clicks = {i: {z: {"points": np.asarray(interior_point(gt[z] == i))[None]}} for i in ids}
        for name, stop in rules.items():
            t = time.perf_counter()
            res = run_to_end(propagate_objects(pred, image, clicks, cache=cache, stop=stop))
            rows[name][2] += time.perf_counter() - t
            iou, bleed = score_objects(res, gt, ids)
            rows[name][0] += list(iou)
            rows[name][1] += list(bleed)
        print(seed, kind, len(ids), "objects on z", z, "found", found.n, flush=True)
    print(f"\n| held-out stacks, objects on z={args.z} | objects | median 3D IoU | p10 | within 1 slice | time (s) |")
    print("|---|---|---|---|---|---|")
    for name, (iou, bleed, sec) in rows.items():
        s = summarise(np.array(iou), np.array(bleed))
        print(f"| {name} | {s['n']} | {s['median']:.3f} | {s['p10']:.3f} | {100 * s['within1']:.1f}% | {sec:.0f} |")


if __name__ == "__main__":
    main()

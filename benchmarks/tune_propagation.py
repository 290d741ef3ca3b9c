"""Choose the propagation rules by measurement, on tuning stacks only.

    python benchmarks/tune_propagation.py --stacks 12                       # 1. screen the StepRules
    python benchmarks/tune_propagation.py --stacks 12 --variants point --features
    python benchmarks/tune_propagation.py --stacks 12 --variants point --search  # 2. StopRule

Tuning stacks: seeds 940000.. (never used for training, 100000+, nor for the
reported evaluation, 950000+), (32, 256, 256), every third one of cells.
Seed points as in ``eval_propagation`` (deepest pixel of the middle slice).

1. Screen. Each way of prompting the next slice (box, mask logits, point,
   combinations; ``--extra``: single or multi-mask, whole-slice or windowed
   decoding, boundary snapping on (the product has it off since session 10), a second same-slice iteration, another
   logit threshold) is run once with a permissive stop rule while every
   step's ``StepFeatures`` is recorded. Two numbers per variant:
   - "oracle": median / p10 3D IoU when each object is cut exactly at its
     true z extent (how well the rule follows the object, whatever the stop rule);
   - "tuned": the best stop rule of ``GRID`` simulated on the recorded steps
     (an object ends at its first step failing the rule), scored by
     median + p10 with >= 90% of objects within one slice of their true extent.
   The simulation ignores that a stopped object frees pixels for its
   neighbours, so it is only used to compare variants and see which features
   matter (``--features``: medians by position relative to the true end).
2. Search. For the chosen StepRule, a coordinate search over ``SEARCH`` with
   real runs (each a full propagation of all tuning stacks).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import eval_propagation as ev  # noqa: E402

PERMISSIVE = dict(min_score=0.2, min_overlap=0.1, max_growth=3.0, min_shrink=0.0, min_peak=0.0, min_area=1,
                  min_kept=0.2, min_contrast=-1e9, min_contrast_large=-1e9)
GRID = dict(
    min_score=[0.2, 0.5, 0.6, 0.7, 0.8],
    min_overlap=[0.1, 0.3, 0.5, 0.6],
    max_growth=[1.3, 1.6, 2.0, 3.0],
    min_shrink=[0.0, 0.5],
    min_peak=[0.0, 0.3, 0.5, 0.6, 0.7],
    min_area=[1, 10],
    min_kept=[0.2, 0.5],
    min_contrast=[-1e9, 0.3, 0.4, 0.5, 0.6, 0.7],
)


SEARCH = dict(
    min_contrast=[0.5, 0.6, 0.7, 0.8],
    min_overlap=[0.4, 0.5, 0.6, 0.7],
    max_growth=[1.3, 1.6, 3.0],
    min_peak=[0.0, 0.3],
    min_score=[0.2, 0.5, 0.7],
    min_kept=[0.2, 0.5],
)


def tuning_stacks(n):
    return [(940000 + i, "cells" if i % 3 == 2 else "nuclei") for i in range(n)]


class Recorder:
    """A StopRule that records every step after overlaps are resolved, and applies PERMISSIVE.

    Only a step's first record is kept: the re-check after the run (``propagate_step.recheck``) asks the
    rule again about steps already recorded."""

    def __init__(self):
        from napari_sam.core.propagate_rules import StopRule

        self.rule = StopRule(**PERMISSIVE)
        self.steps = []
        self._seen = set()

    def reason(self, f):
        key = (f.oid, f.direction, f.z)
        if f.kept is not None and key not in self._seen:
            self._seen.add(key)
            self.steps.append(replace(f))
        return self.rule.reason(f)


def trace(model, stacks, step, refine):
    """Per stack: (gt, seeds, output labels, recorded steps)."""
    from napari_sam.core.cache import EmbeddingCache
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.synthetic import make_stack

    out = []
    for seed, kind in stacks:
        st = make_stack(ev.SHAPE, seed=seed, kind=kind)
        seeds = ev.seed_points(st.labels)
        rec = Recorder()
        pred = ev.run_propagation(SlicePredictor(model, refine=refine), st.image, seeds,
                                  EmbeddingCache(1 << 40), stop=rec, step=step)
        out.append((st.labels, seeds, pred, rec.steps))
    return out


def _tables(traced) -> dict:
    """All recorded steps as flat arrays (in order within each object and direction)."""
    obj, up, z, inter, area, feats, gt, gz0, gz1, a_inter, a_area, gt_area = ([] for _ in range(12))
    base = 0
    for gtl, seeds, pred, steps in traced:
        ids = list(seeds)
        index = {i: base + k for k, i in enumerate(ids)}
        per = {}
        for i, (za, _) in seeds.items():
            g, p = gtl == i, pred == i
            zs = np.flatnonzero(g.any((1, 2)))
            per[i] = (np.count_nonzero(g & p, axis=(1, 2)), np.count_nonzero(p, axis=(1, 2)), np.count_nonzero(g, axis=(1, 2)))
            gt.append(int(g.sum()))
            gz0.append(zs[0])
            gz1.append(zs[-1])
            a_inter.append(per[i][0][za])
            a_area.append(per[i][1][za])
        for f in sorted((f for f in steps if f.oid in index), key=lambda f: (f.oid, f.direction, f.z * (1 if f.direction == "up" else -1))):
            obj.append(index[f.oid])
            up.append(f.direction == "up")
            z.append(f.z)
            inter.append(per[f.oid][0][f.z])
            area.append(per[f.oid][1][f.z])
            gt_area.append(per[f.oid][2][f.z])
            feats.append((f.score, f.overlap, f.area, f.prev_area, f.kept, f.peak_area,
                          np.inf if f.contrast is None else f.contrast))
        base += len(ids)
    t = {k: np.array(v) for k, v in dict(obj=obj, up=up, z=z, inter=inter, area=area, gt=gt, gz0=gz0, gz1=gz1,
                                              a_inter=a_inter, a_area=a_area, gt_area=gt_area).items()}
    t["f"] = np.array(feats, float).reshape(-1, 7)
    t["obj"] = t["obj"].astype(int)
    group = 2 * t["obj"] + t["up"].astype(int)
    t["start"] = np.r_[True, group[1:] != group[:-1]] if len(group) else np.zeros(0, bool)
    t["excess"] = np.where(t["up"], t["z"] - t["gz1"][t["obj"]], t["gz0"][t["obj"]] - t["z"]) if len(group) else np.zeros(0)
    return t


def simulate(t, rule: dict | None):
    """(3D IoUs, bleed) when each object stops at its first step failing ``rule`` (None: its true extent)."""
    if rule is None:
        fail = t["excess"] > 0
    else:
        s, ov, a, pa, kept, peak, con = t["f"].T
        ratio = a / np.maximum(pa, 1)
        fail = ((s < rule["min_score"]) | (ov < rule["min_overlap"]) | (ratio > rule["max_growth"])
                | (ratio < rule["min_shrink"]) | (kept < rule["min_area"]) | (kept < rule["min_kept"] * a)
                | (a < rule["min_peak"] * peak)
                | (con < np.where(peak >= rule.get("large_area", np.inf), rule.get("min_contrast_large", 0.0),
                                  rule["min_contrast"])))
    cs = np.cumsum(fail)
    gstart = np.maximum.accumulate(np.where(t["start"], np.arange(len(fail)), 0))
    before = (cs - fail)[gstart]
    alive = cs - before == 0
    n = len(t["gt"])
    inter = t["a_inter"] + np.bincount(t["obj"][alive], t["inter"][alive], n)
    area = t["a_area"] + np.bincount(t["obj"][alive], t["area"][alive], n)
    ious = inter / np.maximum(t["gt"] + area - inter, 1)
    bleed = np.zeros(n)
    np.maximum.at(bleed, t["obj"][alive], t["excess"][alive])
    return ious, bleed


def feature_table(t) -> str:
    """Medians of what the stop rule sees, by slice position relative to the object's true end
    (0: its last true slice, 1: the first slice beyond it)."""
    s, ov, a, pa, kept, peak, con = t["f"].T
    slice_iou = t["inter"] / np.maximum(t["gt_area"] + t["area"] - t["inter"], 1)
    lines = ["| slice vs true end | steps | predicted IoU | overlap with previous | area / previous | area / largest | "
             "contrast / prompted slice's | IoU with truth |", "|---|---|---|---|---|---|---|---|"]
    for rel in range(-3, 4):
        m = t["excess"] == rel
        if m.any():
            cols = [s[m], ov[m], a[m] / np.maximum(pa[m], 1), a[m] / np.maximum(peak[m], 1), con[m], slice_iou[m]]
            lines.append(f"| {rel:+d} | {m.sum()} | " + " | ".join(f"{np.median(c):.2f}" for c in cols) + " |")
    return "\n".join(lines)


def grid_search(objs, top=5):
    rows = []
    keys = list(GRID)
    for vals in itertools.product(*GRID.values()):
        rule = dict(zip(keys, vals))
        ious, bleed = simulate(objs, rule)
        s = ev.summarise(ious, bleed)
        rows.append((s["within1"] >= 0.9, s["median"] + s["p10"], s, rule))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return rows[:top]


def real_run(model, stacks, step, stop) -> dict:
    """Pooled summary of real propagation runs (no simulation) with this step and stop rule."""
    res = ev.evaluate(model, stacks=stacks, methods=("propagation",), step=step, stop=stop, log=lambda s: None)
    return ev.summarise(res["propagation"]["ious"], res["propagation"]["bleed"])


def coordinate_search(model, stacks, step, start: dict, candidates: dict, log=print) -> dict:
    """Real runs: change one StopRule field at a time, keep a change when it raises
    median + p10 with >= 90% of objects within one slice; repeat until nothing improves."""
    from napari_sam.core.propagate_rules import StopRule

    def score(s):
        return (s["within1"] >= 0.9, s["median"] + s["p10"])

    best = dict(start)
    s = real_run(model, stacks, step, StopRule(**best))
    log(f"start {best}: {s}")
    improved = True
    while improved:
        improved = False
        for k, values in candidates.items():
            for v in values:
                if v == best[k]:
                    continue
                trial = {**best, k: v}
                st = real_run(model, stacks, step, StopRule(**trial))
                log(f"  {k}={v}: median {st['median']:.3f} p10 {st['p10']:.3f} within1 {st['within1']:.3f}")
                if score(st) > score(s):
                    best, s, improved = trial, st, True
                    log(f"-> {best}")
    return best


VARIANTS = {
    "box": dict(box=True, mask=False, point=False),
    "mask": dict(box=False, mask=True, point=False),
    "point": dict(box=False, mask=False, point=True, multimask=True),
    "box+mask": dict(box=True, mask=True, point=False),
    "point+mask": dict(box=False, mask=True, point=True),
    "box+point": dict(box=True, mask=False, point=True),
    "box+point+mask": dict(box=True, mask=True, point=True),
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--stacks", type=int, default=6)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--extra", default="", help="comma list of: nowindow, refine, multimask, iterate, window=F, threshold=F")
    ap.add_argument("--features", action="store_true", help="print what the stop rule sees, by position")
    ap.add_argument("--search", action="store_true", help="real-run coordinate search of the StopRule for the first variant")
    ap.add_argument("--top", type=int, default=1, help="best stop rules printed per variant")
    args = ap.parse_args(argv)
    from napari_sam.core.models import load_model
    from napari_sam.core.propagate_rules import StepRule

    model = load_model(args.model, device="cpu")
    stacks = tuning_stacks(args.stacks)
    extra = set(filter(None, args.extra.split(",")))
    if args.search:
        kw = dict(VARIANTS[args.variants.split(",")[0]])
        from napari_sam.core.propagate_rules import StopRule as _S

        start = {k: getattr(_S(), k) for k in SEARCH}
        best = coordinate_search(model, stacks, StepRule(**kw), start, SEARCH)
        print("best", best)
        return
    print("| step rule | oracle median | oracle p10 | tuned median | tuned p10 | within 1 | best stop rule | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        kw = dict(VARIANTS[name])
        if "nowindow" in extra:
            kw["window"] = None
        if "multimask" in extra:
            kw["multimask"] = True
        if "iterate" in extra:
            kw["iterate"] = 1
        for e in extra:
            if e.startswith("window="):
                kw["window"] = float(e.split("=")[1])
            if e.startswith("threshold="):
                kw["threshold"] = float(e.split("=")[1])
        t = time.perf_counter()
        objs = _tables(trace(model, stacks, StepRule(**kw), refine="refine" in extra))
        dt = time.perf_counter() - t
        o = ev.summarise(*simulate(objs, None))
        for best in grid_search(objs, top=args.top):
            s = best[2]
            rule = {k: v for k, v in best[3].items()}
            print(f"| {name} {' '.join(sorted(extra))} | {o['median']:.3f} | {o['p10']:.3f} | {s['median']:.3f} | "
                  f"{s['p10']:.3f} | {100 * s['within1']:.0f}% | {rule} | {dt:.0f} |", flush=True)
        if args.features:
            print(feature_table(objs), flush=True)


if __name__ == "__main__":
    main()

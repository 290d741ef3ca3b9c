"""Evaluate z-propagation on held-out synthetic stacks, against two baselines.

    python benchmarks/eval_propagation.py [--model embedded] [--write docs/propagation.md]
    python benchmarks/eval_propagation.py --drift 4 --without 950001 [--micro-sam]   # objects drifting in z
    python benchmarks/eval_propagation.py --model sam2.1_hiera_tiny.pt --memory --no-timing  # + SAM 2's memory
    python benchmarks/eval_propagation.py --every-slice --no-timing   # + prompts applied to every slice
    python benchmarks/eval_propagation.py --oracle --no-timing        # + two ceilings (ground-truth prompts)
    python benchmarks/eval_propagation.py --drawn --no-timing         # + from a drawn mask (--masks)

Stacks: ``napari_sam.synthetic.make_stack`` seeds 950000..950005, shape
(32, 256, 256), four of nuclei and two of cells (seeds never used for
training, which uses 100000+, nor for tuning the rules, 940000+). Each
object gets one positive point on its middle slice (the middle of its true
z extent), at its deepest pixel (``interior_point``); objects whose middle
slice holds fewer than ``MIN_AREA`` px are skipped. All objects of a stack
are propagated together.

Metrics per object: 3D IoU of its predicted and true voxels; it "bleeds"
when its prediction reaches more than one slice beyond its true z extent.

Methods, on the same stacks and seed points:
* propagation: ``napari_sam.core.propagate.propagate_objects`` (defaults);
* naive: SAM prompted with the seed point on every slice of the stack
  (``batch_prompts_through_z``), its candidates in SAM's own order
  (``rank="score"``: with the embedded model's default, score x edge, this
  baseline falls from 0.143 to 0.094 median on the held-out stacks, as the
  sharpest outline near the seed is often another nucleus);
* classical: per slice, Otsu threshold + watershed on the distance transform
  seeded at each object's point, following the object from its previous
  centroid while the overlap (IoU) with its previous slice stays >= 0.5;
* every-slice (``--every-slice``): the naive baseline as the product runs
  it (``batch_prompts_through_z`` told the slice each point was clicked on):
  slices where the object is not there are left empty (``PresenceRule``);
* micro-sam (``--micro-sam``): micro-sam's own propagation function with its
  3D annotator's defaults, on the same model and embeddings, one object at a
  time (``micro_sam_baseline.py``);
* drawn-mask (``--drawn``): propagation from each object's true mask on its middle slice instead of the
  click, as ``napari-sam segment --masks`` runs it from one drawn slice per object;
* oracle-click / oracle-box (``--oracle``): not methods but ceilings; every
  slice of each object's true extent prompted from the ground truth
  (``run_oracle``).

Timing: the 8 largest objects of stack 950000 propagated together through
its 32 slices, against each of them alone (stop rule off, so every object is
decoded on every slice); best of 3 runs each, from the loaded stack (each
slice encoded once and shared by the objects) and on cached embeddings
(the decoder alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))

STACKS = [(950000 + i, "cells" if i >= 4 else "nuclei") for i in range(6)]
SHAPE = (32, 256, 256)
MIN_AREA = 10


def seed_points(gt: np.ndarray) -> dict[int, tuple[int, np.ndarray]]:
    """{object id: (middle slice, (row, col) deepest point)} for objects big enough to click."""
    from napari_sam.synthetic import interior_point

    out = {}
    for i, sl in enumerate(ndi.find_objects(gt), start=1):
        if sl is None:
            continue
        zs = np.flatnonzero((gt[sl[0]] == i).any((1, 2))) + sl[0].start
        zm = int(zs[0] + zs[-1]) // 2
        m = gt[zm] == i
        if m.sum() >= MIN_AREA:
            out[i] = (zm, interior_point(m))
    return out


def score_objects(pred: np.ndarray, gt: np.ndarray, seeds) -> tuple[np.ndarray, np.ndarray]:
    """Per seeded object: (3D IoU, slices beyond the true z extent)."""
    ious, bleed = [], []
    gsl, psl = ndi.find_objects(gt), ndi.find_objects(pred.astype(np.int64), max_label=int(gt.max()))
    for i in seeds:
        g = gt == i
        p = pred == i
        inter = np.count_nonzero(g & p)
        ious.append(inter / max(np.count_nonzero(g | p), 1))
        if psl[i - 1] is None:
            bleed.append(0)
            continue
        gz, pz = gsl[i - 1][0], psl[i - 1][0]
        bleed.append(max(gz.start - pz.start, 0, pz.stop - gz.stop))
    return np.array(ious), np.array(bleed)


def seed_prompts(seeds) -> dict:
    """``seed_points``' result as propagation prompts: each object's point on its slice."""
    return {i: {z: {"points": pt[None]}} for i, (z, pt) in seeds.items()}


def run_propagation(predictor, image, seeds, cache=None, **kw) -> np.ndarray:
    from napari_sam.core.propagate import propagate_objects, run_to_end

    return run_to_end(propagate_objects(predictor, image, seed_prompts(seeds), cache=cache, **kw))


def run_drawn(predictor, image, gt, seeds, cache=None) -> np.ndarray:
    """Each object's ground-truth mask on its middle slice as the prompt, as a user drawing one slice per object
    gives it (``napari-sam segment --masks``), propagated with the defaults."""
    from napari_sam.core.propagate import propagate_objects, run_to_end

    prompts = {i: {z: {"mask": gt[z] == i}} for i, (z, _) in seeds.items()}
    return run_to_end(propagate_objects(predictor, image, prompts, cache=cache))


def run_memory(predictor, image, seeds) -> np.ndarray:
    """SAM 2 models: the same seeds propagated with SAM 2's memory (``core.sam2_memory``)."""
    from napari_sam.core.propagate import run_to_end
    from napari_sam.core.sam2_memory import propagate_memory

    return run_to_end(propagate_memory(predictor, image, seed_prompts(seeds)))


def run_naive(predictor, image, seeds, cache=None, min_score=0.0) -> np.ndarray:
    """Each seed point on every slice. Objects stacked in z can share a seed pixel; the product refuses two
    objects with the same click on every slice (they would split one object), so such objects run in
    separate passes, a later pass writing only where the earlier ones left background (6 objects of the
    held-out stacks' 710 share a seed pixel with another object)."""
    from napari_sam.core.propagate import batch_prompts_through_z, run_to_end

    passes: list[dict] = []
    for i, (z, pt) in seeds.items():
        key = tuple(np.round(pt).astype(int))
        free = next((p for p in passes if key not in p["keys"]), None)
        if free is None:
            free = {"keys": set(), "prompts": {}}
            passes.append(free)
        free["keys"].add(key)
        free["prompts"][i] = {"points": pt[None]}
    out = None
    for p in passes:
        lab = run_to_end(batch_prompts_through_z(predictor, image, p["prompts"], cache=cache, min_score=min_score))
        out = lab if out is None else np.where(out == 0, lab, out)
    return out


def run_every_slice(predictor, image, seeds, cache=None) -> np.ndarray:
    """The seed point applied to every slice, as the widget's "Every slice" and the CLI's --every-slice
    do: knowing the slice it was clicked on, so slices the object is not on stay empty (``PresenceRule``)."""
    from napari_sam.core.propagate import batch_prompts_through_z, run_to_end

    return run_to_end(batch_prompts_through_z(predictor, image, seed_prompts(seeds), cache=cache))


def run_oracle(predictor, image, gt, seeds, cache=None, kind="click") -> np.ndarray:
    """Not a method, a ceiling: each seeded object prompted afresh on every slice of its true z extent from
    the ground truth (``kind`` "click": its deepest point there; "box": its box there), all objects of a slice
    decoded together, nothing beyond the true extent. How far any way of stepping from slice to slice
    could get with this model. Where masks overlap, the smaller object keeps the pixel."""
    from napari_sam.core.cache import stack_embedder
    from napari_sam.core.prompts import ObjectPrompt
    from napari_sam.synthetic import interior_point

    embed = stack_embedder(predictor, image, cache, None, None)
    out = np.zeros(gt.shape, np.int32)
    for z in range(gt.shape[0]):
        ids = [int(i) for i in np.unique(gt[z]) if i in seeds]
        if not ids:
            continue
        embed(z)
        objs, areas = [], []
        for i in ids:
            m = gt[z] == i
            areas.append(int(m.sum()))
            if kind == "box":
                rr, cc = np.nonzero(m)
                objs.append(ObjectPrompt(box=np.array([rr.min(), cc.min(), rr.max(), cc.max()], np.float32)))
            else:
                objs.append(ObjectPrompt(interior_point(m)[None].astype(np.float32), [1]))
        if kind == "box":
            masks = predictor.predict_objects(objs, multimask=False).masks[:, 0]
        else:  # the candidate a click shows first
            p = predictor.predict_objects(objs)
            masks = p.masks[np.arange(len(objs)), p.best_index()]
        for k in np.argsort(areas)[::-1]:  # largest first: the smaller object keeps a shared pixel
            out[z][masks[k]] = ids[k]
    return out


def run_classical(image, seeds, min_overlap=0.5) -> np.ndarray:
    """Otsu + seeded watershed per slice, following each object from its previous centroid."""
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    nz = image.shape[0]
    out = np.zeros(image.shape, np.uint16)
    fg, dist = [], []
    for z in range(nz):
        sm = ndi.gaussian_filter(image[z].astype(np.float32), 1.0)
        f = sm > threshold_otsu(sm)
        fg.append(f)
        dist.append(ndi.distance_transform_edt(f))
    start = {}
    for i, (z, pt) in seeds.items():
        start.setdefault(z, []).append((i, pt))
    for direction in (1, -1):
        order = range(nz) if direction == 1 else range(nz - 1, -1, -1)
        alive: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id -> (point, previous mask)
        for z in order:
            todo = dict(alive)
            for i, pt in start.get(z, []):
                todo[i] = (pt, None)
            if not todo:
                continue
            markers = np.zeros(image.shape[1:], np.int32)
            for i, (pt, _) in todo.items():
                r, c = np.clip(np.round(pt).astype(int), 0, np.array(image.shape[1:]) - 1)
                markers[r, c] = i
            ws = watershed(-dist[z], markers, mask=fg[z])
            alive = {}
            for i, (pt, prev) in todo.items():
                m = ws == i
                if not m.any():
                    continue
                if prev is not None:
                    iou = np.count_nonzero(m & prev) / max(np.count_nonzero(m | prev), 1)
                    if iou < min_overlap:
                        continue
                free = m & (out[z] == 0)
                out[z][free] = i
                alive[i] = (np.array(ndi.center_of_mass(m)), m)
    return out


def summarise(ious, bleed) -> dict:
    return {
        "n": len(ious),
        "median": float(np.median(ious)) if len(ious) else float("nan"),
        "p10": float(np.percentile(ious, 10)) if len(ious) else float("nan"),
        "within1": float(np.mean(bleed <= 1)) if len(ious) else float("nan"),
    }


def generated(stacks=STACKS, shape=SHAPE):
    """(seed, kind, image, labels) of the project's generator."""
    from napari_sam.synthetic import make_stack

    for seed, kind in stacks:
        st = make_stack(shape, seed=seed, kind=kind)
        yield seed, kind, st.image, st.labels


def drifted(data, d: float):
    """``data`` with objects drifting ``d`` px a slice sideways through z (``synthetic.drift_sideways``)."""
    from napari_sam.synthetic import drift_sideways

    for name, kind, image, labels in data:
        yield name, kind, drift_sideways(image, d), drift_sideways(labels, d)


def stardist_3d():
    """StarDist's 3D test stack (31, 61, 57): synthetic nuclei from another project's generator (other
    shapes, noise, z behaviour), with its masks; fetched once with the 2D real image (``eval_real.py``)."""
    from eval_real import stardist_files

    yield "stardist-3d", "nuclei", *stardist_files("img3d.tif", "mask3d.tif")


def evaluate(model, stacks=STACKS, shape=SHAPE, methods=("propagation", "naive", "classical"),
             refine=False, log=print, data=None, **prop_kw) -> dict:
    """{method: {"ious": array, "bleed": array, "seconds": float, "per_stack": [...]}}.
    data: (name, kind, image, labels) tuples instead of the generator's ``stacks``."""
    from napari_sam.core.cache import EmbeddingCache
    from napari_sam.core.predictor import SlicePredictor
    res = {m: {"ious": [], "bleed": [], "area": [], "seconds": 0.0, "per_stack": []} for m in methods}
    for seed, kind, image, labels in (generated(stacks, shape) if data is None else data):
        seeds = seed_points(labels)
        cache = EmbeddingCache(max_bytes=1 << 40)
        predictor = SlicePredictor(model, refine=refine)
        for m in methods:
            t = time.perf_counter()
            if m == "propagation":
                pred = run_propagation(predictor, image, seeds, cache, **prop_kw)
            elif m == "naive":  # SAM as it is: its own candidate order (the stronger one for this baseline)
                pred = run_naive(SlicePredictor(model, refine=refine, rank="score"), image, seeds, cache)
            elif m == "drawn-mask":
                pred = run_drawn(predictor, image, labels, seeds, cache)
            elif m == "every-slice":
                pred = run_every_slice(predictor, image, seeds, cache)
            elif m.startswith("oracle-"):
                pred = run_oracle(predictor, image, labels, seeds, cache, m.split("-", 1)[1])
            elif m == "memory":
                pred = run_memory(predictor, image, seeds)
            elif m == "micro-sam":  # micro-sam's propagation on our model (micro_sam_baseline.py)
                from micro_sam_baseline import run_micro_sam

                pred, _ = run_micro_sam(predictor, image, seeds, cache)
            else:
                pred = run_classical(image, seeds)
            dt = time.perf_counter() - t
            ious, bleed = score_objects(pred, labels, seeds)
            r = res[m]
            r["ious"].append(ious)
            r["bleed"].append(bleed)
            r["area"].append(np.array([np.count_nonzero(labels[z] == i) for i, (z, _) in seeds.items()]))
            r["seconds"] += dt
            r["per_stack"].append((seed, kind, summarise(ious, bleed)))
            s = summarise(ious, bleed)
            log(f"  {seed} {kind:6s} {m:12s} n={s['n']:3d} median={s['median']:.3f} p10={s['p10']:.3f} "
                f"within1={s['within1']:.2f} ({dt:.1f}s)")
    for r in res.values():
        r["ious"], r["bleed"], r["area"] = (np.concatenate(r[k]) for k in ("ious", "bleed", "area"))
    return res


def time_objects(model, seed=950000, kind="nuclei", n=8, repeats=3, refine=False) -> dict:
    """Seconds to propagate the stack's n largest objects together through its
    32 slices, and each of them alone (stop rule off, so every object is
    decoded on every slice), two ways:

    * "cold": from the stack as loaded, every slice encoded once in the run
      and shared by the objects (what a user waits for the first time);
    * "warm": on embeddings already cached (precomputed, or a second run):
      the decoder's share alone. Best of ``repeats`` runs each.

    Returns {"cold": (together, [alone, ...]), "warm": (together, [alone, ...])}."""
    from napari_sam.core.cache import EmbeddingCache, embed_cached
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.propagate_rules import StopRule
    from napari_sam.synthetic import make_stack

    st = make_stack(SHAPE, seed=seed, kind=kind)
    predictor = SlicePredictor(model, refine=refine)
    warm = EmbeddingCache(max_bytes=1 << 40)
    for z in range(SHAPE[0]):
        embed_cached(predictor, warm, st.image[z])
    seeds = seed_points(st.labels)
    big = sorted(seeds, key=lambda i: -np.count_nonzero(st.labels == i))[:n]
    never = StopRule(min_score=-1e9, min_overlap=-1.0, max_growth=1e9, min_area=0, min_kept=0.0, min_contrast=-1e9,
                     min_contrast_large=-1e9)

    def best_of(ids, cold):
        t_best = np.inf
        for _ in range(repeats):
            cache = EmbeddingCache(max_bytes=1 << 40) if cold else warm
            t = time.perf_counter()
            run_propagation(predictor, st.image, {i: seeds[i] for i in ids}, cache, stop=never)
            t_best = min(t_best, time.perf_counter() - t)
        return t_best

    return {k: (best_of(big, k == "cold"), [best_of([i], k == "cold") for i in big]) for k in ("cold", "warm")}


def timing_text(t: dict) -> str:
    lines = ["| 32 slices, 8 largest objects of stack 950000 | 8 together (s) | 1 alone, mean of the 8 (s) | ratio |",
             "|---|---|---|---|"]
    what = {"cold": "from the loaded stack (each slice encoded once, shared)",
            "warm": "embeddings already cached (decoder only)"}
    for k, (together, alone) in t.items():
        one = float(np.mean(alone))
        lines.append(f"| {what[k]} | {together:.3f} | {one:.3f} | {together / one:.2f}x |")
    return "\n".join(lines)


def table(res) -> str:
    lines = ["| method | objects | median 3D IoU | p10 3D IoU | within 1 slice of true extent | time (s) |",
             "|---|---|---|---|---|---|"]
    for m, r in res.items():
        s = summarise(r["ious"], r["bleed"])
        lines.append(f"| {m} | {s['n']} | {s['median']:.3f} | {s['p10']:.3f} | {100 * s['within1']:.1f}% | {r['seconds']:.0f} |")
    return "\n".join(lines)


SIZES = [(0, 300), (300, 1000), (1000, 10**9)]


def size_table(res) -> str:
    """Median / p10 3D IoU by the object's area on its middle slice."""
    head = "| method | " + " | ".join(f"{a}-{b if b < 10**9 else ''} px ({{n{k}}})" for k, (a, b) in enumerate(SIZES)) + " |"
    any_r = next(iter(res.values()))
    counts = {f"n{k}": int(((any_r["area"] >= a) & (any_r["area"] < b)).sum()) for k, (a, b) in enumerate(SIZES)}
    lines = [head.format(**counts), "|---" * (len(SIZES) + 1) + "|"]
    for m, r in res.items():
        cells = []
        for a, b in SIZES:
            sel = (r["area"] >= a) & (r["area"] < b)
            s = summarise(r["ious"][sel], r["bleed"][sel])
            cells.append(f"{s['median']:.3f} / {s['p10']:.3f} / {100 * s['within1']:.0f}%")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded", help="registry name or checkpoint path")
    ap.add_argument("--write", type=Path, help="replace the results section of this markdown file")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--micro-sam", action="store_true",
                    help="add micro-sam's propagation on the same model and embeddings (needs micro_sam importable; "
                         "see benchmarks/micro_sam_baseline.py)")
    ap.add_argument("--stardist-3d", action="store_true",
                    help="instead: StarDist's 3D test stack of synthetic nuclei from another generator (implies --no-timing)")
    ap.add_argument("--drift", type=float, default=0.0,
                    help="instead: the held-out stacks with objects drifting this many px a slice sideways "
                         "(both axes; implies --no-timing)")
    ap.add_argument("--without", type=int, nargs="*", default=[], help="leave out these stack seeds (e.g. 950001)")
    ap.add_argument("--memory", action="store_true",
                    help="SAM 2 / 2.1 models: add propagation with SAM 2's memory (core.sam2_memory) to the methods")
    ap.add_argument("--every-slice", action="store_true",
                    help="add the seed point applied to every slice knowing its slice (slices without the object "
                         "left empty; the widget's Every slice, the CLI's --every-slice)")
    ap.add_argument("--int8", default="auto", choices=("auto", "off"),
                    help="the embedded model's int8 encoder on the CPU (core.int8; default where the CPU has it); "
                         "off: fp32 (docs/embedded-model.md's fp32 -> int8 propagation row)")
    ap.add_argument("--drawn", action="store_true",
                    help="add propagation from each object's true mask on its middle slice (one drawn slice per "
                         "object: napari-sam segment --masks) instead of a click")
    ap.add_argument("--oracle", action="store_true",
                    help="add two ceilings (not methods): ground-truth clicks / boxes on every slice of each "
                         "object's true extent, decoded by the same model (run_oracle)")
    args = ap.parse_args(argv)
    from napari_sam.core.models import load_model

    model = load_model(args.model, device="cpu", int8=False if args.int8 == "off" else "auto")
    print(f"model {args.model} sha256={model.checksum[:12]} encoder {model.precision}")
    if args.stardist_3d or args.drift:
        args.no_timing = True
    methods = ("propagation", "naive", "classical")
    if args.micro_sam:
        from micro_sam_baseline import micro_sam_version

        print(f"micro_sam {micro_sam_version()}")
        methods += ("micro-sam",)
    if args.memory:
        methods += ("memory",)
    if args.every_slice:
        methods += ("every-slice",)
    if args.drawn:
        methods += ("drawn-mask",)
    if args.oracle:
        methods += ("oracle-click", "oracle-box")
    if args.stardist_3d:
        data = stardist_3d()
    else:
        data = generated([s for s in STACKS if s[0] not in args.without])
        data = drifted(data, args.drift) if args.drift else data
    res = evaluate(model, data=data, methods=methods)
    tab = table(res) + "\n\nBy the object's area on its middle slice (median / p10 3D IoU / within 1 slice):\n\n" + size_table(res)
    print(tab)
    timing = ""
    if not args.no_timing:
        timing = timing_text(time_objects(model))
        print(timing)
    if args.write:
        _write(args.write, tab, timing, res, " ".join(["python", "benchmarks/eval_propagation.py", *(argv or sys.argv[1:])]))


def _write(path: Path, tab: str, timing: str, res, command: str):
    per = ["| stack | method | objects | median | p10 | within 1 slice |", "|---|---|---|---|---|---|"]
    for m, r in res.items():
        for seed, kind, s in r["per_stack"]:
            per.append(f"| {seed} {kind} | {m} | {s['n']} | {s['median']:.3f} | {s['p10']:.3f} | {100 * s['within1']:.0f}% |")
    body = (f"<!-- results:start -->\nCommand: `{command}`\n\n{tab}\n\n{timing}\n\n"
            f"<details><summary>per stack</summary>\n\n" + "\n".join(per) + "\n\n</details>\n<!-- results:end -->")
    text = path.read_text() if path.exists() else ""
    if "<!-- results:start -->" in text:
        a, rest = text.split("<!-- results:start -->", 1)
        text = a + body + rest.split("<!-- results:end -->", 1)[1]
    else:
        text = text + "\n" + body + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()

"""Correct, then propagate again: what one, two, three corrected slices per object buy, on the held-out stacks.

    python benchmarks/eval_correction.py [--rounds 3] [--stacks 950000 950002 ...] [--clearest off]

The widget's loop (docs/widget.md, "Correct, then propagate again"): the user clicks an object on its
middle slice, commits the candidate shown first and propagates (round 0); looks through the stack, corrects the object on its worst slice, and presses
Propagate again. Simulated here with the core, on the stacks and seed points of ``eval_propagation.py``,
every object of a stack at once, each round correcting each object's worst slice of its true z extent
(the lowest IoU with the ground truth, not already made by the user) with

* ``mask``: the ground truth's mask there (the user paints the slice exactly: the best a correction can be);
* ``box``: SAM's mask for the ground truth's box there (the user draws a box and commits SAM's answer, when it
  is better than what the slice has; else the slice is left as it is).

and then propagating again in two ways:

* ``redo`` (the widget since session 15): the slices the user made (the first commit, the click's mask on
  the middle slice, and every correction) are the prompts; everything an earlier run wrote is redone
  (``_qt/_redo.py``; ``tests/test_widget_propagate_redo.py`` checks that the widget gives exactly this);
* ``keep`` (the widget before): every slice the object is on is a prompt and only background is written,
  so a correction changes its own slice and fills the object into slices where it was missing.

Prints the median / p10 3D IoU and the share within one slice of the true extent after each round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from eval_propagation import MIN_AREA, STACKS, SHAPE, generated, run_propagation, score_objects, seed_points, summarise


def worst_slices(pred, gt, seeds, made: dict) -> dict[int, int]:
    """{id: z}: each object's slice of its true extent (>= MIN_AREA px there) with the lowest IoU, not in
    ``made`` ({id: {z, ...}}: made or looked at by the user already)."""
    out = {}
    for i in seeds:
        best = None
        for z in np.flatnonzero((gt == i).any((1, 2))):
            g = gt[z] == i
            if z in made.get(i, ()) or g.sum() < MIN_AREA:
                continue
            iou = _iou(pred[z] == i, g)
            if best is None or iou < best[0]:
                best = (iou, int(z))
        if best is not None:
            out[i] = best[1]
    return out


def _iou(a, b) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def corrections(predictor, image, gt, worst: dict, kind: str, embed, pred) -> dict[int, tuple[int, np.ndarray]]:
    """{id: (z, mask)}: the user's correction on each object's worst slice (``kind`` "mask" or "box"), where it
    is better than what ``pred`` has there (a user commits SAM's answer to a box only when it looks better)."""
    from napari_sam.core.prompts import ObjectPrompt

    out = {}
    for z in sorted(set(worst.values())):
        ids = [i for i, w in worst.items() if w == z]
        if kind == "mask":
            out.update({i: (z, gt[z] == i) for i in ids})
            continue
        embed(z)
        objs = []
        for i in ids:
            rr, cc = np.nonzero(gt[z] == i)
            objs.append(ObjectPrompt(box=np.array([rr.min(), cc.min(), rr.max(), cc.max()], np.float32)))
        masks = predictor.predict_objects(objs, multimask=False).masks[:, 0]
        out.update({i: (z, masks[k]) for k, i in enumerate(ids)
                    if _iou(masks[k], gt[z] == i) > _iou(pred[z] == i, gt[z] == i)})
    return out


def apply(labels: np.ndarray, fixes: dict) -> np.ndarray:
    """``labels`` with each object's correction written on its slice (its old pixels there cleared; the
    correction takes background and its own pixels only, as a commit does)."""
    out = labels.copy()
    for i, (z, m) in fixes.items():
        sl = out[z]
        sl[sl == i] = 0
        sl[m & (sl == 0)] = i
    return out


STOP = None  # the StopRule of every propagation here (--clearest off: session 14's); None: the defaults


def propagate_masks(predictor, image, anchors: dict, cache, labels=None) -> np.ndarray:
    from napari_sam.core.propagate import propagate_objects, run_to_end

    prompts = {i: {z: {"mask": m} for z, m in zs.items()} for i, zs in anchors.items() if zs}
    return run_to_end(propagate_objects(predictor, image, prompts, cache=cache, labels=labels, stop=STOP))


def evaluate(model, stacks, rounds: int, log=print, kinds=("mask", "box"), ways=("redo", "keep")) -> dict:
    """{(kind, way): [summary after round 0, 1, ...]} pooled over the stacks."""
    from napari_sam.core.cache import EmbeddingCache, stack_embedder
    from napari_sam.core.predictor import SlicePredictor

    pooled: dict = {}
    for seed, kind_of_stack, image, gt in generated(stacks, SHAPE):
        seeds = seed_points(gt)
        cache = EmbeddingCache(max_bytes=1 << 40)
        predictor = SlicePredictor(model)
        embed = stack_embedder(predictor, image, cache, None, None)
        clicked = run_propagation(predictor, image, seeds, cache)  # for the click's mask on the middle slice
        committed = {i: {z: clicked[z] == i} for i, (z, _) in seeds.items() if (clicked[z] == i).any()}
        first = propagate_masks(predictor, image, committed, cache)  # the widget: commit the click, propagate
        for kind in kinds:
            for way in ways:
                pred = first
                made = {i: dict(zs) for i, zs in committed.items()}
                rows = pooled.setdefault((kind, way), [[] for _ in range(rounds + 1)])
                rows[0].append(score_objects(pred, gt, seeds))
                seen = {i: set(zs) for i, zs in made.items()}
                for k in range(1, rounds + 1):
                    worst = worst_slices(pred, gt, seeds, seen)
                    for i, z in worst.items():  # looked at: not chosen again, corrected or not
                        seen.setdefault(i, set()).add(z)
                    fixes = corrections(predictor, image, gt, worst, kind, embed, pred)
                    for i, (z, m) in fixes.items():
                        made.setdefault(i, {})[z] = m
                    fixed = apply(pred, fixes)
                    if way == "redo":
                        pred = propagate_masks(predictor, image, made, cache)
                    else:  # every slice the object is on is a prompt; only background is written
                        anchors = {i: {z: fixed[z] == i for z in np.flatnonzero((fixed == i).any((1, 2)))}
                                   for i in seeds}
                        res = propagate_masks(predictor, image, anchors, cache, labels=fixed)
                        pred = np.where(fixed != 0, fixed, res)
                    rows[k].append(score_objects(pred, gt, seeds))
                    s = summarise(*rows[k][-1])
                    log(f"  {seed} {kind_of_stack:6s} {kind:4s} {way:4s} round {k}: median={s['median']:.3f} "
                        f"p10={s['p10']:.3f} within1={s['within1']:.2f}")
    return {key: [summarise(np.concatenate([a for a, _ in r]), np.concatenate([b for _, b in r])) for r in rows]
            for key, rows in pooled.items()}


def table(res: dict, rounds: int) -> str:
    head = "| correction | propagating again | " + " | ".join(
        ["none"] + [f"{k} per object" for k in range(1, rounds + 1)]) + " |"
    lines = [head, "|" + "---|" * (rounds + 3)]
    for (kind, way), ss in res.items():
        cells = [f"{s['median']:.3f} / {s['p10']:.3f} / {s['within1']:.1%}" for s in ss]
        lines.append(f"| {kind} | {way} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded", help="registry name or checkpoint path")
    ap.add_argument("--rounds", type=int, default=3, help="corrections per object, one per round")
    ap.add_argument("--stacks", type=int, nargs="*", default=None, help="held-out stack seeds (default: all six)")
    ap.add_argument("--kinds", nargs="+", default=["mask", "box"], choices=["mask", "box"])
    ap.add_argument("--ways", nargs="+", default=["redo", "keep"], choices=["redo", "keep"])
    ap.add_argument("--clearest", default="on", choices=["on", "off"],
                    help="StopRule.clearest: off holds an object beyond each prompted slice to that slice's contrast "
                         "(before session 15)")
    args = ap.parse_args(argv)
    from napari_sam.core.models import load_model
    from napari_sam.core.propagate_rules import StopRule

    global STOP
    STOP = StopRule(clearest=args.clearest == "on")

    model = load_model(args.model, device="cpu")
    print(f"model {args.model} sha256={model.checksum[:12]} encoder {model.precision}")
    stacks = [s for s in STACKS if args.stacks is None or s[0] in args.stacks]
    res = evaluate(model, stacks, args.rounds, kinds=args.kinds, ways=args.ways)
    print("median / p10 3D IoU / within 1 slice of the true extent, after each round:")
    print(table(res, args.rounds))


if __name__ == "__main__":
    main()

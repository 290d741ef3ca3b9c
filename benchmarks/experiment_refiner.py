"""Experiment (session 11, not shipped): a small learned refiner of SAM's upsampled logits against the
full-resolution slice, trained on the frozen embedded model's masks, scored on the validation stacks and
the real image against the model without it.

    python benchmarks/experiment_refiner.py [--slices 1200] [--steps 1500] [--data-cache train-data.npz]

1. Patches: on training slices (``napari_sam.train``'s cached data, training seeds only) each of up to 6
   objects a slice is prompted with an interior click (the candidate shown first) and a jittered box; a
   64 px window of the slice, SAM's full-resolution logits and the object's truth is kept.
2. The refiner: a 5-layer dilated CNN, residual on the logits (it starts as the identity), seeing the
   slice, its intensity relative to the mask's inside and surroundings, and the logits.
3. Scores: per object IoU without / with it (pieces not connected to the prompt dropped in both) on the
   validation stacks (seeds 800000+) and the real image (``eval_real.py``). Results in
   docs/embedded-model.md ("Where the gap is ... (session 11)").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import iou  # noqa: E402
from eval_embedded import held_out  # noqa: E402

P = 64


def rel_channel(g, pos):
    """(g - outside) / (inside - outside), the medians inside the mask ``pos`` and in a ring around it."""
    from scipy import ndimage as ndi

    st = ndi.generate_binary_structure(2, 1)
    inner = ndi.binary_erosion(pos, st, 1)
    core = inner if inner.sum() >= 4 else pos
    ring = ndi.binary_dilation(pos, st, 6) & ~ndi.binary_dilation(pos, st, 2)
    if not core.any() or not ring.any():
        return np.zeros_like(g)
    vi, vo = np.median(g[core]), np.median(g[ring])
    return np.clip((g - vo) / max(vi - vo, 0.02), -1.0, 2.0)


def refiner(ch=32, dil=(1, 2, 4, 2, 1)):
    import torch.nn as nn

    class Refiner(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(3, ch, 3, padding=1), nn.ReLU()]
            for d in dil:
                layers += [nn.Conv2d(ch, ch, 3, padding=d, dilation=d), nn.ReLU()]
            last = nn.Conv2d(ch, 1, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.net = nn.Sequential(*layers, last)

        def forward(self, g, rel, logits):
            import torch

            return logits + self.net(torch.cat([g * 2 - 1, rel, (logits / 8).clamp(-2, 2)], 1))

    return Refiner()


def _full_logits(pred, m, j):
    import torch

    return pred._postprocess(torch.as_tensor(m.low_res_logits[:, j : j + 1])).numpy()[0, 0]


def patches(model, data_cache, n_slices, rng):
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.synthetic import interior_point

    d = np.load(data_cache)
    images, labels = d["images"], d["labels"]
    pred = SlicePredictor(model, normalize="none", fragments=False, input_scale=2.0)
    G, L, Y = [], [], []
    for i in rng.choice(len(images), n_slices, replace=False):
        img, lab = images[i], labels[i]
        pred.set_image(img)
        gray = pred.embedding.gray
        ids, cnt = np.unique(lab[lab > 0], return_counts=True)
        ids = ids[cnt >= 20]
        for oid in rng.choice(ids, min(6, len(ids)), replace=False) if len(ids) else []:
            gt = lab == oid
            rr, cc = np.nonzero(gt)
            for kind in ("point", "box"):
                if kind == "point":
                    m = pred.predict(points=interior_point(gt, rng, 0.5)[None], point_labels=[1])
                    j = int(m.best_index()[0])
                else:
                    jit = np.clip(rng.normal(0, 0.1 * np.array([np.ptp(rr) + 1, np.ptp(cc) + 1] * 2)), -5, 5)
                    m, j = pred.predict(boxes=np.array([rr.min(), cc.min(), rr.max(), cc.max()], float) + jit,
                                        multimask=False), 0
                full = _full_logits(pred, m, j)
                pos = (full > 0) | gt
                r, c = np.nonzero(pos)
                if np.ptp(r) < P - 8 and np.ptp(c) < P - 8:  # the whole object, else a piece of its outline
                    cr, cc0 = (r.min() + r.max()) // 2, (c.min() + c.max()) // 2
                else:
                    edge = np.argwhere(pos ^ np.pad(pos, 1)[2:, 1:-1] | pos ^ np.pad(pos, 1)[1:-1, 2:])
                    cr, cc0 = edge[rng.integers(len(edge))]
                r0 = int(np.clip(cr - P // 2, 0, lab.shape[0] - P))
                c0 = int(np.clip(cc0 - P // 2, 0, lab.shape[1] - P))
                G.append(gray[r0 : r0 + P, c0 : c0 + P])
                L.append(full[r0 : r0 + P, c0 : c0 + P])
                Y.append(gt[r0 : r0 + P, c0 : c0 + P])
    G = np.stack(G).astype(np.float32) / 255
    L = np.stack(L).astype(np.float32)
    R = np.stack([rel_channel(g, lg > 0) for g, lg in zip(G, L)]).astype(np.float32)
    return G, R, L, np.stack(Y).astype(np.float32)


def train(G, R, L, Y, steps, rng):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = refiner()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[:, None]  # noqa: E731
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * s / steps))
        b = rng.choice(len(G), 32, replace=False)
        k, flip = int(rng.integers(4)), rng.random() < 0.5

        def aug(a):
            a = np.rot90(a[b], k, (1, 2))
            return a[:, :, ::-1] if flip else a

        out = net(*(t(aug(a)) for a in (G, R, L)))
        y = t(aug(Y))
        p = torch.sigmoid(out)
        dice = 1 - (2 * (p * y).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(out, y) + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def refine(net, gray_u8, full, margin=12):
    import torch

    pos = full > 0
    if not pos.any():
        return pos
    r, c = np.nonzero(pos)
    r0, r1 = max(r.min() - margin, 0), min(r.max() + margin + 1, full.shape[0])
    c0, c1 = max(c.min() - margin, 0), min(c.max() + margin + 1, full.shape[1])
    g = gray_u8[r0:r1, c0:c1].astype(np.float32) / 255
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]  # noqa: E731
    with torch.no_grad():
        out = net(t(g), t(rel_channel(g, pos[r0:r1, c0:c1])), t(full[r0:r1, c0:c1]))[0, 0].numpy()
    res = np.zeros_like(pos)
    res[r0:r1, c0:c1] = out > 0
    return res


def score(model, net, images):
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.refine import keep_prompted
    from napari_sam.synthetic import interior_point

    pred = SlicePredictor(model, fragments=False)
    rows = []
    for _, img, lab, rng in images:
        pred.set_image(img)
        gray = pred.embedding.gray
        ids, cnt = np.unique(lab[lab > 0], return_counts=True)
        for oid in ids[cnt >= 20]:
            gt = lab == oid
            pt = interior_point(gt, rng, 0.5)
            rr, cc = np.nonzero(gt)
            box = np.array([rr.min(), cc.min(), rr.max(), cc.max()], float)
            m = pred.predict(points=pt[None], point_labels=[1])
            full = _full_logits(pred, m, int(m.best_index()[0]))
            keep = lambda x: keep_prompted(x, pt[None], [1])  # noqa: E731
            row = [iou(keep(full > 0), gt), iou(keep(refine(net, gray, full)), gt)]
            full = _full_logits(pred, pred.predict(boxes=box, multimask=False), 0)
            row += [iou(keep_prompted(full > 0, box=box), gt), iou(keep_prompted(refine(net, gray, full), box=box), gt)]
            rows.append(row)
    return np.array(rows)


def main(argv=None):
    import torch

    import napari_sam
    from eval_real import SEED, dsb_nuclei

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=1200)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--data-cache", default=str(Path.home() / ".cache/napari-sam/train-data.npz"),
                    help="napari_sam.train's training slices (made by it with --data-cache)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rng = np.random.default_rng(11)
    model = napari_sam.load_model("embedded", device="cpu")
    t = time.time()
    data = patches(model, args.data_cache, args.slices, rng)
    print(f"{len(data[0])} patches ({time.time() - t:.0f} s)", flush=True)
    t = time.time()
    net = train(*data, args.steps, np.random.default_rng(1))
    print(f"trained ({time.time() - t:.0f} s)", flush=True)
    img, lab = dsb_nuclei()
    for name, images in (("validation stacks", held_out(8, 800_000)),
                         ("real image", [("dsb2018", img, lab, np.random.default_rng(SEED))])):
        r = np.array(score(model, net, images))
        med, p10 = np.median(r, 0), np.percentile(r, 10, 0)
        print(f"{name} ({len(r)} objects): click {med[0]:.3f} / {p10[0]:.3f} -> {med[1]:.3f} / {p10[1]:.3f}; "
              f"box {med[2]:.3f} / {p10[2]:.3f} -> {med[3]:.3f} / {p10[3]:.3f}")


if __name__ == "__main__":
    main()

"""The pieces of the training recipe (``napari_sam.train``): simulated prompts, losses, batched decoding.

Prompts are (row, col) as everywhere in napari-sam; the training loop turns
them into SAM's (x, y). Functions take ``torch``/``F`` as arguments so that
importing this module does not import torch.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- prompts ---


def sample_interior(mask: np.ndarray, rng, depth_lo=0.2) -> np.ndarray:
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(mask)
    cand = np.argwhere(dist >= rng.uniform(depth_lo, 0.8) * dist.max())
    return cand[rng.integers(len(cand))].astype(np.float32)  # (row, col)


def jittered_box(mask: np.ndarray, rng) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()  # inclusive, as SAM's mask->box
    h, w = r1 - r0, c1 - c0
    j = rng.normal(0, 0.07, 4) * np.array([h, w, h, w])
    j = np.clip(j, -12, 12)
    box = np.array([r0, c0, r1, c1], np.float32) + j
    return np.clip(box, 0, mask.shape[0] - 1)


def corrective_point(gt: np.ndarray, pred: np.ndarray, rng):
    from scipy import ndimage as ndi

    fn, fp = gt & ~pred, pred & ~gt
    if fn.sum() == 0 and fp.sum() == 0:
        return sample_interior(gt, rng), 1
    err, lab = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
    dist = ndi.distance_transform_edt(err)
    cand = np.argwhere(dist >= 0.5 * dist.max())
    return cand[rng.integers(len(cand))].astype(np.float32), lab


# ------------------------------------------------------------------ losses ---


def losses(torch, F, logits, gt, weight):
    """logits (K, M, H, W), gt (K, 1, H, W) -> per-candidate loss (K, M), IoU (K, M)."""
    g = gt.expand_as(logits)
    w = weight.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, g, reduction="none")
    bce = (bce * w).sum((-1, -2)) / w.sum((-1, -2))
    p = torch.sigmoid(logits)
    inter = (p * g).sum((-1, -2))
    dice = 1 - (2 * inter + 1) / (p.sum((-1, -2)) + g.sum((-1, -2)) + 1)
    with torch.no_grad():
        b = logits > 0
        gi = g > 0.5
        iou = (b & gi).sum((-1, -2)).float() / ((b | gi).sum((-1, -2)).float().clamp(min=1))
    return 2.0 * bce + dice, iou


def weight_map(torch, F, gt, balance: float = 1.0):
    """BCE weights: 1 near the object (box + margin), 0.15 far away, +2 on the outline.

    ``balance`` scales the extra weight of the positives of small objects
    (1: the shipped recipe). It is needed against the early all-background
    collapse; kept on, it biases small objects' masks to be too large (1.5x
    the true area under 80 px, measured). ``--balance-fade`` fades it out
    after warm-up; tried, not better overall (docs/embedded-model.md).
    """
    k, _, h, w = gt.shape
    wmap = torch.full_like(gt, 0.15)
    for i in range(k):
        rows = torch.nonzero(gt[i, 0].sum(1) > 0).flatten()
        cols = torch.nonzero(gt[i, 0].sum(0) > 0).flatten()
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        m = max(8, (r1 - r0) // 2, (c1 - c0) // 2)
        wmap[i, 0, max(r0 - m, 0) : r1 + m, max(c0 - m, 0) : c1 + m] = 1.0
    band = F.max_pool2d(gt, 7, 1, 3) - (-F.max_pool2d(-gt, 7, 1, 3))
    wmap = wmap + 2.0 * band
    # class balance near the object: positives carry at least half the
    # negatives' weight (without it the first hundreds of steps collapse to
    # all-background on small nuclei)
    pos = (wmap * gt).sum((-1, -2), keepdim=True)
    neg = (wmap * (1 - gt)).sum((-1, -2), keepdim=True)
    pos_w = 1.0 + balance * ((0.5 * neg / pos.clamp(min=1)).clamp(1.0, 4.0) - 1.0)
    return torch.where(gt > 0, wmap * pos_w, wmap)



def predict_masks_batched(torch, dec, emb, image_pe, sparse, dense):
    """SAM's ``MaskDecoder.predict_masks`` for prompts on different images.

    The official method repeats one image's embedding for all its prompts;
    training decodes the objects of a whole batch at once, so ``emb`` is
    already one embedding per prompt. Same modules, same arithmetic.
    """
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], 0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), 1)
    src = emb + dense
    pos = image_pe.expand(tokens.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = dec.transformer(src, pos, tokens)
    mask_tok = hs[:, 1 : 1 + dec.num_mask_tokens, :]
    up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](mask_tok[:, i, :]) for i in range(dec.num_mask_tokens)], 1)
    b, c, h, w = up.shape
    masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)
    return masks, dec.iou_prediction_head(hs[:, 0, :])

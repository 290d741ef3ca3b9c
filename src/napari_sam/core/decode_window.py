"""SAM's mask decoder on a window of the image embedding around each object.

SAM's decoder copies the whole image embedding once per object
(``repeat_interleave``), so decoding n objects costs n whole-image decodes.
When we already know roughly where an object is (propagation: near its
mask on the previous slice), the decoder can run on a window of the
embedding around it instead, with the positional and dense (mask) prompt
encodings cropped to the same window, so every token keeps its absolute
position. Outside the transformer everything is local (the output upscaling
is a stride-2, kernel-2 transposed convolution, so each token maps to its
own 4x4 block of logits), which makes the only change the image tokens the
transformer's attention can see. Logits outside the window are ``OUTSIDE``.

This is ``MaskDecoder.predict_masks`` of segment-anything with
``repeat_interleave`` replaced by a gather of windows.
"""

from __future__ import annotations

import math

import numpy as np

CONTEXT_TOKENS = 4  # tokens of context on every side of the object's box
OUTSIDE = -32.0  # logit given to everything outside an object's window


def token_windows(predictor, boxes) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Slice-pixel boxes (row0, col0, row1, col1) -> (per-object token offsets, common window size).

    All objects get the same window size (the largest needed, at most the
    whole grid), so they still share one decoder call.
    """
    emb = predictor.embedding
    gh_all, gw_all = emb.features.shape[-2:]
    H, W = emb.original_size
    sy = emb.input_size[0] / H / (emb.padded_size[0] / gh_all)  # slice px -> tokens
    sx = emb.input_size[1] / W / (emb.padded_size[1] / gw_all)
    spans = []
    for r0, c0, r1, c1 in boxes:
        ty0, ty1 = math.floor(r0 * sy) - CONTEXT_TOKENS, math.ceil((r1 + 1) * sy) + CONTEXT_TOKENS
        tx0, tx1 = math.floor(c0 * sx) - CONTEXT_TOKENS, math.ceil((c1 + 1) * sx) + CONTEXT_TOKENS
        spans.append((ty0, ty1, tx0, tx1))
    gh = min(max(b - a for a, b, _, _ in spans), gh_all)
    gw = min(max(b - a for _, _, a, b in spans), gw_all)
    offs = []
    for ty0, ty1, tx0, tx1 in spans:
        oy = int(np.clip((ty0 + ty1 - gh) // 2, 0, gh_all - gh))
        ox = int(np.clip((tx0 + tx1 - gw) // 2, 0, gw_all - gw))
        offs.append((oy, ox))
    return offs, (gh, gw)


def decode_in_windows(md, features, image_pe, sparse, dense, offsets, size, multimask: bool):
    """SAM's mask decoder ``md`` with object j seeing only the window at
    ``offsets[j]`` (token row, col) of ``size`` (gh, gw).

    features, image_pe: (1, C, GH, GW); sparse: (n, T, C); dense: (n, C, GH, GW).
    Returns (low-res logits (n, c, 4 GH, 4 GW) torch, iou (n, c) torch), like
    ``MaskDecoder.forward``.
    """
    import torch

    gh, gw = size
    n = sparse.shape[0]

    def gather(t, per_object):
        return torch.stack([t[j if per_object else 0, :, y : y + gh, x : x + gw] for j, (y, x) in enumerate(offsets)])

    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).unsqueeze(0).expand(n, -1, -1)
    tokens = torch.cat((out_tokens, sparse), dim=1)
    src = gather(features, False) + gather(dense, True)
    pos = gather(image_pe, False)
    hs, src = md.transformer(src, pos, tokens)
    iou_out = hs[:, 0, :]
    mask_out = hs[:, 1 : 1 + md.num_mask_tokens, :]
    src = src.transpose(1, 2).reshape(n, -1, gh, gw)
    up = md.output_upscaling(src)
    hyper = torch.stack([md.output_hypernetworks_mlps[i](mask_out[:, i, :]) for i in range(md.num_mask_tokens)], dim=1)
    b, c, h, w = up.shape
    masks = (hyper @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
    iou = md.iou_prediction_head(iou_out)
    sel = slice(1, None) if multimask else slice(0, 1)
    masks, iou = masks[:, sel], iou[:, sel]
    fy, fx = h // gh, w // gw
    full = masks.new_full((n, masks.shape[1], features.shape[-2] * fy, features.shape[-1] * fx), OUTSIDE)
    for j, (y, x) in enumerate(offsets):
        full[j, :, y * fy : (y + gh) * fy, x * fx : (x + gw) * fx] = masks[j]
    return full, iou

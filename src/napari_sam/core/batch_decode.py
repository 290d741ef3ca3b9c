"""Decode many objects on one slice embedding in one mask-decoder call, and
keep each object's mask as a small crop.

``SlicePredictor.predict_objects`` returns every object's masks at the full
slice size. Propagation decodes every live object on every slice, so here
each object is kept as a crop around it instead: its SAM logits are sampled
at full resolution only inside the bounding box of its low-resolution mask
(plus a margin), and memory and time follow the objects' area, not
n_objects x slice area.

Objects with the same prompt kind (number of points, box or not) share one
decoder call; a mask prompt may be present for some objects and not others
(the dense prompt of a mask-less object is SAM's ``no_mask_embed``, exactly
what SAM uses without a mask). Calls are split into chunks of at most
``max_batch`` objects, sized so that the decoder's activations stay near
``DECODER_BUDGET`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .decode_window import Windows, decode_in_windows, needs_windows, prompt_box, token_windows, trained_tokens
from .prompts import ObjectPrompt, to_sam

DECODER_BUDGET = 1 << 24  # floats per activation tensor of the decoder (64 MiB)
CROP_MARGIN = 8  # px of context kept around each mask (boundary refinement needs 6)


@dataclass
class Decoded:
    """One object's answer on one slice.

    score: SAM's predicted IoU of the chosen candidate.
    low_res: (h, w) float32 low-resolution logits of that candidate (the next
        slice's mask prompt).
    r0, c0: top-left corner of the crop in slice pixels (row, col).
    logits: (hc, wc) float32 full-resolution logits inside the crop.
    mask: (hc, wc) bool, the object's pixels inside the crop.
    """

    score: float
    low_res: np.ndarray
    r0: int
    c0: int
    logits: np.ndarray
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _kind(o: ObjectPrompt) -> tuple[int, bool]:
    return (len(o.points), o.box is not None)


def decode_objects(predictor, prompts: list[ObjectPrompt], *, multimask: bool = False,
                   select=None, refine: bool = False, windows=None, threshold: float | None = None) -> list[Decoded]:
    """Decode ``prompts`` (one per object, napari (row, col) convention) on the
    predictor's current embedding.

    multimask: ask SAM for its 3 candidates and keep one per object: the
    one ``select[i](scores (c,), low_res (c, h, w)) -> index`` picks if
    ``select`` is given, else the first by the predictor's ``rank`` (``core.choose``).
    refine: ``core.refine.refine_mask`` on the chosen mask; without it, the predictor's ``fragments``
    setting (drop pieces not connected to the prompt) applies.
    windows: per object, the (row0, col0, row1, col1) slice pixels that may
    hold it, or None for the whole slice: see ``core.decode_window``.
    threshold: logit above which a pixel is in the mask (default SAM's, 0).
    """
    from .sam2_model import mask_threshold

    thr = float(mask_threshold(predictor.sam) if threshold is None else threshold)
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(prompts):
        groups.setdefault(_kind(o), []).append(i)
    out: list = [None] * len(prompts)
    emb = predictor.embedding
    for idx in groups.values():
        win = None if windows is None else token_windows(predictor, [windows[i] for i in idx])
        # per object, the decoder's activations follow its window (the whole embedding without one)
        per_object = sum(t[0].numel() for t in emb.tensors) if win is None else emb.features.shape[1] * win.size[0] * win.size[1]
        chunk = max(1, DECODER_BUDGET // max(per_object, 1))
        for s in range(0, len(idx), chunk):
            part = idx[s : s + chunk]
            sub = None if win is None else win.part(slice(s, s + chunk))
            low, iou = decode_prompts(predictor, [prompts[i] for i in part], multimask, sub)
            low, iou = low.float().cpu().numpy(), iou.float().cpu().numpy()
            for j, i in enumerate(part):
                if low.shape[1] == 1 or select:
                    k = 0 if low.shape[1] == 1 else select[i](iou[j], low[j])
                    out[i] = _crop_object(predictor, low[j, k], float(iou[j, k]), prompts[i], refine, thr)
                else:
                    out[i] = _ranked(predictor, low[j], iou[j], prompts[i], refine, thr)
    return out


def decode_grouped(predictor, items, threshold: float | None = None):
    """[(oid, ObjectPrompt)] of one slice -> [(oid, Decoded)]: a positive point alone with SAM's 3
    candidates (the first by the predictor's ``rank``, ``core.choose``), richer prompts one mask; each kind
    in one batched call."""
    single = [len(p.points) == 1 and p.box is None and p.mask is None for _, p in items]
    out = []
    for multi in (True, False):
        group = [(o, p) for (o, p), s in zip(items, single) if s == multi]
        if group:
            dec = decode_objects(predictor, [p for _, p in group], multimask=multi, refine=predictor.refine,
                                 threshold=threshold)
            out += [(o, d) for (o, _), d in zip(group, dec)]
    return out


def decode_prompts(predictor, objs: list[ObjectPrompt], multimask: bool, window: Windows | None = None):
    """One prompt-encoder + mask-decoder call for objects with the same prompt kind
    -> (low-res logits (n, c, h, w), iou (n, c)) torch tensors.

    ``window``: where each object is decoded (``core.decode_window``); without
    it the whole embedding, except for the embedded model on slices larger than
    its trained positions, which always gets a window around each prompt.
    """
    import torch

    from .fast_decoder import decode, dense_pe
    from .sam2_model import prompt_encoder

    sam, emb, dev = predictor.sam, predictor.embedding, predictor.model.device
    pe = prompt_encoder(sam)
    if predictor.native:
        from .embedded import set_grid

        set_grid(sam, emb.padded_size)
    if window is None and needs_windows(predictor):
        ref = trained_tokens(predictor)
        window = token_windows(predictor, [prompt_box(o, predictor) for o in objs], size=(ref, ref))
    # prompts move with their window's positional code (in SAM input pixels)
    shift = np.zeros((len(objs), 2)) if window is None else window.shifts() * (
        np.array(emb.padded_size, float) / np.array(emb.features.shape[-2:], float))
    scale = predictor._scale()
    points = boxes = None
    if len(objs[0].points):
        xy, _ = to_sam(np.stack([o.points for o in objs]), None, scale)
        xy = xy - shift[:, None, ::-1].astype(np.float32)
        lab = np.stack([o.labels for o in objs])
        points = (torch.as_tensor(xy, dtype=torch.float, device=dev), torch.as_tensor(lab, dtype=torch.int, device=dev))
    if objs[0].box is not None:
        _, bx = to_sam(None, np.stack([o.box for o in objs]), scale)
        bx = bx - np.tile(shift[:, ::-1], 2).astype(np.float32)
        boxes = torch.as_tensor(bx, dtype=torch.float, device=dev)
    sam2 = getattr(predictor, "sam2", None) is not None
    if sam2:
        from .sam2_model import boxes_as_points

        points, boxes = boxes_as_points(points, boxes)
    with torch.inference_mode():
        if points is None and boxes is None:  # mask-only prompts: SAM gets no sparse tokens
            sparse = torch.empty((len(objs), 0, pe.embed_dim), device=dev)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(objs), -1, *pe.image_embedding_size)
        else:
            sparse, dense = pe(points=points, boxes=boxes, masks=None)
        with_mask = [j for j, o in enumerate(objs) if o.mask is not None]
        if window is not None and not sam2:  # each object's dense prompt on its window only
            gh, gw = window.size
            dense = dense[:, :, :gh, :gw].clone()  # no_mask_embed: the same at every position
            for j in with_mask:  # the mask embedding is local (2x2 stride-2 convolutions): crop its input
                y, x = window.offsets[j]
                m = predictor._mask_input(objs[j].mask)[:, 4 * y : 4 * (y + gh), 4 * x : 4 * (x + gw)]
                dense[j] = pe.mask_downscaling(m[None])[0]
        elif with_mask:
            dense = dense.clone()
            m = torch.stack([predictor._mask_input(objs[j].mask) for j in with_mask])
            dense[with_mask] = pe.mask_downscaling(m)
        if sam2:
            from .sam2_model import decode as decode_sam2

            return decode_sam2(sam, emb, sparse, dense, multimask)
        if window is not None:
            return decode_in_windows(sam.mask_decoder, emb.features, dense_pe(pe), sparse, dense, window, multimask)
        if predictor.fast:
            return decode(sam.mask_decoder, emb.features, dense_pe(pe), sparse, dense, multimask)
        return sam.mask_decoder(image_embeddings=emb.features, image_pe=pe.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=multimask)


def _ranked(predictor, low: np.ndarray, iou: np.ndarray, prompt: ObjectPrompt, refine: bool, thr: float) -> Decoded:
    """The first of an object's candidates by the predictor's ``rank`` (``core.choose``)."""
    if getattr(predictor, "rank", "score") == "score":
        k = int(np.argmax(iou))
        return _crop_object(predictor, low[k], float(iou[k]), prompt, refine, thr)
    cands = [_crop_object(predictor, low[k], float(iou[k]), prompt, refine, thr) for k in range(len(iou))]
    return cands[int(np.argmax(_keys(predictor, cands, iou, prompt)))]


def _keys(predictor, cands: list[Decoded], iou: np.ndarray, prompt: ObjectPrompt) -> np.ndarray:
    """Ranking keys of candidate crops: pasted into one common crop first."""
    live = [d for d in cands if d.mask.any()]
    if not live:
        return np.asarray(iou, np.float64)
    r0, c0 = min(d.r0 for d in live), min(d.c0 for d in live)
    r1 = max(d.r0 + d.mask.shape[0] for d in live)
    c1 = max(d.c0 + d.mask.shape[1] for d in live)
    masks = np.zeros((len(cands), r1 - r0, c1 - c0), bool)
    for k, d in enumerate(cands):
        if d.mask.any():
            masks[k, d.r0 - r0 : d.r0 - r0 + d.mask.shape[0], d.c0 - c0 : d.c0 - c0 + d.mask.shape[1]] = d.mask
    return predictor.rank_keys(iou, masks, r0, c0, prompt.points, prompt.labels)


def _crop_object(predictor, low: np.ndarray, score: float, prompt: ObjectPrompt, refine: bool, thr: float) -> Decoded:
    """Full-resolution logits of one object inside the box of its low-res mask."""
    emb = predictor.embedding
    H, W = emb.original_size
    low = low.copy()  # not a view: it would keep the whole call's (n, c, h, w) logits alive as long as a track
    pos = low > thr
    if not pos.any():
        z = np.zeros((0, 0), np.float32)
        return Decoded(score, low, 0, 0, z, z.astype(bool))
    # low-res index -> slice pixel: through the padded input, then the resize
    fy = emb.padded_size[0] / low.shape[0] * H / emb.input_size[0]
    fx = emb.padded_size[1] / low.shape[1] * W / emb.input_size[1]
    rows, cols = np.flatnonzero(pos.any(1)), np.flatnonzero(pos.any(0))
    r0 = max(int(np.floor((rows[0] - 1) * fy)) - CROP_MARGIN, 0)
    r1 = min(int(np.ceil((rows[-1] + 2) * fy)) + CROP_MARGIN, H)
    c0 = max(int(np.floor((cols[0] - 1) * fx)) - CROP_MARGIN, 0)
    c1 = min(int(np.ceil((cols[-1] + 2) * fx)) + CROP_MARGIN, W)
    logits = sample_logits(low, emb, r0, r1, c0, c1)
    mask = logits > thr
    fragments = getattr(predictor, "fragments", False)
    if (refine or fragments) and mask.any():
        from .refine import tidy_mask

        pts = prompt.points - np.array([r0, c0], np.float32)
        box = None if prompt.box is None else prompt.box - np.array([r0, c0, r0, c0], np.float32)
        gray = None if emb.gray is None else emb.gray[r0:r1, c0:c1]
        mask = tidy_mask(mask, gray, pts, prompt.labels, box, snap=refine, fragments=fragments)
    return Decoded(score, low, r0, c0, logits, mask)


def sample_logits(low: np.ndarray, emb, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Bilinear full-resolution logits of rows r0:r1, cols c0:c1 of the slice.

    One bilinear sample of the low-res grid at each pixel centre (through
    SAM's resize and padding). For native-resolution models this equals
    SAM's ``postprocess_masks`` (upsample, crop) exactly; for resized input
    (ViT) it replaces SAM's two successive resizes by one.
    """
    import torch
    import torch.nn.functional as F

    H, W = emb.original_size
    (h, w), (hp, wp) = emb.input_size, emb.padded_size
    ys = (np.arange(r0, r1) + 0.5) * (h / H)  # pixel centre in the resized input, +0.5
    xs = (np.arange(c0, c1) + 0.5) * (w / W)
    gy = torch.as_tensor(2 * ys / hp - 1, dtype=torch.float32)
    gx = torch.as_tensor(2 * xs / wp - 1, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]  # (1, hc, wc, 2) as (x, y)
    t = torch.as_tensor(low, dtype=torch.float32)[None, None]
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0].numpy()

"""SAM's mask decoder on a window of the image embedding around each object.

Two reasons to decode an object on a window instead of the whole embedding:

* speed: SAM's decoder copies the whole image embedding once per object
  (``repeat_interleave``), so decoding n objects costs n whole-image decodes.
  When we know roughly where an object is (propagation: near its mask on the
  previous slice) a window around it is enough.
* the embedded model's positional code: it was trained on 256 px slices, so
  its decoder has only seen positions 0-255 px (``embedded.PE_REFERENCE``).
  On a larger slice every object is decoded on a window of at most that size
  whose positional code (and the prompts' coordinates) are shifted back into
  the trained range. The encoder is convolutional, so the window's features
  do not depend on where it lies. Without this, clicks more than 256 px from
  the top-left corner of a slice gave garbage (measured: median IoU 0.07
  there, 0.87 in the top-left quadrant, on a 512 px image).

Outside the transformer everything is local (the output upscaling is a
stride-2, kernel-2 transposed convolution, so each token maps to its own 4x4
block of logits): the only change is which image tokens the transformer's
attention can see. Logits outside an object's window are ``OUTSIDE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONTEXT_TOKENS = 4  # tokens of context on every side of the object's box
OUTSIDE = -32.0  # logit given to everything outside an object's window


@dataclass
class Windows:
    """Where each object of one decoder call is decoded.

    offsets: per object, the window's (row, col) offset in embedding tokens.
    size: (gh, gw) tokens, common to all objects (they share one call).
    pe_offsets: per object, where its positional code is read: the window's
        own position, or (embedded model, beyond its trained range) shifted
        back into it; prompts are shifted by the same amount.
    """

    offsets: list[tuple[int, int]]
    size: tuple[int, int]
    pe_offsets: list[tuple[int, int]]

    def shifts(self) -> np.ndarray:
        """(n, 2) tokens (row, col) to subtract from each object's prompt positions."""
        return np.array(self.offsets, np.float64).reshape(-1, 2) - np.array(self.pe_offsets, np.float64).reshape(-1, 2)

    def part(self, s: slice) -> "Windows":
        return Windows(self.offsets[s], self.size, self.pe_offsets[s])


def trained_tokens(predictor) -> int | None:
    """The embedded model's trained grid (tokens per side), or None (official models: no limit)."""
    if not predictor.native:
        return None
    from .embedded import PE_REFERENCE

    return PE_REFERENCE // predictor.sam.image_encoder.stride


def needs_windows(predictor) -> bool:
    """True when the slice's grid is larger than the positions the model was trained on."""
    ref = trained_tokens(predictor)
    return ref is not None and max(predictor.embedding.features.shape[-2:]) > ref


def token_windows(predictor, boxes, size: tuple[int, int] | None = None) -> Windows:
    """Slice-pixel boxes (row0, col0, row1, col1), one per object -> their windows.

    Without ``size`` every object gets the same window size, the largest
    needed (its box plus ``CONTEXT_TOKENS``), so they still share one decoder
    call; with ``size`` (tokens) that size, centred on each box. Never larger
    than the grid, nor than the embedded model's trained grid.
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
    if size is None:
        size = (max(b - a for a, b, _, _ in spans), max(b - a for _, _, a, b in spans))
    ref = trained_tokens(predictor)
    gh, gw = min(size[0], gh_all, ref or gh_all), min(size[1], gw_all, ref or gw_all)
    offs, pe_offs = [], []
    for ty0, ty1, tx0, tx1 in spans:
        oy = int(np.clip((ty0 + ty1 - gh) // 2, 0, gh_all - gh))
        ox = int(np.clip((tx0 + tx1 - gw) // 2, 0, gw_all - gw))
        offs.append((oy, ox))
        # official models: the window's own position; the embedded model: moved into its trained range
        pe_offs.append((oy, ox) if ref is None else (min(oy, ref - gh), min(ox, ref - gw)))
    return Windows(offs, (gh, gw), pe_offs)


def prompt_box(o, predictor) -> tuple[float, float, float, float]:
    """The slice-pixel extent (row0, col0, row1, col1) of one object's prompts:
    its points and box, or, for a mask alone, the mask's positive pixels."""
    parts = []
    if len(o.points):
        parts.append(np.asarray(o.points, np.float64))
    if o.box is not None:
        b = np.asarray(o.box, np.float64)
        parts.append(b.reshape(2, 2))
    if not parts and o.mask is not None:
        m = np.asarray(o.mask)
        pos = np.argwhere(m > 0 if m.dtype != bool else m).astype(np.float64)
        if len(pos):
            emb = predictor.embedding
            if m.shape != tuple(emb.original_size):  # low-res logits: grid cell -> slice pixels
                f = np.array(emb.padded_size, float) / np.array(m.shape, float)
                f = f * np.array(emb.original_size, float) / np.array(emb.input_size, float)
                pos = (pos + 0.5) * f
            parts.append(pos)
    if not parts:
        return (0.0, 0.0, 0.0, 0.0)
    p = np.concatenate(parts)
    return (p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max())


def decode_in_windows(md, features, image_pe, sparse, dense, win: Windows, multimask: bool):
    """SAM's mask decoder ``md`` with object j seeing only its window.

    features, image_pe: (1, C, GH, GW); sparse: (n, T, C), computed from the
    prompts shifted by ``win.shifts()``; dense: (n, C, gh, gw), each object's on its window.
    Returns (low-res logits (n, c, 4 GH, 4 GW) torch, iou (n, c) torch), like
    ``MaskDecoder.forward``; logits outside the window are ``OUTSIDE``.
    """
    import torch

    from .fast_decoder import decode

    gh, gw = win.size

    def gather(t, offsets):
        return torch.stack([t[0, :, y : y + gh, x : x + gw] for y, x in offsets])

    masks, iou = decode(md, gather(features, win.offsets), gather(image_pe, win.pe_offsets), sparse,
                        dense, multimask)
    n, k, h, w = masks.shape
    fy, fx = h // gh, w // gw
    full = masks.new_full((n, k, features.shape[-2] * fy, features.shape[-1] * fx), OUTSIDE)
    for j, (y, x) in enumerate(win.offsets):
        full[j, :, y * fy : (y + gh) * fy, x * fx : (x + gw) * fx] = masks[j]
    return full, iou

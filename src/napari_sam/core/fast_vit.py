"""A faster forward pass for segment-anything's ViT image encoder, same weights.

:func:`encode` runs an official ``ImageEncoderViT`` (ViT-B/L/H, micro-sam, any
SAM-format ViT) with its own parameters, untouched: nothing is copied,
converted or re-registered, so official state dicts load as they are and the
module stays usable by segment-anything's ``SamPredictor``. The embeddings
equal the official forward's up to float rounding (~1e-6 relative). What
differs is how the arithmetic is scheduled:

* attention goes through ``F.scaled_dot_product_attention`` (a fused, blocked
  kernel) with SAM's decomposed relative-position bias as the additive mask,
  instead of materialising the attention matrix, adding the bias, then
  soft-maxing in separate passes over memory;
* global blocks build that bias one band of query rows at a time into one
  reused buffer, so it stays in cache (ViT-B: 12 MB a band instead of 800 MB
  of fresh memory a block);
* windowed blocks run qkv and the output projection on the real tokens only
  (SAM pads the 64 x 64 grid to 70 x 70 first: 20 % more work). A padded
  token's key and value are exactly the qkv bias (SAM pads with zeros after
  the norm), so they are filled in as such; all windows and heads go through
  one attention call;
* the MLP runs on bands of tokens so its 4x wider hidden layer stays in cache.

Works under CUDA autocast too (the predictor decides the dtype); on the CPU it
is always float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["encode", "is_vit_encoder", "run_encoder"]

# Tuned on a 2-core Xeon (Sapphire Rapids) for ViT-B; see docs/performance.md.
GLOBAL_MASK_BYTES = 16 << 20  # global blocks: relative-position mask per attention call (rows of queries)
MLP_TOKENS = 512  # tokens per MLP band

_window_index: dict[tuple, torch.Tensor] = {}


def is_vit_encoder(encoder) -> bool:
    """True for segment-anything's ``ImageEncoderViT`` (and subclasses)."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    return isinstance(encoder, ImageEncoderViT)


def encode(encoder, x: torch.Tensor) -> torch.Tensor:
    """``encoder(x)`` for a segment-anything ``ImageEncoderViT``, faster.

    x: (B, 3, 1024, 1024) normalised, padded pixels (what ``Sam.preprocess``
    gives). Returns (B, out_chans, 64, 64), like the official forward.
    """
    with torch.inference_mode():
        t = encoder.patch_embed(x)  # (B, H, W, C)
        if encoder.pos_embed is not None:
            t = t + encoder.pos_embed
        for blk in encoder.blocks:
            t = _block(blk, t)
        return encoder.neck(t.permute(0, 3, 1, 2))


def _block(blk, x: torch.Tensor) -> torch.Tensor:
    y = blk.norm1(x)
    if blk.window_size > 0:
        y = _window_attention(blk.attn, y, blk.window_size)
    else:
        y = _global_attention(blk.attn, y)
    x = y.add_(x)  # shortcut + attention (addition commutes exactly)
    return _mlp_residual(blk, x)


def _mlp_residual(blk, x: torch.Tensor) -> torch.Tensor:
    """x + mlp(norm2(x)), in bands of tokens, written into a new tensor."""
    B, H, W, C = x.shape
    flat = x.reshape(B * H * W, C)
    out = torch.empty_like(flat)
    lin1, act, lin2 = blk.mlp.lin1, blk.mlp.act, blk.mlp.lin2
    for s in range(0, flat.shape[0], MLP_TOKENS):
        band = flat[s : s + MLP_TOKENS]
        h = act(lin1(blk.norm2(band)))
        out[s : s + MLP_TOKENS] = lin2(h).add_(band)
    return out.view(B, H, W, C)


def _rel_tables(attn, h: int, w: int):
    from segment_anything.modeling.image_encoder import get_rel_pos

    return get_rel_pos(h, h, attn.rel_pos_h), get_rel_pos(w, w, attn.rel_pos_w)


def _rel(q: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor, rows: int, cols: int):
    """SAM's decomposed relative-position terms (``add_decomposed_rel_pos``), unexpanded.

    q: (N, heads, rows*cols, d) queries (unscaled, as SAM uses them);
    rh: (rows, kh, d), rw: (cols, kw, d). Returns rel_h (N, heads, rows, cols, kh)
    and rel_w (N, heads, rows, cols, kw): the bias of query (r, c) for key
    (i, j) is rel_h[..., r, c, i] + rel_w[..., r, c, j].
    """
    n, nh, _, d = q.shape
    qr = q.reshape(n, nh, rows, cols, d)
    return torch.einsum("bnhwc,hkc->bnhwk", qr, rh), torch.einsum("bnhwc,wkc->bnhwk", qr, rw)


def _global_attention(attn, y: torch.Tensor) -> torch.Tensor:
    B, H, W, C = y.shape
    nh = attn.num_heads
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias).view(B, H * W, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1].contiguous(), qkv[2].contiguous()
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        rel_h, rel_w = _rel(q, *_rel_tables(attn, H, W), H, W)
        rel_h, rel_w = rel_h.to(q.dtype).unsqueeze(-1), rel_w.to(q.dtype).unsqueeze(-2)
        out = torch.empty(B, nh, H * W, C // nh, dtype=v.dtype, device=v.device)
        rows = max(1, min(H, GLOBAL_MASK_BYTES // (nh * W * H * W * q.element_size())))
        mask = torch.empty(B, nh, rows, W, H, W, dtype=q.dtype, device=q.device)  # reused: stays in cache
        for r0 in range(0, H, rows):
            r1 = min(r0 + rows, H)
            m = mask[:, :, : r1 - r0]
            torch.add(rel_h[:, :, r0:r1], rel_w[:, :, r0:r1], out=m)
            out[:, :, r0 * W : r1 * W] = F.scaled_dot_product_attention(
                q[:, :, r0 * W : r1 * W], k, v, attn_mask=m.view(B, nh, (r1 - r0) * W, H * W))
    return attn.proj(out.transpose(1, 2).reshape(B, H, W, C))


def _windows(H: int, W: int, ws: int, device) -> torch.Tensor:
    """(H*W,) position of each real token (row-major) in SAM's padded, window-major layout."""
    key = (H, W, ws, str(device))
    idx = _window_index.get(key)
    if idx is None:
        nww = -(-W // ws)
        r = torch.arange(H, device=device)[:, None]
        c = torch.arange(W, device=device)[None, :]
        win = (r // ws) * nww + c // ws
        idx = (win * ws * ws + (r % ws) * ws + c % ws).reshape(-1)
        _window_index[key] = idx
    return idx


def _window_attention(attn, y: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = y.shape
    nh = attn.num_heads
    d = C // nh
    nwin = -(-H // ws) * -(-W // ws)
    L = ws * ws
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias).view(B, H * W, 3 * C)
    idx = _windows(H, W, ws, y.device)
    if nwin * L == H * W:
        buf = torch.empty(B, nwin * L, 3 * C, dtype=qkv.dtype, device=qkv.device)
    else:  # padded tokens: zeros through the linear layer = its bias
        fill = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(3 * C)
        buf = fill.to(qkv.dtype).expand(B, nwin * L, 3 * C).clone()
    buf[:, idx] = qkv
    t = buf.view(B * nwin, L, 3, nh, d).permute(2, 0, 3, 1, 4)
    q, k, v = t.unbind(0)  # (B*nwin, nh, L, d)
    mask = None
    if attn.use_rel_pos:
        rel_h, rel_w = _rel(q, *_rel_tables(attn, ws, ws), ws, ws)
        mask = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(B * nwin, nh, L, L).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B*nwin, nh, L, d)
    out = out.transpose(1, 2).reshape(B, nwin * L, C)[:, idx]
    return attn.proj(out.view(B, H, W, C))


def run_encoder(encoder, x: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """``encoder(x)``, through :func:`encode` when it is a SAM ViT and ``fast``."""
    if fast and is_vit_encoder(encoder):
        return encode(encoder, x)
    return encoder(x)

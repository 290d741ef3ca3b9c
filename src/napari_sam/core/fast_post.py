"""Low-res mask logits -> full-size boolean masks, computed only where an object can be.

SAM's postprocessing (``Sam.postprocess_masks``, and the predictor's native
path) is: bilinear resize of the (N, C, 256, 256) logits to the encoder's
canvas, crop to the resized image, bilinear resize to the slice's size, then
``> 0``. For a 100 px nucleus in a 1024 px slice almost all of that work
produces ``False``.

A bilinear output is a convex combination of at most four source values with
non-negative weights, so where every source logit is <= 0 the output is <= 0
(exactly, in floating point too: each product keeps its sign). So only the
rows and columns reached from the bounding box of positive low-res logits can
be True. :func:`masks_from_low_res` computes exactly those, with
PyTorch's own CPU arithmetic reproduced bit for bit (same source indices,
same weights, same fused multiply-adds), and leaves the rest False. The
reproduction is checked against ``F.interpolate`` once per process
(:func:`calibrate`); if it does not match on this platform, or the object
covers most of the slice, or the logits are on a GPU, the plain
``F.interpolate`` path runs instead. Either way the masks are identical to
``postprocess_masks(...) > 0``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["masks_from_low_res", "calibrate", "full_masks"]

# Above this fraction of the slice, the cropped path saves nothing: interpolate everything.
FULL_FRACTION = 0.35
_VARIANTS = [(True, True), (False, True), (True, False), (False, False)]  # (fma index, fma blend)
_calibrated: list = []


@lru_cache(maxsize=64)
def _tables(n_in: int, n_out: int, fma_index: bool):
    """PyTorch's bilinear (align_corners=False) source indices and weights along one axis.

    Returns (i0, i1) int64 and (w0, w1) float32 numpy arrays of length n_out.
    """
    d = np.arange(n_out)
    if n_in == n_out:
        return d, d, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    dst = d.astype(np.float32) + np.float32(0.5)
    if fma_index:  # one rounding: float32 * float32 is exact in float64
        src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = (scale * dst).astype(np.float32) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


def _blend(a, wa, b, wb, fma: bool):
    """a*wa + b*wb as PyTorch's CPU kernel computes it (fused or not)."""
    if fma:
        return (a.double() * wa.double() + (b * wb).double()).float()
    return a * wa + b * wb


def _resample(x, rows, cols, fma: bool):
    """Bilinear values at a block of output rows/cols.

    x: (..., r, c) float32 tensor, the source block; rows/cols: (i0, i1, w0, w1)
    with indices relative to the block. Width first, then height (PyTorch's order).
    """
    import torch

    i0, i1, a0, a1 = (torch.from_numpy(np.ascontiguousarray(t)) for t in rows)
    j0, j1, b0, b1 = (torch.from_numpy(np.ascontiguousarray(t)) for t in cols)
    t = _blend(x.index_select(-1, j0), b0, x.index_select(-1, j1), b1, fma)
    return _blend(t.index_select(-2, i0), a0[:, None], t.index_select(-2, i1), a1[:, None], fma)


def _emulate(x, size, variant):
    h, w = x.shape[-2:]
    fi, fb = variant
    return _resample(x, _tables(h, size[0], fi), _tables(w, size[1], fi), fb)


def calibrate() -> tuple[bool, bool] | None:
    """The arithmetic variant that reproduces ``F.interpolate`` exactly here, or None."""
    if _calibrated:
        return _calibrated[0]
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    probes = [((37, 53), (300, 420)), ((64, 48), (1024, 1024)), ((700, 1000), (683, 467)), ((20, 20), (20, 31))]
    found = None
    for variant in _VARIANTS:
        ok = True
        for src, dst in probes:
            x = torch.randn(1, 2, *src, generator=g) * 10
            ref = F.interpolate(x, dst, mode="bilinear", align_corners=False)
            if not torch.equal(_emulate(x, dst, variant), ref):
                ok = False
                break
        if ok:
            found = variant
            break
    _calibrated.append(found)
    return found


def full_masks(low, canvas, input_size, original_size, threshold: float = 0.0, *, second: bool = True) -> np.ndarray:
    """(N, C, H, W) bool the plain way: interpolate everything, crop, interpolate, threshold."""
    import torch.nn.functional as F

    m = F.interpolate(low, tuple(canvas), mode="bilinear", align_corners=False)
    m = m[..., : input_size[0], : input_size[1]]
    if second:
        m = F.interpolate(m, tuple(original_size), mode="bilinear", align_corners=False)
    return (m > threshold).cpu().numpy()


def _reach(pos_range, tab, limit):
    """Output indices (first, last) whose sources touch pos_range, below ``limit``; None if none."""
    i0, i1 = tab[0][:limit], tab[1][:limit]
    lo, hi = pos_range
    hit = ((i0 >= lo) & (i0 <= hi)) | ((i1 >= lo) & (i1 <= hi))
    where = np.flatnonzero(hit)
    return None if where.size == 0 else (int(where[0]), int(where[-1]))


def _sub(tab, first, last, origin):
    i0, i1, w0, w1 = tab
    return i0[first : last + 1] - origin, i1[first : last + 1] - origin, w0[first : last + 1], w1[first : last + 1]


def _axis_plan(lo_hi, n_low, canvas, crop, final, fi, second):
    """Per axis: stage-1 block, stage-2 block and output range; None if nothing can be True."""
    t1 = _tables(n_low, canvas, fi)
    p = _reach(lo_hi, t1, crop)  # stage-1 outputs (inside the crop) that can be > 0
    if p is None:
        return None
    if not second:
        q, out, t2 = p, p, None
    else:
        t2 = _tables(crop, final, fi)
        out = _reach(p, t2, final)
        if out is None:
            return None
        q = (int(t2[0][out[0]]), int(t2[1][out[1]]))  # stage-1 rows the output block reads
    src = (int(t1[0][q[0]]), int(t1[1][q[1]]))  # low-res rows stage 1 reads
    return t1, t2, src, q, out


def masks_from_low_res(low, canvas, input_size, original_size, threshold: float = 0.0, *,
                       second: bool | None = None) -> np.ndarray:
    """Boolean masks identical to SAM's postprocessing followed by ``> threshold``.

    low: (N, C, h, w) float32 logits. canvas: (Hc, Wc) the encoder's input
    (ViT: (1024, 1024); native encoders: the padded size). input_size: (ih, iw)
    the resized slice inside the canvas. original_size: (H, W) the slice.
    second: run the resize to (H, W); default True for a ViT-style canvas, and
    whenever input_size != original_size. Returns (N, C, H, W) bool numpy.
    """
    if second is None:
        second = tuple(input_size) != tuple(original_size)
    variant = calibrate() if low.device.type == "cpu" and threshold == 0.0 and low.dtype.is_floating_point else None
    H, W = (original_size if second else input_size)
    if variant is None:
        return full_masks(low, canvas, input_size, original_size, threshold, second=second)
    fi, fb = variant
    pos = (low > threshold).cpu().numpy()
    rows_any, cols_any = pos.any(axis=(0, 1, 3)), pos.any(axis=(0, 1, 2))
    n, c, h, w = low.shape
    out = np.zeros((n, c, H, W), bool)
    if not rows_any.any():
        return out
    rr = np.flatnonzero(rows_any)
    cc = np.flatnonzero(cols_any)
    pr = _axis_plan((rr[0], rr[-1]), h, canvas[0], input_size[0], original_size[0], fi, second)
    pc = _axis_plan((cc[0], cc[-1]), w, canvas[1], input_size[1], original_size[1], fi, second)
    if pr is None or pc is None:
        return out
    (t1r, t2r, sr, qr, orr), (t1c, t2c, sc, qc, oc) = pr, pc
    area = (orr[1] - orr[0] + 1) * (oc[1] - oc[0] + 1)
    if area > FULL_FRACTION * H * W:
        return full_masks(low, canvas, input_size, original_size, threshold, second=second)
    block = low[..., sr[0] : sr[1] + 1, sc[0] : sc[1] + 1].float()
    s1 = _resample(block, _sub(t1r, qr[0], qr[1], sr[0]), _sub(t1c, qc[0], qc[1], sc[0]), fb)
    if second:
        s1 = _resample(s1, _sub(t2r, orr[0], orr[1], qr[0]), _sub(t2c, oc[0], oc[1], qc[0]), fb)
    out[..., orr[0] : orr[1] + 1, oc[0] : oc[1] + 1] = (s1 > threshold).numpy()
    return out

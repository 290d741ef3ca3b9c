"""One documented way to turn a microscopy slice into SAM's input.

SAM expects an (H, W, 3) uint8-range RGB image. Microscopy slices come as
uint8, uint16, float (with NaN or inf), bool; grayscale, RGB or many channels.

``to_sam_rgb(slice2d, channel_axis=None, channel=None, normalize="percentile")``:

1. channels: a 2D slice is grayscale. With ``channel_axis`` given, either one
   ``channel`` is taken, or (``channel=None``) an RGB last axis of size 3 is
   used as colour and any other count is averaged into a composite after each
   channel is normalised on its own.
2. non-finite values: NaN becomes the low percentile, +inf/-inf clip to the
   high/low percentile (computed on finite values only).
3. intensities, ``normalize``:
   - ``"percentile"`` (default): robust (1st, 99.8th) percentiles -> [0, 255],
     clipped. Hot pixels and an empty background do not set the contrast.
   - ``"minmax"``: min/max of the finite values -> [0, 255].
   - ``"none"``: values are used as they are (they must already be 0..255,
     e.g. an 8-bit RGB photograph); this is what official SAM does.
   bool is 0/255 whatever ``normalize`` says.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (1.0, 99.8)


def _stretch(a: np.ndarray, normalize: str) -> np.ndarray:
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.float32)
    vals = a[finite] if not finite.all() else a
    if normalize == "percentile":
        # subsample big slices: the percentiles barely move, the time does
        flat = vals.ravel()
        if flat.size > 1_000_000:
            flat = flat[:: flat.size // 1_000_000]
        lo, hi = np.percentile(flat, PERCENTILES)
    elif normalize == "minmax":
        lo, hi = float(vals.min()), float(vals.max())
    else:
        raise ValueError(f"normalize must be 'percentile', 'minmax' or 'none', not {normalize!r}")
    if hi <= lo:
        hi = lo + 1.0
    out = np.where(finite, a, lo) if not finite.all() else a
    out = np.where(np.isposinf(a), hi, out)
    return np.clip((out - lo) * (255.0 / (hi - lo)), 0.0, 255.0).astype(np.float32)


def to_sam_rgb(
    slice2d: np.ndarray,
    *,
    channel_axis: int | None = None,
    channel: int | None = None,
    normalize: str = "percentile",
) -> np.ndarray:
    """Slice -> (H, W, 3) float32 in [0, 255], SAM's input convention.

    slice2d: (H, W) grayscale, or (H, W, C)/(C, H, W) with ``channel_axis``.
    """
    a = np.asarray(slice2d)
    if np.iscomplexobj(a):  # numpy would drop the imaginary part with only a warning
        raise ValueError("the image is complex-valued: give its magnitude (np.abs) or its real part (.real)")
    if channel is not None and channel_axis is None:
        raise ValueError(f"channel={channel} needs channel_axis, the axis the channels are on (e.g. -1 for "
                         "(H, W, C), 0 for (C, H, W))")
    if channel_axis is not None:
        a = np.moveaxis(a, channel_axis, -1)
        if channel is not None:
            if not -a.shape[-1] <= channel < a.shape[-1]:
                raise ValueError(f"channel {channel} does not exist: the image has {a.shape[-1]} channels")
            a = a[..., channel]
    if a.ndim not in (2, 3):
        raise ValueError(
            f"expected one 2D slice (H, W) or (H, W, C), got an array of shape {a.shape}; "
            "pick a slice of a stack first, or pass channel_axis for a channel axis"
        )
    if a.dtype == bool:
        g = a.astype(np.float32) * 255.0
        return np.repeat(g[..., None], 3, -1) if g.ndim == 2 else _to3(g)
    if normalize == "none":
        f = a.astype(np.float32)
        f = np.nan_to_num(f, nan=0.0, posinf=255.0, neginf=0.0)
        if f.size and (f.min() < 0 or f.max() > 255):
            raise ValueError(
                f"normalize='none' needs values in 0..255, got {f.min():g}..{f.max():g}; "
                "use normalize='percentile' for microscopy data"
            )
        return np.repeat(f[..., None], 3, -1) if f.ndim == 2 else _to3(f)
    if a.ndim == 2:
        g = _stretch(a, normalize)
        return np.repeat(g[..., None], 3, -1)
    if a.shape[-1] == 3 and channel_axis is not None and a.dtype == np.uint8:
        # 8-bit colour: one stretch for all channels keeps the hues
        return _stretch(a, normalize)
    chans = [_stretch(a[..., i], normalize) for i in range(a.shape[-1])]
    if len(chans) == 3:
        return np.stack(chans, -1)
    g = np.mean(chans, axis=0)
    return np.repeat(g[..., None], 3, -1)


def _to3(f: np.ndarray) -> np.ndarray:
    if f.shape[-1] == 3:
        return f
    g = f.mean(-1)
    return np.repeat(g[..., None], 3, -1)

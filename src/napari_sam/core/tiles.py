"""The embedded model's encoder on slices larger than one encoder pass, in overlapping tiles.

The embedded encoder is convolutional with one global attention block, which
grows with the square of the pixels, so one pass takes at most ``max_size``
(1024) px a side. A larger magnified slice (a 1024 px camera image at 2x is
2048 px) used to be scaled down to 1024 px, i.e. not magnified at all, and
nuclei lost 0.03-0.05 median IoU (docs/embedded-model.md). Instead, the
magnified slice is encoded in tiles of at most ``max_size`` px overlapping by at least
``OVERLAP`` px, and each tile contributes the features of its own part, cut
in the middle of each overlap. Every object is decoded on a window of at
most 256 px of slice (``decode_window``), well inside one tile's context.
Slices are still scaled down beyond ``MAX_TILED`` ** 2 px (magnified; a square of MAX_TILED a side).
"""

from __future__ import annotations

OVERLAP = 128  # px of the magnified slice shared by neighbouring tiles (a multiple of 16)
MAX_TILED = 4096  # magnified slices of more than MAX_TILED**2 px are scaled down to that many


def spans(length: int, tile: int, overlap: int = OVERLAP, multiple: int = 16) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``length`` px (a multiple of ``multiple``): (start, stop, keep_from, keep_to).

    As few tiles as cover the axis with at most ``tile`` px each and at least ``overlap`` px shared by
    neighbours, all of one size (as small as that allows: the encoder's cost follows the pixels), on
    multiples of ``multiple``; the kept parts partition [0, length), cut in the middle of each overlap."""
    if length <= tile:
        return [(0, length, 0, length)]
    n = -(-(length - overlap) // (tile - overlap))
    size = min(-(-(length + (n - 1) * overlap) // n // multiple) * multiple + multiple, tile)
    starts = [round(i * (length - size) / (n - 1) / multiple) * multiple for i in range(n)]
    cuts = [0] + [((starts[i] + size + starts[i + 1]) // 2) // multiple * multiple for i in range(n - 1)] + [length]
    return [(s, s + size, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def encode_tiled(encoder, x, run):
    """Features of padded, normalised pixels ``x`` (1, 3, H, W), one ``run(encoder, tile)`` per tile."""
    import torch

    stride = int(encoder.stride)
    h, w = x.shape[-2:]
    out = None
    for r0, r1, rk0, rk1 in spans(h, int(encoder.max_size)):
        for c0, c1, ck0, ck1 in spans(w, int(encoder.max_size)):
            f = run(encoder, x[..., r0:r1, c0:c1])
            if out is None:
                out = torch.empty((f.shape[0], f.shape[1], h // stride, w // stride), dtype=f.dtype, device=f.device)
            out[..., rk0 // stride : rk1 // stride, ck0 // stride : ck1 // stride] = f[
                ..., (rk0 - r0) // stride : (rk1 - r0) // stride, (ck0 - c0) // stride : (ck1 - c0) // stride
            ]
    return out

"""Embed a stack ahead of the user: the current slice first, then outward.

:func:`precompute` is a generator (STYLE: long work yields progress). The
widget runs it in ``napari.qt.threading.thread_worker``, shows the progress,
and calls ``worker.send(z)`` when the user moves to slice ``z`` so the work
re-centres there; the CLI (``napari-sam embed``) drains it with a progress
bar; tests drain it synchronously.

Order: ``start, start+1, start-1, start+2, ...`` within the z range. A slice
already in memory or on disk costs no encoder time. Without a disk cache, the
run stops once the memory budget is full (going on would evict the slices
nearest the user to make room for far ones).

On CUDA, several slices go through the encoder per call (``batch``), and the
slices are copied to the GPU from pinned memory; on the CPU one slice at a
time in float32 (half precision on the CPU is slow and inexact).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from .cache import EmbeddingCache, cache_key, slice_signature

__all__ = ["PrecomputeProgress", "outward_order", "precompute", "batch_size_for", "disk_cache_for"]


@dataclass
class PrecomputeProgress:
    """One slice handled.

    done/total: slices handled / to handle. index: the slice (int for a
    z-stack, tuple with more leading axes). source: "memory", "disk" or
    "encoder". seconds: time spent on it (batch time shared out on a GPU).
    stopped: a reason if the run ends early (memory budget full), else "".
    """

    done: int
    total: int
    index: int | tuple
    source: str
    seconds: float
    stopped: str = ""


def outward_order(start: int, lo: int, hi: int) -> list[int]:
    """``start, start+1, start-1, start+2, ...`` clipped to ``lo <= z < hi``."""
    start = min(max(int(start), lo), hi - 1)
    out = [start]
    for d in range(1, hi - lo):
        for z in (start + d, start - d):
            if lo <= z < hi:
                out.append(z)
    return out


def batch_size_for(device, arch: str = "vit_b", free_bytes: int | None = None) -> int:
    """Slices per encoder call: 1 off CUDA; on CUDA as many as fit (up to 8).

    A ViT-B slice needs about 1.5 GB of activations in half precision (ViT-L
    2.5, ViT-H 3.5); ``free_bytes`` defaults to the GPU's free memory.
    """
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return 1
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(dev)
    need = {"vit_l": 2.5e9, "vit_h": 3.5e9}.get(arch, 1.5e9)
    return int(max(1, min(8, free_bytes * 0.7 // need)))


def precompute(predictor, stack, *, start=0, z_range: tuple[int, int] | None = None,
               cache: EmbeddingCache | None = None, disk=None, channel_axis=None, channel=None,
               batch: int | None = None) -> Generator[PrecomputeProgress, int | None, int]:
    """Embed the slices of ``stack`` (axis 0), nearest to ``start`` first.

    stack: (z, y, x[, c]) numpy, dask, zarr or memory-mapped array; only the
    slices being embedded are read. cache: the in-memory cache to fill.
    disk: a ``DiskCache`` to fill (resumable). Send an int (``gen.send(z)``)
    to re-centre on slice z. Returns the number of slices run through the encoder.
    """
    lo, hi = z_range if z_range is not None else (0, int(stack.shape[0]))
    if not 0 <= lo < hi <= stack.shape[0]:
        raise ValueError(f"z range {lo}:{hi} is not within the stack's slices 0..{stack.shape[0]}")
    if cache is None and disk is None:
        raise ValueError("precompute needs somewhere to keep the embeddings: a memory cache, a disk cache or both")
    device = predictor.model.device
    n_batch = batch or batch_size_for(device, getattr(predictor.model, "arch", "vit_b"))
    pending = outward_order(start, lo, hi)
    total, done, encoded, slice_bytes = len(pending), 0, 0, 0
    key = (lambda sig: cache_key(predictor, sig, channel_axis, channel)) if cache is not None else (lambda sig: None)
    while pending:
        t0 = time.perf_counter()
        z = pending.pop(0)
        a = np.asarray(stack[z])
        sig = slice_signature(a)
        results = []  # (z, signature, embedding or None, source)
        if cache is not None and key(sig) in cache:
            results.append((z, sig, None, "memory"))
        elif disk is not None and (emb := disk.get(z, sig, device)) is not None:
            results.append((z, sig, emb, "disk"))
        elif disk is None and slice_bytes and cache.nbytes + slice_bytes > cache.max_bytes:
            yield PrecomputeProgress(done, total, z, "memory", 0.0, FULL)
            return encoded
        else:
            group = [(z, a, sig)]
            while len(group) < n_batch and pending:  # GPU: fill the batch with the next slices
                z2 = pending.pop(0)
                a2 = np.asarray(stack[z2])
                group.append((z2, a2, slice_signature(a2)))
            embs = embed_batch(predictor, [g[1] for g in group], channel_axis=channel_axis, channel=channel)
            encoded += len(group)
            results += [(zi, si, e, "encoder") for (zi, _, si), e in zip(group, embs)]
        dt = (time.perf_counter() - t0) / len(results)
        for zi, si, emb, source in results:
            if emb is not None:
                if source == "encoder" and disk is not None:
                    disk.put(zi, si, emb)
                if cache is not None:
                    slice_bytes = cache.put(key(si), emb)
            done += 1
            new = yield PrecomputeProgress(done, total, zi, source, dt)
            if new is not None:
                pending = _recentre(pending, int(new))
    return encoded


def disk_cache_for(path, predictor, stack, *, start=0, channel_axis=None, channel=None, overwrite=False):
    """The stack's ``DiskCache`` at ``path``: resumed if it matches, else started.

    Resuming checks the model, settings and image (raising ``CacheMismatch``
    with the reason). Starting (also in an empty folder, or over a cache whose
    creation was cut short) embeds slice ``start`` to learn the embedding's
    shape and stores it. Anything else at ``path`` (an image's zarr store, a
    folder of files) raises ``FileExistsError``, even with ``overwrite``.
    Returns (cache, slices encoded here: 0 or 1).
    """
    from pathlib import Path

    from .cache_folder import NOT_OURS, store_kind
    from .disk_cache import DiskCache, Geometry, settings_for

    settings = settings_for(predictor, stack.shape, stack.dtype, channel_axis=channel_axis, channel=channel)
    kind = store_kind(path)
    if kind in ("zarr", "other"):  # never replaced (an image, a folder of data): said before any encoder work
        raise FileExistsError(NOT_OURS[kind].format(p=Path(path)))
    if kind == "cache" and not overwrite:
        disk = DiskCache.open(path, settings)
        disk.check_image(stack, slice_signature)
        return disk, 0
    first = np.asarray(stack[start])
    emb = predictor.embed(first, channel_axis=channel_axis, channel=channel)
    disk = DiskCache.create(path, settings, Geometry.of(emb), overwrite=overwrite)
    disk.put(start, slice_signature(first), emb)
    return disk, 1


FULL = "memory budget full: give a disk cache or a larger budget to embed more slices"


def _recentre(pending: list, z: int) -> list:
    return sorted(pending, key=lambda p: (abs(p - z), p < z))


def embed_batch(predictor, slices: Sequence[np.ndarray], *, channel_axis=None, channel=None) -> list:
    """Embeddings of several slices (one shape), in one encoder call on CUDA.

    Off CUDA, or for a single slice, this is ``predictor.embed`` per slice.
    """
    dev = predictor.model.device
    if dev.type != "cuda" or len(slices) == 1 or predictor.native or getattr(predictor, "sam2", None) is not None:
        return [predictor.embed(s, channel_axis=channel_axis, channel=channel) for s in slices]
    return _embed_batch_cuda(predictor, slices, channel_axis, channel)


def _embed_batch_cuda(predictor, slices, channel_axis, channel) -> list:  # pragma: no cover - needs a GPU
    import torch

    from .fast_vit import run_encoder
    from .embedding import Embedding

    prepared = [predictor.prepare(s, channel_axis, channel) for s in slices]
    shapes = {p[0].shape for p in prepared}
    if len(shapes) != 1:
        return [predictor.embed(s, channel_axis=channel_axis, channel=channel) for s in slices]
    dev, sam = predictor.model.device, predictor.sam
    host = torch.from_numpy(np.stack([p[0] for p in prepared])).pin_memory()
    x = host.to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
    x = (x - sam.pixel_mean) / sam.pixel_std
    h, w = x.shape[-2:]
    hp = wp = sam.image_encoder.img_size
    x = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h))
    with torch.inference_mode(), predictor.autocast():
        feats = run_encoder(sam.image_encoder, x, fast=getattr(predictor, "fast", True)).float()
    return [Embedding(feats[i : i + 1], tuple(p[1]), (int(h), int(w)), (int(hp), int(wp)), p[2]) for i, p in enumerate(prepared)]

"""In-memory LRU cache of slice embeddings, with a byte budget.

Key: (slice signature, model checksum, normalisation). The signature is a hash
of the slice's bytes, shape and dtype, so an edited or different image never
reuses a stale embedding, while the same slice reached through another array
object (a dask/zarr view, a copy) does. Embeddings are stored as fp16 on the
CPU (ViT-B: 64*64*256*2 = 2 MiB a slice) and returned as fp32 on the model's
device.

Behind it, optionally, a :class:`~napari_sam.core.disk_cache.DiskCache` (one
stack's embeddings in a zarr store): ``embed_cached(..., disk=store,
index=z)`` looks in memory, then on disk, and only then runs the encoder,
filling both.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .embedding import Embedding


def slice_signature(slice2d: np.ndarray) -> str:
    """A content hash of one slice: xxh3-128 of its bytes (in this machine's byte order: a big-endian
    TIFF read memory-mapped or into memory is the same slice), with shape and dtype."""
    import xxhash

    a = np.ascontiguousarray(slice2d)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    h = xxhash.xxh3_128()
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


class EmbeddingCache:
    """Thread-safe LRU of :class:`Embedding` under ``max_bytes``.

    half: store feature maps as fp16 (half the memory; decoding on them differs from decoding on the
    encoder's own output by float rounding). ``half=False`` keeps them as the encoder gave them, so a
    cached slice decodes exactly as a freshly encoded one (the API's ``segment``).
    """

    def __init__(self, max_bytes: int = 1 << 30, half: bool = True):
        self.max_bytes = int(max_bytes)
        self.half = bool(half)
        self._d: OrderedDict[tuple, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(signature: str, model_checksum: str, normalize: str) -> tuple:
        return (signature, model_checksum, normalize)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key) -> bool:
        return key in self._d

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key, device=None) -> Embedding | None:
        with self._lock:
            e = self._d.get(key)
            if e is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
        return e.with_tensors(lambda t: t.float() if device is None else t.float().to(device))

    def put(self, key, emb: Embedding) -> int:
        """Store ``emb`` (its feature maps on the CPU, as fp16 unless ``half`` is off); returns the bytes it takes."""
        stored = emb.with_tensors(lambda t: t.detach().to("cpu").half() if self.half else t.detach().to("cpu"))
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._d[key] = stored
            self._bytes += stored.nbytes
            while self._bytes > self.max_bytes and len(self._d) > 1:
                _, ev = self._d.popitem(last=False)
                self._bytes -= ev.nbytes
        return stored.nbytes

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0


def cache_key(predictor, signature: str, channel_axis=None, channel=None) -> tuple:
    """The memory-cache key of a slice with ``signature`` embedded by ``predictor`` with these channel settings
    (the model by its checksum, and the device and dtype it computes on: one checkpoint loaded twice, on a
    GPU in fp16 and on the CPU, gives two embeddings; so does an int8 encoder, ``core.int8``)."""
    m = predictor.model
    precision = getattr(m, "precision", m.dtype)
    return EmbeddingCache.key(f"{signature}|{channel_axis}|{channel}|x{predictor.input_scale:g}|{m.device}|{precision}",
                              m.checksum, predictor.normalize)


def embed_cached(predictor, cache: EmbeddingCache | None, slice2d, *, channel_axis=None, channel=None,
                 disk=None, index=None) -> Embedding:
    """The slice's embedding from ``cache`` (then ``disk``), or computed by ``predictor`` and stored.

    disk: a ``DiskCache`` for the stack this slice belongs to, with ``index``
    the slice's position in it (an int, or a tuple over the stack's leading axes).
    Does not change ``predictor``'s current image (safe to call from a worker
    thread while the GUI thread decodes on another embedding).
    """
    a = np.asarray(slice2d)
    if cache is None and disk is None:
        return predictor.embed(a, channel_axis=channel_axis, channel=channel)
    sig = slice_signature(a)
    key = cache_key(predictor, sig, channel_axis, channel) if cache is not None else None
    emb = cache.get(key, predictor.model.device) if cache is not None else None
    if emb is not None:
        return emb
    if disk is not None:
        if index is None:
            raise ValueError("embed_cached: a disk cache needs the slice's index")
        emb = disk.get(index, sig, predictor.model.device)
    if emb is None:
        emb = predictor.embed(a, channel_axis=channel_axis, channel=channel)
        if disk is not None:  # best effort: a cache that cannot be written (read-only, disk full) is only read
            disk.try_put(index, sig, emb)
    if cache is not None:
        cache.put(key, emb)
    return emb


def stack_embedder(predictor, stack, cache, channel_axis, disk):
    """z -> the slice's intensities (y, x) for the stop rule, with ``predictor`` set on its embedding."""
    cache = cache if cache is not None else EmbeddingCache(max_bytes=1 << 62)

    def embed(z: int) -> np.ndarray:
        image2d = np.asarray(stack[z])
        predictor.set_embedding(embed_cached(predictor, cache, image2d, channel_axis=channel_axis, disk=disk, index=z))
        return image2d if channel_axis is None else image2d.mean(axis=channel_axis)

    return embed

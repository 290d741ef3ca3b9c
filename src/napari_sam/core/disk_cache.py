"""Slice embeddings of one stack on disk, in a zarr store.

Fill it once (``napari-sam embed STACK.tif --out CACHE.zarr``, or the
widget's "precompute whole stack", perhaps on a GPU machine), then open it
wherever the stack is segmented: a slice found there costs no encoder time.

Layout of ``CACHE.zarr`` (a zarr group)::

    attrs["napari_sam_embeddings"]  format, settings, geometry (see below)
    features   (*lead, C, h, w) float16   one chunk per slice
    high_res_i (*lead, C_i, h_i, w_i) float16   SAM 2 only: its finer feature maps
    gray       (*lead, H, W)    uint8     the normalised slice (for boundary refinement)
    signature  (*lead, 16)      uint8     xxh3-128 of the slice's bytes; all zero = not done

``lead`` is the stack's shape before the slice axes ((z,) for a z-stack).
A slice counts as done once its signature is written, which happens after its
features: a run cut short is resumed where it stopped. A store made for
another model, normalisation, channel choice or stack shape is refused with a
:class:`CacheMismatch` naming the difference; a slice whose bytes no longer
match its signature (the image was edited) is a miss and is recomputed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache_folder import ATTR, NOT_OURS, store_kind
from .lazy import image_stem

FORMAT = "napari-sam-embeddings/1"


class CacheMismatch(ValueError):
    """An embedding store does not belong to this image, model or settings; the message says how."""


@dataclass(frozen=True)
class Geometry:
    """Shapes every slice of the stack shares (see ``core.embedding.Embedding``)."""

    feature_shape: tuple[int, int, int]  # (C, h, w)
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    high_res_shapes: tuple = ()  # SAM 2: (C, h, w) of each finer feature map

    @classmethod
    def of(cls, emb) -> Geometry:
        return cls(tuple(int(s) for s in emb.features.shape[1:]), tuple(emb.original_size),
                   tuple(emb.input_size), tuple(emb.padded_size),
                   tuple(tuple(int(s) for s in t.shape[1:]) for t in emb.high_res))

    def as_json(self) -> dict:
        return {k: list(v) for k, v in self.__dict__.items()}


def settings_for(predictor, stack_shape, stack_dtype, *, channel_axis=None, channel=None) -> dict:
    """What must agree for two runs to share embeddings (JSON-able)."""
    m = predictor.model
    return {
        "model_sha256": m.checksum,
        "model_name": m.name,
        "normalize": predictor.normalize,
        "input_scale": predictor.input_scale,
        "channel_axis": channel_axis,
        "channel": channel,
        "stack_shape": [int(s) for s in stack_shape],
        "stack_dtype": native_dtype(stack_dtype).str,
    }


def native_dtype(dtype) -> np.dtype:
    """``dtype`` in this machine's byte order: a big-endian TIFF (ImageJ's default) read memory-mapped
    and the same file read into memory are the same image."""
    return np.dtype(dtype).newbyteorder("=")


_WHAT = {
    "model_sha256": "model (checkpoint sha256)",
    "model_name": "model name",
    "normalize": "intensity normalisation",
    "input_scale": "input magnification (input_scale)",
    "channel_axis": "channel axis",
    "channel": "channel",
    "stack_shape": "image shape",
    "stack_dtype": "image dtype",
}


def _create(group, name, shape, chunks, dtype):
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return group.zeros(name, shape=shape, chunks=chunks, dtype=dtype)  # zarr 2


class DiskCache:
    """One stack's slice embeddings in a zarr group (see the module docstring)."""

    def __init__(self, group, path: Path, settings: dict, geometry: Geometry, lead: tuple[int, ...]):
        self._g = group
        self.path = path
        self.settings = settings
        self.geometry = geometry
        self.lead = lead
        self._features = group["features"]
        self._high_res = [group[f"high_res_{i}"] for i in range(len(geometry.high_res_shapes))]
        self._gray = group["gray"]
        self._sig = group["signature"]
        self.write_error = ""  # why slices could not be added (see try_put)

    # ---------------------------------------------------------------- open --
    @classmethod
    def open(cls, path, settings: dict | None = None, *, readonly: bool = False) -> DiskCache:
        """An existing store; with ``settings``, refused unless they agree."""
        import zarr

        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"embedding cache not found: {p}")
        try:
            g = zarr.open_group(str(p), mode="r" if readonly else "r+")
            meta = dict(g.attrs[ATTR])
        except Exception:
            raise CacheMismatch(f"{p} is not a napari-sam embedding cache (no '{ATTR}' record in a zarr group)") from None
        if meta.get("format") != FORMAT:
            raise CacheMismatch(f"{p} is an embedding cache in format {meta.get('format')!r}; this napari-sam reads {FORMAT}")
        geo = Geometry(**{k: _tuples(v) for k, v in meta["geometry"].items()})
        cache = cls(g, p, meta["settings"], geo, tuple(meta["lead"]))
        if settings is not None:
            cache.check(settings)
        return cache

    @classmethod
    def create(cls, path, settings: dict, geometry: Geometry, *, overwrite: bool = False) -> DiskCache:
        """A new, empty store for a stack whose slices all have ``geometry``."""
        import zarr

        p = Path(path)
        kind = store_kind(p)
        if kind in ("zarr", "other"):
            raise FileExistsError(NOT_OURS[kind].format(p=p))
        if kind == "cache" and not overwrite:
            raise FileExistsError(f"{p} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        lead = tuple(int(s) for s in settings["stack_shape"][: _lead_ndim(settings)])
        g = zarr.open_group(str(p), mode="w")
        C, h, w = geometry.feature_shape
        H, W = geometry.original_size
        one = (1,) * len(lead)
        _create(g, "features", (*lead, C, h, w), (*one, C, h, w), "float16")
        for i, shape in enumerate(geometry.high_res_shapes):
            _create(g, f"high_res_{i}", (*lead, *shape), (*one, *shape), "float16")
        _create(g, "gray", (*lead, H, W), (*one, H, W), "uint8")
        _create(g, "signature", (*lead, 16), (*one, 16), "uint8")
        g.attrs[ATTR] = {"format": FORMAT, "settings": settings, "geometry": geometry.as_json(), "lead": list(lead)}
        return cls(g, p, settings, geometry, lead)

    @classmethod
    def open_or_create(cls, path, settings: dict, geometry: Geometry) -> DiskCache:
        """Resume a store made with the same settings, or start one."""
        if Path(path).exists():
            cache = cls.open(path, settings)
            if cache.geometry != geometry:
                raise CacheMismatch(
                    f"{path} holds embeddings of shape {cache.geometry.feature_shape} for slices of "
                    f"{cache.geometry.original_size}; this run makes {geometry.feature_shape} for "
                    f"{geometry.original_size}. Use another file, or overwrite it."
                )
            return cache
        return cls.create(path, settings, geometry)

    def check(self, settings: dict) -> None:
        """Raise :class:`CacheMismatch` naming every setting that differs (the model by its checksum: the
        same checkpoint by name or by path is the same model)."""
        diffs = [
            f"{_WHAT.get(k, k)}: cache has {self.settings.get(k)!r}, this run uses {v!r}"
            for k, v in settings.items()
            if k != "model_name" and _norm(self.settings.get(k), k) != _norm(v, k)
        ]
        if diffs:
            raise CacheMismatch(
                f"{self.path} was made for another image, model or settings ({'; '.join(diffs)}). "
                "Use another cache file, or overwrite this one."
            )

    def serves(self, predictor) -> bool:
        """Whether the stored embeddings are what ``predictor`` computes: same model (checksum), intensity
        normalisation and magnification."""
        s = self.settings
        return (s.get("model_sha256") == predictor.model.checksum and s.get("normalize") == predictor.normalize
                and _norm(s.get("input_scale")) == _norm(predictor.input_scale))

    def fits(self, stack) -> bool:
        """Whether ``stack`` has the shape and dtype the cache was made for (its slices' bytes are
        checked one by one as they are read)."""
        s = self.settings
        return (_norm(s.get("stack_shape")) == [int(n) for n in stack.shape]
                and _norm(s.get("stack_dtype"), "stack_dtype") == native_dtype(stack.dtype).str)

    def check_image(self, stack, signature_of) -> None:
        """Refuse a stack whose finished slices (the first, middle and last of them: a blank first slice is
        common to many stacks) differ from what the cache was made from."""
        done = self.done()
        for index in dict.fromkeys((done[0], done[len(done) // 2], done[-1])) if done else ():
            if not self._matches(index, signature_of(np.asarray(stack[index]))):
                raise CacheMismatch(
                    f"{self.path} was made from a different image: slice {_fmt(index)} differs. "
                    "Use another cache file, or overwrite this one."
                )

    # ------------------------------------------------------------ slices --
    def done(self) -> list[tuple[int, ...]]:
        """Indices (tuples over the lead axes) of the slices already stored."""
        sig = np.asarray(self._sig[...]).reshape(-1, 16)
        flat = np.flatnonzero(sig.any(axis=1))
        return [tuple(int(i) for i in np.unravel_index(f, self.lead)) for f in flat]

    def _matches(self, index, signature: str) -> bool:
        return bytes(np.asarray(self._sig[index])) == bytes.fromhex(signature)

    def get(self, index, signature: str, device=None):
        """The slice's ``Embedding`` (features fp32 on ``device``) if stored for these bytes, else None."""
        import torch

        from .embedding import Embedding

        index = _index(index)
        if not self._matches(index, signature):
            return None
        def read(array):
            t = torch.from_numpy(np.asarray(array[index])[None].astype(np.float32))
            return t if device is None else t.to(device)

        g = self.geometry
        return Embedding(read(self._features), g.original_size, g.input_size, g.padded_size,
                         np.asarray(self._gray[index]), tuple(read(a) for a in self._high_res))

    def put(self, index, signature: str, emb) -> None:
        """Store one slice: features and gray first, its signature last (what marks it done)."""
        index = _index(index)
        if Geometry.of(emb) != self.geometry:
            raise CacheMismatch(f"slice {_fmt(index)} has geometry {Geometry.of(emb)}, the cache {self.geometry}")
        self._sig[index] = np.zeros(16, np.uint8)  # not done while being rewritten
        self._features[index] = emb.features[0].detach().to("cpu").half().numpy()
        for array, t in zip(self._high_res, emb.high_res):
            array[index] = t[0].detach().to("cpu").half().numpy()
        if emb.gray is not None:
            self._gray[index] = emb.gray
        self._sig[index] = np.frombuffer(bytes.fromhex(signature), np.uint8)

    def try_put(self, index, signature: str, emb) -> bool:
        """``put``, for a cache that only speeds up the work (segmenting): a store that cannot be written
        (read-only, disk full...) is used read-only from then on, with the reason in ``write_error``."""
        if self.write_error:
            return False
        try:
            self.put(index, signature, emb)
        except OSError as e:
            self.write_error = e.strerror or str(e)
            return False
        return True

    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def _tuples(v):
    """JSON lists back into (nested) tuples."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _lead_ndim(settings: dict) -> int:
    nd = len(settings["stack_shape"]) - 2
    return nd - (1 if settings.get("channel_axis") is not None else 0)


def _index(index) -> tuple[int, ...]:
    return tuple(int(i) for i in (index if isinstance(index, tuple) else (index,)))


def _fmt(index: tuple) -> str:
    return str(index[0]) if len(index) == 1 else str(index)


def _norm(v, key=None):
    if key == "stack_dtype" and v is not None:
        return native_dtype(v).str
    return list(v) if isinstance(v, (list, tuple)) else v


def default_cache_path(image_path) -> Path:
    """``stack.tif`` -> ``stack.embeddings.zarr`` beside it (only the image suffix goes:
    ``2024.05.01_embryo1.tif`` -> ``2024.05.01_embryo1.embeddings.zarr``)."""
    p = Path(os.fspath(image_path))
    return p.with_name(image_stem(p) + ".embeddings.zarr")

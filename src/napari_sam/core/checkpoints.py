"""Read a checkpoint file and turn it into a ``segment_anything`` ``Sam``.

Three kinds of file are understood, all read with
``torch.load(weights_only=True)`` (tensors and plain containers only, no code):

* an official SAM state dict (ViT-B/L/H), or any SAM-format ViT whose size is
  inferred from the tensor shapes (micro-sam's models, a small test model);
* a MobileSAM state dict (TinyViT image encoder, ``core.mobile_sam``): MobileSAM's
  own weights and micro-sam's ``vit_t`` models;
* a SAM 2 / SAM 2.1 checkpoint (Hiera tiny/small/base+/large, ``core.sam2_model``;
  needs Meta's ``sam2`` package);
  wrapped or not in ``{"state_dict" | "model_state" | "model": ...}``, keys
  with or without ``sam.`` / ``module.`` / ``_orig_mod.`` / ``model.`` prefixes;
* napari-sam's embedded model: ``{"format": "napari-sam-embedded/1",
  "config": {...}, "state_dict": {...}}`` (fp16 weights, cast to fp32 here).

A safetensors file of any of these state dicts is read with the safetensors package (``core.safetensors_file``).

Anything else raises :class:`ModelError` with a message meant for a person.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .mobile_sam import infer_tiny_vit, tiny_vit_widths, unknown_widths
from .safetensors_file import is_safetensors, read_safetensors
from .sam2_model import infer_sam2

if TYPE_CHECKING:
    import torch

SUPPORTED = (
    "supported checkpoints are official SAM ViT-B/L/H (segment-anything), MobileSAM, micro-sam models "
    "in SAM format (vit_b/l/h and vit_t), SAM 2 and 2.1 (Hiera tiny/small/base+/large, with the sam2 "
    "package), and napari-sam's embedded model"
)
EMBEDDED_FORMAT = "napari-sam-embedded"
EMBEDDED_VERSION = 1

# SAM's ViT: 1024 px input, 16 px patches -> a 64 x 64 token grid; windowed blocks use 14 x 14.
_GRID, _WINDOW = 64, 14
# (embed_dim, depth, num_heads, global_attn_indexes) of the official builders
STANDARD_VITS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
_WRAPPER_KEYS = ("state_dict", "model_state", "model")
_PREFIXES = ("sam.", "module.", "_orig_mod.", "model.")


class ModelError(ValueError):
    """A model could not be found, downloaded, verified or loaded; the message says why."""


_hash_cache: dict[tuple, str] = {}


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file's content may have: size, modification and change times, inode. The
    change time too, because ``cp -p``, ``rsync -t`` and ``os.utime`` set the modification time of new
    content to an old one; nothing sets the change time back."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks (remembered per ``file_identity``)."""
    key = (os.path.realpath(path), *file_identity(os.stat(path)))
    if key not in _hash_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def read_checkpoint(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors for people."""
    import torch

    if path.stat().st_size == 0:
        raise ModelError(_not_a_checkpoint(path, "the file is empty"))
    if is_safetensors(path):
        return read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise ModelError(
                f"{path} holds Python objects other than tensors (e.g. {found.group(1)}), so it was not "
                "loaded: napari-sam only opens checkpoints that torch.load(weights_only=True) accepts (a "
                "state dict of tensors), because loading arbitrary pickles can run code. Save the model's "
                "state_dict() instead."
            ) from None
        reason = "its bytes are not a pickle or zip archive written by torch.save"
        raise ModelError(_not_a_checkpoint(path, reason)) from None
    except (KeyError, IndexError) as e:  # the legacy pickle reader on text: 'hello' -> KeyError(101)
        raise ModelError(_not_a_checkpoint(path, f"its bytes are not a pickle or zip archive written by "
                                                 f"torch.save ({type(e).__name__} {e})")) from None
    except (RuntimeError, EOFError, ValueError, UnicodeDecodeError, AttributeError, OSError) as e:
        text = str(e).strip()
        if "PytorchStreamReader" in text or "inline_container" in text or isinstance(e, EOFError):
            reason = (
                "it is a damaged or incomplete torch.save file, or a zip archive of something else "
                "(a download cut short?)"
            )
        else:
            reason = text.splitlines()[0][:200] if text else type(e).__name__
        raise ModelError(_not_a_checkpoint(path, reason)) from None


def _not_a_checkpoint(path: Path, reason: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(1024).lstrip().lower()
    except OSError:
        head = b""
    if head.startswith(b"version https://git-lfs"):
        return (f"{path} is a Git LFS pointer (a small text file standing for the weights), not the weights: "
                "fetch them with 'git lfs pull' in that repository, or download the file itself.")
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return (f"{path} is a web page (HTML), not a checkpoint: the link it was downloaded from gave a page "
                "(a login, a preview or an error) instead of the file; download the file itself.")
    return (
        f"{path} is not a PyTorch checkpoint (torch.load could not read it: {reason}). "
        f"Give a .pth/.pt file saved with torch.save; {SUPPORTED}."
    )


def is_embedded(obj: Any) -> bool:
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith(EMBEDDED_FORMAT)


def extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: unwrap a wrapper dict, strip a common key prefix."""
    import torch

    for _ in range(3):  # e.g. {"model_state": {...}} or {"state_dict": {"model": ...}}
        if isinstance(obj, dict):
            wrapped = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
            inner = next((w for w in wrapped if _holds_tensors(w)), wrapped[0] if wrapped else None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise ModelError(
            f"{path} was read but holds a {type(obj).__name__}, not a state dict (a dict of "
            f"parameter name -> tensor); {SUPPORTED}."
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelError(f"{path} holds a dict without any tensors: it is not a model checkpoint; {SUPPORTED}.")
    # in any order and nesting: DataParallel's "module.sam.", torch.compile's "_orig_mod.", ...
    while (prefix := next((p for p in _PREFIXES if all(k.startswith(p) for k in sd)), None)) is not None:
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _holds_tensors(obj: Any, depth: int = 3) -> bool:
    """True if ``obj`` is a dict with tensors in it, directly or in a wrapper dict (``{"model": {...}}``)."""
    import torch

    if not isinstance(obj, dict) or depth == 0:
        return False
    return any(isinstance(v, torch.Tensor) for v in obj.values()) or any(
        _holds_tensors(obj.get(k), depth - 1) for k in _WRAPPER_KEYS
    )


def infer_vit(sd: dict[str, torch.Tensor]) -> tuple[str, dict] | None:
    """Architecture of a SAM ViT state dict from its shapes, or None if it is not one.

    Returns ``(arch, kwargs)`` where arch is "vit_b"/"vit_l"/"vit_h" for the official
    sizes and "vit_custom" otherwise; kwargs are ``segment_anything``'s ``_build_sam``
    arguments (embed dim, depth, heads, global attention block indexes).
    """
    pe = sd.get("image_encoder.patch_embed.proj.weight")
    if pe is None or pe.ndim != 4:
        return None
    dim = int(pe.shape[0])
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        return None
    global_idx, head_dims = [], set()
    for i in blocks:
        rel = sd.get(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        if rel is None or rel.ndim != 2:
            return None
        head_dims.add(int(rel.shape[1]))
        if rel.shape[0] == 2 * _GRID - 1:
            global_idx.append(i)
        elif rel.shape[0] != 2 * _WINDOW - 1:
            return None
    if len(head_dims) != 1 or dim % next(iter(head_dims)):
        return None
    kwargs = {
        "encoder_embed_dim": dim,
        "encoder_depth": len(blocks),
        "encoder_num_heads": dim // head_dims.pop(),
        "encoder_global_attn_indexes": global_idx,
    }
    key = (dim, len(blocks), kwargs["encoder_num_heads"], tuple(global_idx))
    arch = next((name for name, spec in STANDARD_VITS.items() if spec == key), "vit_custom")
    return arch, kwargs


def build_sam(obj: Any, path: Path):
    """``(sam, arch)`` from a loaded checkpoint object: weights in fp32, eval mode, on the CPU."""
    import torch

    sd = extract_state_dict(obj, path)
    if is_embedded(obj):
        fmt = str(obj["format"])
        version = fmt.rpartition("/")[2]
        if not version.isdigit() or int(version) > EMBEDDED_VERSION:
            raise ModelError(
                f"{path} is an embedded model in format {fmt!r}, newer than this napari-sam reads "
                f"({EMBEDDED_FORMAT}/{EMBEDDED_VERSION}): upgrade napari-sam."
            )
        from .embedded import build_embedded_sam

        sam, arch = build_embedded_sam(obj.get("config") or {}), "embedded"
    elif (found := infer_vit(sd)) is not None:
        from segment_anything.build_sam import _build_sam

        arch, kwargs = found
        sam = _build_sam(**kwargs, checkpoint=None)
    elif (sam2_arch := infer_sam2(sd)) is not None:
        from .sam2_model import build_sam2_model

        sam, arch = build_sam2_model(sam2_arch), sam2_arch
    elif (variant := infer_tiny_vit(sd)) is not None:
        from .mobile_sam import ARCH, build_mobile_sam

        sam, arch = build_mobile_sam(variant), ARCH
    elif (widths := tiny_vit_widths(sd)) is not None:
        raise ModelError(f"{path} has the layout of a MobileSAM checkpoint, but {unknown_widths(widths)}; {SUPPORTED}.")
    elif any(k.startswith("vision_encoder.") for k in sd):
        raise ModelError(f"{path} is a Hugging Face transformers SAM checkpoint (keys vision_encoder.*), a layout "
                         "napari-sam does not read: give the name vit_b, vit_l or vit_h, or a segment-anything .pth")
    else:
        from segment_anything import sam_model_registry

        # Not a SAM ViT: name what differs from the nearest known model, ViT-B
        # (built on the meta device: shapes only, no memory, no init time).
        with torch.device("meta"):
            reference = sam_model_registry["vit_b"](checkpoint=None)
        _check_keys(reference, sd, path)
        raise ModelError(f"{path} has the keys of SAM ViT-B but shapes napari-sam cannot place; {SUPPORTED}.")
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    _check_keys(sam, sd, path)
    # a diverged training run: every mask would be empty, every score NaN (a sum: 10x faster than isfinite)
    broken = [k for k, v in sd.items() if v.is_floating_point() and not bool(v.sum().isfinite())]
    if broken:
        raise ModelError(f"{path} has NaN or infinite weights in {len(broken)} tensor(s) (e.g. {broken[0]}): the "
                         "training run that saved it diverged; use an earlier checkpoint of that run")
    sam.load_state_dict(sd, strict=True)
    return sam.float().eval(), arch


def _check_keys(sam: torch.nn.Module, sd: dict, path: Path) -> None:
    """Raise a ModelError naming missing, unexpected and mis-shaped keys, if any."""
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shape mismatches (file vs model)", mismatched))
            if keys
        ]
        raise ModelError(
            f"{path} does not match any model napari-sam can build; " + "; ".join(parts) + f". {SUPPORTED}."
        )

"""The record ``segment`` writes beside each labels file, and running a batch again after it stopped.

A batch that was interrupted (Ctrl-C, SIGTERM, a killed job) or stopped at an image it could not read
or write is finished by running the same command again: an image whose labels and record are already in
``--out``, made from the same pixels (``image_xxh3``), prompts, model (checksum) and options, is kept and
not redone. Any other existing output is refused as before (``--overwrite`` replaces it); a labels file
without its record, or the reverse, is never taken as done (``_labels_file`` writes the pair so that a
killed run leaves at most a labels file without a record).
"""

from __future__ import annotations

import json
from pathlib import Path

# what must agree for an earlier output to be this run's (device, encoder precision and version may differ)
SAME = {
    "image": "image file",
    "image_xxh3": "image pixels",
    "model_sha256": "model",
    "mode": "mode",
    "z_range": "--z-range",
    "refine": "--refine",
    "normalize": "--normalize",
    "input_scale_auto": "--input-scale",
    "input_scale": "--input-scale",
    "prompts": "prompts",
}


def asked_scale(args, model, embeddings):
    """The magnification ``args`` ask for: a number, None (SAM's canvas) or "auto" (measured per image).
    The default is "auto" for the embedded model and the cache's own with ``--embeddings``."""
    from ._cli_checks import check_input_scale

    if args.input_scale is not None:
        return check_input_scale(args.input_scale)
    if embeddings:
        from ._cli_embed import embeddings_scale

        return embeddings_scale(embeddings)
    return "auto" if getattr(model, "native_resolution", False) else None


def record_for(args, image_path, vol, prompts, z_range, model, scale, auto: bool) -> dict:
    """The record of one image's labels (JSON-able): what it was made from and how."""
    from . import __version__
    from ._mask_prompts import for_record
    from .cli import _mode
    from .core.cache import slice_signature

    return {
        "image": str(Path(image_path).resolve()),
        "image_xxh3": slice_signature(vol.data),
        "model": model.name,
        "model_sha256": model.checksum,
        "device": str(model.device),
        "precision": getattr(model, "precision", "float32"),  # the image encoder's: int8 on x86 CPUs (core.int8)
        "mode": _mode(args),
        "z_range": z_range,
        "refine": args.refine,
        "input_scale": scale,
        "input_scale_auto": auto,
        "normalize": args.normalize,
        "prompts": {str(o): {str(z): s for z, s in zs.items()} for o, zs in for_record(prompts).items()},
        "napari_sam_version": __version__,
    }


def earlier_record(target: Path) -> dict | None:
    """The record beside labels ``target`` when both are files and the record reads as one; else None."""
    from .io import sidecar_path

    side = sidecar_path(target)
    if not (target.is_file() and side.is_file()):
        return None
    try:
        rec = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def differs(earlier: dict, args, image_path, vol, prompts, z_range, model, embeddings) -> str:
    """What an earlier record says was done differently from what this run would do ("" when nothing)."""
    from ._labels_file import _jsonable

    scale = asked_scale(args, model, embeddings)
    auto = scale == "auto"
    now = record_for(args, image_path, vol, prompts, z_range, model, None if auto else scale, auto)
    now = json.loads(json.dumps(now, default=_jsonable))  # as it would be read back
    keys = [k for k in SAME if not (auto and k == "input_scale")]  # "auto" measures it from the image
    what = dict.fromkeys(SAME[k] for k in keys if earlier.get(k, "?") != now[k])
    if "image file" in what and isinstance(earlier.get("image"), str):
        what = {f"image file ({earlier['image']})" if w == "image file" else w: None for w in what}
    return ", ".join(what)

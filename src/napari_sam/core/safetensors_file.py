"""safetensors files (a JSON header, then raw tensors: nothing to unpickle), recognised by their bytes
whatever their name, and read with the safetensors package when it is installed (napari-sam does not
require it)."""

from __future__ import annotations

from pathlib import Path


def is_safetensors(path: Path) -> bool:
    """A safetensors file, whatever its name: an 8-byte little-endian JSON header length (at most 100 MB), '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 1 < int.from_bytes(head[:8], "little") <= 100_000_000


def read_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file (tensors only, nothing to unpickle), with errors for people."""
    from .checkpoints import ModelError  # (checkpoints imports this module)

    with open(path, "rb") as f:
        if int.from_bytes(f.read(8), "little") > path.stat().st_size - 8:
            raise ModelError(f"{path} is an incomplete safetensors file (cut short in its header, a download "
                             "cut short?): download it again")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError(f"{path} is a safetensors file; reading it needs the safetensors package, which is "
                         "not installed: pip install safetensors (or give the checkpoint as a .pth/.pt file)") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors' SafetensorError: a header that lies about the data after it
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"{path} is a damaged or incomplete safetensors file ({why}): download it again") from None

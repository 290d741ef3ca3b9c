"""Device and precision choice: ``auto`` is cuda, then mps, then cpu; half only on CUDA.

Every check goes through ``torch.cuda.is_available``, ``torch.cuda.device_count``,
``torch.cuda.is_bf16_supported`` and ``torch.backends.mps.is_available`` at call
time, so tests can monkeypatch them to play a GPU machine.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .checkpoints import ModelError

if TYPE_CHECKING:
    import torch


def auto_flag(value, name: str):
    """An "auto" / True / False option as exactly that: 0 / 1 and numpy's booleans count as False / True
    (they pass ``value in ("auto", True, False)`` but are not ``False``: ``half=np.False_`` ran as "auto");
    anything else is refused with what ``name`` takes."""
    import numbers

    import numpy as np

    if isinstance(value, str):
        if value == "auto":
            return value
    elif isinstance(value, (numbers.Integral, np.bool_)) and value in (0, 1):
        return bool(value)
    raise ModelError(f"{name} must be 'auto', True or False, not {value!r}")


def _cuda_refusal(torch) -> str:
    if torch.version.cuda is None:
        return "this torch build has no CUDA support (a CPU-only build)"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1", "none", "NoDevFiles"):
        return (f"the environment variable CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU from this process "
                "(on a cluster: request a GPU for the job)")
    return "this torch build has CUDA support but no usable CUDA GPU or driver was found"


def _visible_note() -> str:
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not hidden:
        return ""
    return f" (CUDA_VISIBLE_DEVICES={hidden!r}: the visible GPUs are numbered from 0 in that order)"


def _mps_available(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: Any = "auto") -> torch.device:
    """``torch.device`` for "auto", "cpu", "cuda", "cuda:N" or "mps" (or a torch.device).

    "auto" picks cuda, then mps, then cpu. An explicit device that this machine
    cannot use is refused with a :class:`ModelError` saying why.
    """
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available(torch) else "cpu")
    kind, colon, index = text.partition(":")
    valid = "valid devices are 'auto', 'cpu', 'cuda', 'cuda:N' (N = GPU index) and 'mps'"
    if kind not in ("cpu", "cuda", "mps") or (colon and (kind != "cuda" or not index.isdigit())):
        raise ModelError(f"unknown device {device!r}: {valid}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {text!r} requested but torch.cuda.is_available() is False: {_cuda_refusal(torch)}; "
                "use device='cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if colon and int(index) >= count:
            raise ModelError(
                f"device {text!r} requested but only {count} CUDA device(s) are visible "
                f"(cuda:0..cuda:{count - 1}){_visible_note()}; use one of those or 'auto'"
            )
    if kind == "mps" and not _mps_available(torch):
        mps = getattr(torch.backends, "mps", None)
        why = (
            "this torch build has no MPS support"
            if mps is None or not mps.is_built()
            else "MPS needs an Apple-silicon Mac with macOS 12.3 or newer"
        )
        raise ModelError(
            f"device 'mps' requested but torch.backends.mps.is_available() is False: {why}; "
            "use device='cpu' or 'auto'"
        )
    return torch.device(text)


def choose_dtype(device: Any, half: Any = "auto") -> torch.dtype:
    """Compute dtype for ``device``: half precision only on CUDA.

    half="auto" or True on CUDA: bfloat16 if the GPU computes in it natively (Ampere or newer), else float16;
    half=False: float32. On cpu and mps the answer is always float32, and
    half=True there is refused (SAM in half precision on the CPU is slow and inexact).
    """
    import torch

    half = auto_flag(half, "half")
    kind = torch.device(device).type
    if kind == "cuda":
        if half is False:
            return torch.float32
        return torch.bfloat16 if _native_bf16(torch, torch.device(device)) else torch.float16
    if half is True:
        raise ModelError(
            f"half precision was requested on {kind!r}, but napari-sam uses half precision only on CUDA "
            "GPUs; on the CPU and on MPS it runs in float32. Use half='auto' or half=False."
        )
    return torch.float32


def _native_bf16(torch, device) -> bool:
    """True if the GPU computes in bfloat16 itself (Ampere or newer). ``is_bf16_supported()`` alone also
    says True where bf16 is only emulated (T4, V100: slower than fp16, and no bf16 convolutions in cuDNN)."""
    def ask():
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no including_emulation, and checks the compute capability
            return bool(torch.cuda.is_bf16_supported())

    if device.index is not None and torch.cuda.device_count() > 1:
        with torch.cuda.device(device.index):  # it asks about the current GPU: make it the chosen one
            return ask()
    return ask()

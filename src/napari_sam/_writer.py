"""Save a Labels layer as TIFF, with the SAM prompts that made its objects beside it.

npe2 single-layer writer: ``write_labels(path, data, attributes) -> [paths]``.
As napari's writer contract says, the file the user picked is written
(replacing an existing one: the save dialog already asked). The write goes
to a temporary file first, so a failure never leaves a half-written TIFF.

* ``<name>.tif``: the label array, values unchanged, in the smallest
  unsigned integer type that holds them (uint8/uint16 files are ImageJ
  hyperstacks with the voxel size; larger ids are written as uint32).
* ``<name>.prompts.json``: when the widget committed objects into this layer
  (``metadata["napari_sam"]``), the prompts of every object still present:
  label, slice, points (full data coordinates), point labels, box, model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}


def _label_array(data) -> np.ndarray:
    if isinstance(data, (list, tuple)):  # multiscale: the full-resolution level
        data = data[0]
    a = np.asarray(data)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.size and a.min() < 0:
        return a.astype(np.int32)
    top = int(a.max()) if a.size else 0
    for t in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(t).max:
            return a.astype(t, copy=False)
    return a.astype(np.uint64, copy=False)


def _unit(attributes: dict) -> str:
    units = attributes.get("units")
    if units:
        u = str(units[-1])
        return {"micrometer": "um", "nanometer": "nm", "millimeter": "mm"}.get(u, u)
    return "pixel"


def _replace_atomically(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_tiff(target: Path, a: np.ndarray, attributes: dict) -> None:
    import tifffile

    scale = [float(s) for s in (attributes.get("scale") or [1.0] * a.ndim)]
    dy, dx = (scale[-2], scale[-1]) if a.ndim >= 2 else (1.0, 1.0)
    imagej = a.dtype in (np.uint8, np.uint16) and a.ndim in _AXES
    meta: dict[str, Any] = {"axes": _AXES.get(a.ndim, "Q" * (a.ndim - 2) + "YX")}
    if imagej:
        meta["unit"] = _unit(attributes)
        if a.ndim >= 3:
            meta["spacing"] = scale[-3]
    else:
        meta.update(
            name=attributes.get("name", "labels"),
            scale=scale,
            translate=[float(t) for t in (attributes.get("translate") or [0.0] * a.ndim)],
        )

    def write(tmp):
        tifffile.imwrite(
            tmp, a, imagej=imagej, resolution=(1.0 / dx, 1.0 / dy), metadata=meta,
            compression=None if imagej else "zlib", photometric="minisblack",
        )

    _replace_atomically(target, write)


def prompts_sidecar(tiff_path: str | os.PathLike) -> Path:
    """Where the prompts of ``labels.tif`` go: ``labels.prompts.json`` (as ``napari-sam segment`` names it)."""
    from ._labels_file import sidecar_path

    return sidecar_path(tiff_path)


def _present(a: np.ndarray, rec: dict) -> bool:
    """The record's label is on its slice of ``a``."""
    idx: list = [slice(None)] * a.ndim
    for axis, i in zip(rec["plane"]["axes"], rec["plane"]["index"]):
        if not 0 <= i < a.shape[axis]:
            return False
        idx[axis] = i
    return bool(np.any(a[tuple(idx)] == rec["label"]))


def _clicked_on(a: np.ndarray, rec: dict) -> bool:
    """The record's label lies under one of its positive clicks (True without clicks)."""
    clicks = [p for p, lb in zip(rec.get("points") or [], rec.get("point_labels") or []) if lb == 1]
    if not clicks:
        return True
    at = np.clip(np.rint(np.asarray(clicks, float)).astype(int), 0, np.array(a.shape) - 1)
    return bool(np.any(a[tuple(at.T)] == rec["label"]))


def _current(a: np.ndarray, objects: list) -> list:
    """The records of objects in ``a``: its label on its slice (undone commits are not); of several records of
    one label on one slice (an undone commit whose id went to the next object), those whose clicks the label
    lies under, else the last."""
    present = [r for r in objects if isinstance(r, dict) and _present(a, r)]
    groups: dict = {}
    for r in present:
        groups.setdefault((r["label"], tuple(r["plane"]["axes"]), tuple(r["plane"]["index"])), []).append(r)
    keep = set()
    for rs in groups.values():
        hit = rs if len(rs) == 1 else [r for r in rs if _clicked_on(a, r)] or rs[-1:]
        keep.update(id(r) for r in hit)
    return [r for r in present if id(r) in keep]


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer to ``path`` (.tif/.tiff) and its SAM prompts beside it."""
    target = Path(path)
    if target.suffix.lower() not in TIFF_SUFFIXES:
        target = target.with_name(target.name + ".tif")
    a = _label_array(data)
    _write_tiff(target, a, attributes)
    written = [str(target)]
    entry = (attributes.get("metadata") or {}).get("napari_sam")
    objects = entry.get("objects", []) if isinstance(entry, dict) else []
    objects = _current(a, objects)
    if objects:
        from napari_sam import __version__

        sidecar = prompts_sidecar(target)
        doc = {
            "napari_sam_version": __version__,
            "labels_file": target.name,
            "coordinates": "data (pixel) coordinates of the label array, axis order as the array",
            "objects": objects,
        }
        text = json.dumps(doc, indent=1)
        _replace_atomically(sidecar, lambda tmp: Path(tmp).write_text(text))
        written.append(str(sidecar))
    else:
        written += _earlier_sidecar(prompts_sidecar(target), a)
    return written


def _earlier_sidecar(sidecar: Path, a: np.ndarray) -> list[str]:
    """The layer has no records (opened from a file, say): a record already beside the file is the only one of
    how its objects were made, so it is not thrown away. A widget's record keeps the objects still in ``a``
    (removed when none is); a ``napari-sam segment`` record (prompts per object) stays as it is."""
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, ValueError, TypeError):
        return []
    objects = doc.get("objects") if isinstance(doc, dict) and "napari_sam_version" in doc else None
    if not isinstance(objects, list):
        return []
    kept = _current(a, objects)
    if not kept:
        sidecar.unlink(missing_ok=True)
        return []
    if len(kept) < len(objects):
        text = json.dumps({**doc, "objects": kept}, indent=1)
        _replace_atomically(sidecar, lambda tmp: Path(tmp).write_text(text))
    return [str(sidecar)]

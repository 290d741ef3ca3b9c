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
  label, slice, points (full data coordinates), point labels, box, model;
  with them, those of a record already beside the file for objects still
  present that the layer's records do not describe (saved in an earlier session).
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
    top = int(a.max()) if a.size else 0
    if a.size and a.min() < 0:  # int32 when the values fit (ImageJ and most readers), else as they are
        info = np.iinfo(np.int32)
        return a.astype(np.int32 if info.min <= int(a.min()) and top <= info.max else np.int64, copy=False)
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
    """The record's label is on its slice of ``a`` (False for a record that is not one, e.g. edited by hand)."""
    idx: list = [slice(None)] * a.ndim
    try:
        for axis, i in zip(rec["plane"]["axes"], rec["plane"]["index"]):
            if not 0 <= i < a.shape[axis]:
                return False
            idx[axis] = i
        return bool(np.any(a[tuple(idx)] == rec["label"]))
    except (KeyError, TypeError, IndexError):
        return False


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
    if not target.parent.is_dir():
        why = "is a file, not a folder" if target.parent.exists() else "does not exist"
        raise OSError(f"cannot save {target.name}: {target.parent} {why}; create the folder or choose another")
    a = _label_array(data)
    try:
        _write_tiff(target, a, attributes)
    except OSError as e:  # the temporary file's name would say nothing to the user
        raise OSError(f"cannot save {target}: {e.strerror or e}; nothing was written") from e
    entry = (attributes.get("metadata") or {}).get("napari_sam")
    objects = entry.get("objects", []) if isinstance(entry, dict) else []
    return [str(target), *_write_record(prompts_sidecar(target), target, a, _current(a, objects))]


def _key(rec: dict) -> tuple:
    return rec["label"], tuple(rec["plane"]["axes"]), tuple(rec["plane"]["index"])


def _write_record(sidecar: Path, target: Path, a: np.ndarray, objects: list) -> list[str]:
    """Write ``objects`` (the layer's records of objects in ``a``) to ``sidecar``; returns [sidecar] or [].

    A record already beside the file (the file opened and saved again, in this session or a later one) may be
    the only one of how some of its objects were made, so it is not thrown away: a widget's record keeps the
    objects still in ``a`` that the layer's records do not describe (label and slice), and is removed when
    none is left; a ``napari-sam segment`` record (prompts per object) keeps what it says beside them.
    """
    earlier = _read_record(sidecar)
    before = earlier.get("objects") if earlier is not None else None
    mine = {_key(r) for r in objects}
    kept = [r for r in _current(a, before) if _key(r) not in mine] if isinstance(before, list) else []
    if not objects:
        if earlier is None:
            return []
        if not isinstance(before, list):
            return [str(sidecar)]  # a segment record: as it is
        if not kept:
            sidecar.unlink(missing_ok=True)
            return []
        if len(kept) == len(before):
            return [str(sidecar)]
        doc = {**earlier, "objects": kept}
    else:
        from napari_sam import __version__

        doc = {
            **(earlier or {}),
            "napari_sam_version": __version__,
            "labels_file": target.name,
            "coordinates": "data (pixel) coordinates of the label array, axis order as the array",
            "objects": kept + objects,
        }
    text = json.dumps(doc, indent=1)
    _replace_atomically(sidecar, lambda tmp: Path(tmp).write_text(text))
    return [str(sidecar)]


def _read_record(sidecar: Path) -> dict | None:
    """The napari-sam record at ``sidecar`` (a widget's or ``napari-sam segment``'s), or None."""
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, ValueError, TypeError):
        return None
    return doc if isinstance(doc, dict) and "napari_sam_version" in doc else None

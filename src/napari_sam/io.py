"""Files in and out: images, prompt tables (CSV), labels with a record of how
they were made. Errors are :class:`InputError` with a message for people.

Prompt tables (napari's (row, col) convention, pixel coordinates):

* points CSV: a header row; coordinates ``z,y,x`` (``y,x`` for a 2D image) or
  napari's own export columns ``axis-0,axis-1[,axis-2]``; optional
  ``positive`` (1/0, true/false; default 1) and ``object`` (integer id).
  Without ``object``, each positive point is its own object and a negative
  point applies to every object on its slice; a negative point with an empty
  ``object`` cell does the same.
* boxes CSV: ``z,y0,x0,y1,x1`` (``y0,x0,y1,x1`` for 2D), optional ``object``;
  a box without an object id is a new object.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core.lazy import tiff_layout


class InputError(ValueError):
    """Bad user input: the message says what was wrong and what to do."""


@dataclass
class Volume:
    """An image as (z, y, x[, c]); ``is_2d`` remembers a 2D input (z = 1)."""

    data: np.ndarray
    is_2d: bool
    rgb: bool

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        s = self.data.shape[:3]
        return s[1:] if self.is_2d else s


def read_image(path) -> Volume:
    """A 2D or 3D (z, y, x) TIFF, RGB last axis allowed."""
    import tifffile

    p = _existing(path)
    try:
        with tifffile.TiffFile(p) as tf:
            data = tf.asarray()
            photometric = tf.pages[0].photometric if len(tf.pages) else None
    except Exception as e:  # tifffile raises many kinds for non-TIFF input
        raise InputError(f"cannot read {p} as a TIFF image ({type(e).__name__}: {e})") from None
    planes, rgb = tiff_layout(data.shape, data.dtype, photometric)
    if planes:
        data = np.moveaxis(data, -3, -1)  # RGB stored as separate planes: (..., 3, y, x)
    spatial = _spatial_shape(p, data.shape, rgb)
    return Volume(data[None] if len(spatial) == 2 else data, len(spatial) == 2, rgb)


def image_spatial_shape(path) -> tuple[int, ...]:
    """(y, x) or (z, y, x) of a TIFF as :func:`read_image` would give it, from its header (no pixels read)."""
    import tifffile

    p = _existing(path)
    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            shape, dtype = tuple(series.shape), series.dtype
            photometric = tf.pages[0].photometric if len(tf.pages) else None
    except Exception as e:
        raise InputError(f"cannot read {p} as a TIFF image ({type(e).__name__}: {e})") from None
    planes, rgb = tiff_layout(shape, dtype, photometric)
    if planes:
        shape = shape[:-3] + shape[-2:] + shape[-3:-2]
    return _spatial_shape(p, shape, rgb)


def _existing(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    return p


def _spatial_shape(p, shape, rgb) -> tuple[int, ...]:
    spatial = len(shape) - (1 if rgb else 0)
    if spatial not in (2, 3):
        raise InputError(
            f"{p} has shape {tuple(shape)}: expected a 2D (y, x) or 3D (z, y, x) image, optionally with an RGB last axis"
        )
    return tuple(int(v) for v in shape[:spatial])


def _num(v: str, col: str, line: int, path) -> float:
    try:
        return float(v)
    except ValueError:
        raise InputError(f"{path}, line {line}: column '{col}' has '{v}', which is not a number") from None


def _bool(v: str, line: int, path) -> int:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "y", "t", "1.0"):
        return 1
    if s in ("0", "false", "no", "n", "f", "0.0", "-1"):
        return 0
    raise InputError(f"{path}, line {line}: 'positive' must be 1/0 or true/false, got '{v}'")


def _read_rows(path) -> tuple[list[str], list[tuple[int, dict]]]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompt table not found: {p}")
    try:
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            rows = [(i + 2, {k.strip(): (v or "").strip() for k, v in r.items() if k is not None}) for i, r in enumerate(reader)]
    except UnicodeDecodeError:
        raise InputError(f"{p} is not a text CSV file") from None
    if not fields:
        raise InputError(f"{p} is empty: expected a header row such as 'z,y,x,positive,object'")
    return fields, rows


def _coord_columns(fields, ndim: int, kind: str, path) -> list[str]:
    if kind == "points":
        named = ["z", "y", "x"] if ndim == 3 else ["y", "x"]
        napari = [f"axis-{i}" for i in range(ndim)]
    else:
        named = (["z"] if ndim == 3 else []) + ["y0", "x0", "y1", "x1"]
        napari = named
    for cols in (named, napari):
        if all(c in fields for c in cols):
            return cols
    want = ",".join(named) + ("" if kind == "boxes" else f" (or napari's {','.join(napari)})")
    raise InputError(f"{path}: header {','.join(fields)} lacks the columns {want} for a {ndim}D image")


def read_prompts(points_csv, boxes_csv, spatial_shape) -> dict[int, dict[int, dict]]:
    """Parse the tables into {object_id: {z: {"points", "labels", "box"}}} for a
    ``spatial_shape`` (y, x) or (z, y, x) image; z is 0 for 2D. Validates
    every coordinate against the image."""
    ndim = len(spatial_shape)
    shape3 = (1, *spatial_shape) if ndim == 2 else tuple(spatial_shape)
    pts: list[tuple[int, float, float, int, int | None, int]] = []  # z, y, x, pos, obj, line
    if points_csv is not None:
        fields, rows = _read_rows(points_csv)
        cols = _coord_columns(fields, ndim, "points", points_csv)
        for line, r in rows:
            c = [_num(r[k], k, line, points_csv) for k in cols]
            z, y, x = (0.0, *c) if ndim == 2 else c
            pos = _bool(r["positive"], line, points_csv) if r.get("positive", "") != "" else 1
            obj = r.get("object", "")
            oid = int(_num(obj, "object", line, points_csv)) if obj != "" else None
            _check_zyx(z, y, x, shape3, ndim, points_csv, line, "point")
            pts.append((int(round(z)), y, x, pos, oid, line))
    boxes: list[tuple[int, np.ndarray, int | None]] = []
    if boxes_csv is not None:
        fields, rows = _read_rows(boxes_csv)
        cols = _coord_columns(fields, ndim, "boxes", boxes_csv)
        for line, r in rows:
            c = [_num(r[k], k, line, boxes_csv) for k in cols]
            z, b = (0.0, c) if ndim == 2 else (c[0], c[1:])
            for yy, xx in ((b[0], b[1]), (b[2], b[3])):
                _check_zyx(z, yy, xx, shape3, ndim, boxes_csv, line, "box corner")
            obj = r.get("object", "")
            oid = int(_num(obj, "object", line, boxes_csv)) if obj != "" else None
            boxes.append((int(round(z)), np.array(b, np.float32), oid))
    if not pts and not boxes:
        raise InputError("no prompts: the points/boxes tables have no rows")

    objects: dict[int, dict[int, dict]] = {}
    used = {p[4] for p in pts if p[4] is not None} | {b[2] for b in boxes if b[2] is not None}
    if any(u is not None and u < 1 for u in used):
        raise InputError("object ids must be positive integers (0 is background)")
    next_id = max(used, default=0) + 1

    def slot(oid, z):
        return objects.setdefault(oid, {}).setdefault(z, {"points": [], "labels": [], "box": None})

    for z, y, x, pos, oid, _ in pts:
        if oid is None and pos:
            oid, next_id = next_id, next_id + 1
        if oid is not None:
            s = slot(oid, z)
            s["points"].append((y, x))
            s["labels"].append(pos)
    for z, b, oid in boxes:
        if oid is None:
            oid, next_id = next_id, next_id + 1
        s = slot(oid, z)
        if s["box"] is not None:
            raise InputError(f"object {oid} has two boxes on slice z={z}; give one box per object and slice")
        s["box"] = b
    # negative points without an object: every object on their slice
    for z, y, x, pos, oid, line in pts:
        if oid is None and not pos:
            hits = [o for o, zs in objects.items() if z in zs]
            if not hits:
                raise InputError(f"{points_csv}, line {line}: negative point on z={z} but no object has a positive prompt there")
            for o in hits:
                objects[o][z]["points"].append((y, x))
                objects[o][z]["labels"].append(0)
    for oid, zs in objects.items():
        for z, s in zs.items():
            if s["box"] is None and not any(s["labels"]):
                raise InputError(f"object {oid} on z={z} has only negative points: add a positive point or a box")
    return objects


def _check_zyx(z, y, x, shape3, ndim, path, line, what):
    nz, ny, nx = shape3
    if ndim == 3 and not (-0.5 <= z < nz - 0.5):
        raise InputError(f"{path}, line {line}: {what} on z={z:g}, but the image has slices 0..{nz - 1}")
    if not (-0.5 <= y <= ny - 0.5 and -0.5 <= x <= nx - 0.5):
        raise InputError(
            f"{path}, line {line}: {what} (y={y:g}, x={x:g}) is outside the image of {ny}x{nx} pixels"
        )


def label_dtype(max_id: int):
    return np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32


def check_output(path, overwrite: bool) -> Path:
    p = Path(path)
    side = sidecar_path(p)
    if not overwrite:
        for q in (p, side):
            if q.exists():
                raise InputError(f"{q} exists; pass --overwrite to replace it, or choose another --out")
    if not p.parent.exists():
        raise InputError(f"output folder does not exist: {p.parent}")
    return p


def sidecar_path(path) -> Path:
    p = Path(path)
    return p.with_name(p.name.split(".")[0] + ".prompts.json")


def write_labels_atomic(path, labels: np.ndarray, record: dict) -> None:
    """Write labels (tifffile) and the JSON record beside them; each file
    appears whole or not at all (write to a temporary file, then rename)."""
    import tifffile

    p = Path(path)
    for target, writer in (
        (p, lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib")),
        (sidecar_path(p), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1, default=_jsonable))),
    ):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".napari-sam-", suffix=target.suffix)
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)

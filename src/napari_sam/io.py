"""Files in and out: images, prompt tables (CSV), labels with a record of how
they were made. Errors are :class:`InputError` with a message for people.

Prompt tables (napari's (row, col) convention, pixel coordinates):

* points CSV: a header row; coordinates ``z,y,x`` (``y,x`` for a 2D image) or
  napari's own export columns ``axis-0,axis-1[,axis-2]``; optional
  ``positive`` (1/0, true/false; default 1) and ``object`` (integer id, 1 to
  4294967295).
  Without ``object``, each positive point is its own object and a negative
  point applies to every object on its slice; a negative point with an empty
  ``object`` cell does the same.
* boxes CSV: ``z,y0,x0,y1,x1`` (``y0,x0,y1,x1`` for 2D), optional ``object``;
  a box without an object id is a new object.

A table with more coordinate axes than the image (``z`` for a 2D image, a
napari export of a 4D layer for a stack) is refused, not cut to fit; so is a
time column (``t``: the image is one stack, with no time point to match) and
any column not named above (a typo'd ``postive`` would make every point
positive); napari's ``index`` column is ignored (``_prompt_table``).
Tables may start with a byte-order mark (Excel's "CSV UTF-8").

Labels and their record: ``_labels_file`` (``check_output``,
``write_labels_atomic``, ``sidecar_path``, ``label_dtype``; imported from here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._labels_file import check_output, label_dtype, sidecar_path, write_labels_atomic
from ._prompt_table import read_table
from .core.lazy import axes_problem, tiff_layout

__all__ = ["InputError", "Volume", "read_image", "image_header", "image_spatial_shape", "read_prompts",
           "check_output", "label_dtype", "sidecar_path", "write_labels_atomic", "SliceReader"]

MAX_OBJECT_ID = int(np.iinfo(np.uint32).max)


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

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's shape as read: (y, x[, c]) or (z, y, x[, c])."""
        return tuple(self.data.shape[1:] if self.is_2d else self.data.shape)


def read_image(path) -> Volume:
    """A 2D or 3D (z, y, x) TIFF, RGB last axis allowed (one whose axes say channels, or time beside z, is
    refused: ``core.lazy.axes_problem``); or a .zarr / .npy array, read as ``napari-sam embed`` reads it
    (``core.lazy.open_stack``; an OME-Zarr image by its axes, by the same rules: ``core.ome_zarr``)."""
    import tifffile

    if _is_store(path):
        lazy = _open_store(path)
        pixels = SliceReader(lazy.data, path)  # read here: a damaged chunk or a truncated file shows only now
        data = pixels[0][None] if lazy.was_2d else pixels[...]
        return Volume(_real(data, path), lazy.was_2d, lazy.rgb)
    p = _existing(path)
    try:
        with tifffile.TiffFile(p) as tf:
            data = tf.asarray()
            photometric = tf.pages[0].photometric if len(tf.pages) else None
            axes = tf.series[0].axes
    except Exception as e:  # tifffile raises many kinds for non-TIFF input
        raise InputError(f"cannot read {p} as a TIFF image ({type(e).__name__}: {e})") from None
    planes, rgb = tiff_layout(data.shape, data.dtype, photometric)
    _check_axes(p, axes, data.shape, rgb)
    if planes:
        data = np.moveaxis(data, -3, -1)  # RGB stored as separate planes: (..., 3, y, x)
    spatial = _spatial_shape(p, data.shape, rgb)
    return Volume(_real(data[None] if len(spatial) == 2 else data, p), len(spatial) == 2, rgb)


class SliceReader:
    """A lazy stack (``core.lazy.open_stack``'s ``data``) whose slices, read one at a time as ``stack[z]``
    (numpy), raise an ``InputError`` naming the slice when their pixels cannot be read (a damaged zarr chunk,
    a truncated TIFF): what its header does not show."""

    def __init__(self, data, path):
        self._data, self._path = data, path
        self.shape, self.dtype, self.ndim = tuple(data.shape), data.dtype, len(data.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        try:
            return np.asarray(self._data[index])
        except (MemoryError, OSError):
            raise
        except Exception as e:  # zarr's codecs and tifffile raise many kinds
            z = index[0] if isinstance(index, tuple) and len(index) == 1 else index
            where = f"slice {z}" if isinstance(z, (int, np.integer)) else "the pixels"
            raise InputError(f"cannot read {where} of {self._path} ({type(e).__name__}: {e})") from None


def _real(data: np.ndarray, path) -> np.ndarray:
    if data.dtype.kind == "c":
        raise InputError(f"{path} holds complex values ({data.dtype}): save its magnitude (np.abs) or real part "
                         "as the image")
    return data


def image_spatial_shape(path) -> tuple[int, ...]:
    """(y, x) or (z, y, x) of an image as :func:`read_image` would give it, from its header (no pixels read)."""
    shape, rgb = image_header(path)
    return shape[:len(shape) - rgb]


def image_header(path) -> tuple[tuple[int, ...], bool]:
    """(shape, rgb) of an image as :func:`read_image` would give it ((y, x[, c]) or (z, y, x[, c])), from
    its header (no pixels read)."""
    import tifffile

    if _is_store(path):
        lazy = _open_store(path)
        return (lazy.shape[1:] if lazy.was_2d else lazy.shape), lazy.rgb
    p = _existing(path)
    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
            photometric = tf.pages[0].photometric if len(tf.pages) else None
    except Exception as e:
        raise InputError(f"cannot read {p} as a TIFF image ({type(e).__name__}: {e})") from None
    planes, rgb = tiff_layout(shape, dtype, photometric)
    _check_axes(p, axes, shape, rgb)
    if planes:
        shape = shape[:-3] + shape[-2:] + shape[-3:-2]
    _spatial_shape(p, shape, rgb)
    return tuple(int(v) for v in shape), rgb


def _existing(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    return p


def _is_store(path) -> bool:
    """A zarr store or .npy file (TIFFs are read by tifffile here, whole)."""
    p = Path(path)
    return p.suffix.lower() in (".zarr", ".npy") or p.is_dir()


def _open_store(path):
    from .core.lazy import open_stack

    try:
        return open_stack(path)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(str(e)) from None
    except Exception as e:  # zarr and numpy raise many kinds for what is not an array
        raise InputError(f"cannot read {path} as a .zarr or .npy array ({type(e).__name__}: {e})") from None


def open_lazy(path):
    """(``core.lazy.LazyStack``, its ``SliceReader``) of an image file, pixels unread; InputError when the file
    is missing or not an image napari-sam reads."""
    from .core.lazy import open_stack

    try:
        vol = open_stack(path)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(str(e)) from None
    return vol, SliceReader(vol.data, path)


def _check_axes(p, axes, shape, rgb) -> None:
    """A TIFF whose axes say channels (C), or time (T) beside z, is refused with what to do (``core.lazy``)."""
    problem = axes_problem(p, axes, shape, rgb)
    if problem:
        raise InputError(problem)


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


def _object_id(v: str, line: int, path) -> int | None:
    """An ``object`` cell: None when empty, else a whole number 1..MAX_OBJECT_ID (the labels are uint32)."""
    if v == "":
        return None
    f = _num(v, "object", line, path)
    if not (np.isfinite(f) and f == int(f) and 1 <= f <= MAX_OBJECT_ID):
        raise InputError(f"{path}, line {line}: object id '{v}' is not a whole number from 1 to {MAX_OBJECT_ID} "
                         "(0 is background): give each object a positive integer id, or leave the cell empty")
    return int(f)


def _bool(v: str, line: int, path) -> int:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "y", "t", "1.0"):
        return 1
    if s in ("0", "false", "no", "n", "f", "0.0", "-1"):
        return 0
    raise InputError(f"{path}, line {line}: 'positive' must be 1/0 or true/false, got '{v}'")


def read_prompts(points_csv, boxes_csv, spatial_shape, image=None, taken=None) -> dict[int, dict[int, dict]]:
    """Parse the tables into {object_id: {z: {"points", "labels", "box"}}} for a
    ``spatial_shape`` (y, x) or (z, y, x) image; z is 0 for 2D. Validates
    every coordinate against the image. image: (path, shape as read, rgb) of
    the image (:func:`image_header`), for messages. taken: {object id: slices} of masks given elsewhere
    (``--masks``): prompts without an id are numbered above them, negative points may go with a mask."""
    ndim = len(spatial_shape)
    shape3 = (1, *spatial_shape) if ndim == 2 else tuple(spatial_shape)
    pts: list[tuple[int, float, float, int, int | None, int]] = []  # z, y, x, pos, obj, line
    if points_csv is not None:
        cols, rows = read_table(points_csv, ndim, "points", image)
        for line, r in rows:
            c = [_num(r[k], k, line, points_csv) for k in cols]
            z, y, x = (0.0, *c) if ndim == 2 else c
            pos = _bool(r["positive"], line, points_csv) if r.get("positive", "") != "" else 1
            oid = _object_id(r.get("object", ""), line, points_csv)
            _check_zyx(z, y, x, shape3, ndim, points_csv, line, "point")
            pts.append((int(round(z)), y, x, pos, oid, line))
    boxes: list[tuple[int, np.ndarray, int | None]] = []
    if boxes_csv is not None:
        cols, rows = read_table(boxes_csv, ndim, "boxes", image)
        for line, r in rows:
            c = [_num(r[k], k, line, boxes_csv) for k in cols]
            z, b = (0.0, c) if ndim == 2 else (c[0], c[1:])
            for yy, xx in ((b[0], b[1]), (b[2], b[3])):
                _check_zyx(z, yy, xx, shape3, ndim, boxes_csv, line, "box corner")
            oid = _object_id(r.get("object", ""), line, boxes_csv)
            boxes.append((int(round(z)), np.array(b, np.float32), oid))
    if not pts and not boxes:
        raise InputError("no prompts: the points/boxes tables have no rows")

    objects: dict[int, dict[int, dict]] = {}
    taken = taken or {}
    used = {p[4] for p in pts if p[4] is not None} | {b[2] for b in boxes if b[2] is not None} | set(taken)
    next_id = max(used, default=0) + 1
    unnumbered = sum(1 for p in pts if p[4] is None and p[3]) + sum(1 for b in boxes if b[2] is None)
    if next_id + unnumbered - 1 > MAX_OBJECT_ID:
        raise InputError(f"object id {max(used)} leaves no ids for the {unnumbered} prompts without one: "
                         "number them, or use smaller ids")

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
            hits = sorted({o for o, zs in objects.items() if z in zs} | {o for o, zs in taken.items() if z in zs})
            if not hits:
                raise InputError(f"{points_csv}, line {line}: negative point on z={z} but no object has a positive prompt there")
            for o in hits:
                slot(o, z)["points"].append((y, x))
                objects[o][z]["labels"].append(0)
    for oid, zs in objects.items():
        for z, s in zs.items():
            if s["box"] is None and not any(s["labels"]) and z not in taken.get(oid, ()):
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

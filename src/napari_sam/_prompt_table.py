"""A prompt table's cells and which of its columns are read (for ``io.read_prompts``): a table is read whole
or refused, never partly. Nothing in it is passed over in silence:

* a time column (``t``, ``time``, ``frame``) is refused: napari-sam reads one 2D image or one (z, y, x)
  stack, which has no time point to check the column against, so even a ``t`` shared by every row could
  put the prompts on another time point than the image's;
* so is a column napari-sam does not read (a typo'd ``postive`` would make every point positive, a box
  cannot be negative), a cell under a column without a name, and a cell beyond the header's columns;
* napari's own export is read as it is: ``index`` (its row number) is ignored, ``axis-0,axis-1[,axis-2]``
  are the coordinates, and ``positive`` is napari-sam's prompt layer's feature. Other features of a
  layer (napari writes each as a column) are refused like any unknown column.

Errors are ``io.InputError``.
"""

from __future__ import annotations

import csv
import difflib
from itertools import zip_longest
from pathlib import Path

OPTIONAL = {"points": ("positive", "object"), "boxes": ("object",)}
IGNORED = ("index",)  # napari's export numbers its rows
TIME = ("t", "time", "frame")


def _input_error(msg: str):
    from .io import InputError

    return InputError(msg)


def read_table(path, ndim: int, kind: str, image=None) -> tuple[list[str], list[tuple[int, dict]]]:
    """(coordinate columns, [(line number, {column: cell})]) of a ``kind`` ("points" or "boxes") table
    for a ``ndim``-D image. image: (path, shape as read, rgb), for messages."""
    fields, rows = _read_rows(path)
    _refuse_time(fields, rows, ndim, path, image)
    cols = _coord_columns(fields, rows, ndim, kind, path, image)
    _refuse_unknown(fields, cols, ndim, kind, path)
    return cols, rows


def _read_rows(path) -> tuple[list[str], list[tuple[int, dict]]]:
    p = Path(path)
    if not p.is_file():
        raise _input_error(f"prompt table not found: {p}")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
            reader = csv.reader(f)
            fields = [c.strip() for c in next(reader, [])]
            if not any(fields):
                raise _input_error(f"{p} is empty: expected a header row such as 'z,y,x,positive,object'")
            twice = sorted({c for c in fields if c and fields.count(c) > 1})
            if twice:
                raise _input_error(f"{p}: the header names column '{twice[0]}' more than once; keep one")
            # (a blank line is skipped; line numbers are the file's)
            return fields, [(reader.line_num, _row(fields, cells, reader.line_num, p)) for cells in reader if cells]
    except UnicodeDecodeError:
        raise _input_error(f"{p} is not a text CSV file") from None


def _row(fields, cells, line: int, path) -> dict:
    """{column: cell}; a cell missing at the end of a row is empty, a cell without a column name must be."""
    row = {}
    for k, (name, cell) in enumerate(zip_longest(fields, cells), start=1):
        cell = (cell or "").strip()
        if name:
            row[name] = cell
        elif cell:
            where = "beyond the header's columns" if name is None else "under a column without a name"
            raise _input_error(f"{path}, line {line}: cell {k} ('{cell}') is {where}: name its column in the "
                               f"header ({','.join(fields)}), or delete the cell")
    return row


def _refuse_time(fields, rows, ndim: int, path, image) -> None:
    col = next((c for c in fields if c.lower() in TIME), None)
    if col is None:
        return
    name = image[0] if image is not None else "the image"
    what = f"{name} is read as one {'(z, y, x) stack' if ndim == 3 else '2D (y, x) image'}, with no time points"
    values = sorted({r.get(col, "") for _, r in rows}, key=_numeric_first)
    if len(values) == 1:
        v = values[0]
        raise _input_error(f"{path}: column '{col}' puts every row on time point {v}, but {what}: if {name} is "
                           f"time point {v}, delete the '{col}' column; if not, save time point {v} as its own "
                           "stack and segment that")
    shown = ", ".join(values[:5]) + (", ..." if len(values) > 5 else "")
    raise _input_error(f"{path}: column '{col}' has {len(values)} time points ({shown}), but {what}: save each "
                       f"time point as its own stack (NAME.tif) and its rows, without the '{col}' column, as "
                       "NAME.csv in one folder, then segment them in one run: napari-sam segment *.tif --points "
                       "TABLES-FOLDER --out LABELS-FOLDER")


def _numeric_first(v: str):
    try:
        return 0, float(v), v
    except ValueError:
        return 1, 0.0, v


def _coord_columns(fields, rows, ndim: int, kind: str, path, image=None) -> list[str]:
    """The coordinate columns for a ``ndim``-D image; refused when the table has more axes than the image."""
    named, napari = _coord_names(ndim, kind)
    want = ",".join(named) + ("" if kind == "boxes" else f" (or napari's {','.join(napari)})")
    extra = [c for c in fields
             if (c == "z" and ndim == 2) or (kind == "points" and c.startswith("axis-") and c not in napari)]
    if extra:
        have = [c for c in fields if c in ("z", "y", "x", "y0", "x0", "y1", "x1") or c.startswith("axis-")]
        raise _input_error(f"{path} has columns {','.join(have)} but {_image_phrase(image, ndim)}: give the columns "
                           f"{want} of a {ndim}D image{_rgb_hint(image, ndim)}{_axis0_hint(have, rows, named)}")
    for cols in (named, napari):
        if all(c in fields for c in cols):
            return cols
    hint = ""
    if image is not None and ndim == 3 and not image[2] and min(image[1]) <= 4 and image[1][-1] == min(image[1]):
        hint = (f" (its last axis has {image[1][-1]}: channels? napari-sam reads (z, y, x) stacks and RGB; save one "
                "channel as its own TIFF)")
    raise _input_error(f"{path}: header {','.join(fields)} lacks the columns {want}: "
                       f"{_image_phrase(image, ndim)}{hint}")


def _coord_names(ndim: int, kind: str) -> tuple[list[str], list[str]]:
    if kind == "points":
        return (["z", "y", "x"] if ndim == 3 else ["y", "x"]), [f"axis-{i}" for i in range(ndim)]
    named = (["z"] if ndim == 3 else []) + ["y0", "x0", "y1", "x1"]
    return named, named


def _axis0_hint(have, rows, named) -> str:
    """napari's export of a layer with one axis more (a time series): what to do when axis-0 is one value."""
    napari = [f"axis-{i}" for i in range(len(named) + 1)]
    if have != napari:
        return ""
    values = {r.get("axis-0", "") for _, r in rows}
    if len(values) != 1:
        return f" (axis-0 has {len(values)} values: a time series? save each time point as its own stack and table)"
    return (f" (axis-0 is {values.pop()} on every row: if the image is that time point or slice, delete axis-0 and "
            f"rename {','.join(napari[1:])} to {','.join(named)})")


def _refuse_unknown(fields, cols, ndim: int, kind: str, path) -> None:
    known = [*cols, *OPTIONAL[kind], *IGNORED]
    unknown = [c for c in fields if c and c not in known]
    if not unknown:
        return
    named, napari = _coord_names(ndim, kind)
    reads = ",".join(named) + ("" if kind == "boxes" else f" (or napari's {','.join(napari)})")
    reads += "".join(f", {c}" for c in OPTIONAL[kind]) + " (and napari's index, ignored)"
    names = ", ".join(f"'{c}'" for c in unknown)
    close = [f"'{m[0]}' for '{c}'" for c in unknown
             for m in [difflib.get_close_matches(c.lower(), [*named, *OPTIONAL[kind]], n=1, cutoff=0.6)] if m]
    why = f" (did you mean {', '.join(close)}?)" if close else ""
    if kind == "boxes" and "positive" in unknown:
        why = " (a box is always a positive prompt: to mark what to leave out, give negative points in --points)"
    it = "it" if len(unknown) == 1 else "them"
    raise _input_error(f"{path}: napari-sam does not read column{'s' if len(unknown) > 1 else ''} {names}{why}; "
                       f"a {kind} table has {reads}: rename or delete {it}")


def _image_phrase(image, ndim: int) -> str:
    if image is None:
        return f"the image is {ndim}D"
    path, shape, rgb = image
    return f"{path} was read as a {ndim}D{' RGB' if rgb else ''} image {tuple(shape)}"


def _rgb_hint(image, ndim: int) -> str:
    if image is None or not image[2] or ndim != 2:
        return ""
    return (f"; if it is a stack of {image[1][-1]} slices, not colour, save it as a grayscale stack (ImageJ "
            "hyperstack, or tifffile's photometric='minisblack') or as 16-bit")

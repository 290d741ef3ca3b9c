"""The labels TIFF that ``segment`` writes and its ``.prompts.json`` record: where they go (checked before
anything runs) and how they are written (as a pair, whole or not at all). Errors are ``io.InputError``."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np

from ._leftovers import fresh_name, sweep
from .core.lazy import image_stem


def _input_error(msg: str):
    from .io import InputError

    return InputError(msg)


def label_dtype(max_id: int):
    return np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32


def sidecar_path(path) -> Path:
    """The record beside labels ``path``: its name without the image suffix (``.tif``, ``.tiff``,
    ``.ome.tif``, ``.ome.tiff``; only that: ``2024.01.15_s1.tif`` -> ``2024.01.15_s1.prompts.json``)."""
    p = Path(path)
    return p.with_name(image_stem(p) + ".prompts.json")


def check_folder(folder: Path, what: str) -> None:
    """``folder`` (to hold ``what``) exists, is a folder and can be written into."""
    if not folder.exists():
        raise _input_error(f"{what}: folder {folder} does not exist; create it or choose another --out")
    if not folder.is_dir():
        raise _input_error(f"{what}: {folder} is a file, not a folder; choose another --out")
    probe: list[Path] = []
    try:  # a file made and removed: what permissions, read-only mounts and /proc allow
        _temp_beside(folder / "probe", probe)
    except OSError as e:
        raise _input_error(f"{what}: cannot write into {folder} ({e.strerror or e}); choose another --out") from None
    finally:
        for t in probe:
            t.unlink(missing_ok=True)


def check_output(path, overwrite: bool, inputs=()) -> Path:
    """Labels ``path`` (a .tif/.tiff) and its record can be written: not an input image (even with
    ``overwrite``), not existing unless ``overwrite``, not a folder, in a writable folder. First, what killed
    runs left in the folder is cleaned up (``_leftovers.sweep``), so labels a killed run had moved aside are
    back where they were when it is decided whether they exist."""
    p = Path(path)
    if not p.name.lower().endswith((".tif", ".tiff")):
        raise _input_error(f"--out {p}: the labels are written as a TIFF; give a name ending in .tif or .tiff")
    for line in sweep(p.parent):
        print(f"napari-sam: note: {line}", file=sys.stderr)
    side = sidecar_path(p)
    for q in (p, side):
        for image in inputs:
            if q.exists() and Path(image).exists() and os.path.samefile(q, image):
                raise _input_error(f"--out {p} would replace the input image {image}: choose another --out "
                                   "(--overwrite never replaces an input)")
        if q.is_dir():
            raise _input_error(f"{q} is a folder: choose another --out")
        if q.exists() and not overwrite:
            raise _input_error(f"{q} exists; pass --overwrite to replace it, or choose another --out")
    check_folder(p.parent, f"--out {p}")
    return p


def write_labels_atomic(path, labels: np.ndarray, record: dict) -> None:
    """Write labels (tifffile) and the JSON record beside them as a pair: both go to temporary files first,
    then replace their targets; if that fails or is interrupted (Ctrl-C, SIGTERM), the labels and record
    are put back as they were. A record being replaced is taken away before its labels are, so that a
    process killed outright in between leaves labels without a record (never taken as done: ``_cli_resume``),
    not new labels beside the old record. New files get the mode any new file gets (0666 less the umask); a
    replaced file keeps its mode. An OSError becomes an InputError naming the file."""
    import tifffile

    p = Path(path)
    side = sidecar_path(p)
    made: list[Path] = []  # temporary files, removed at the end whatever happens
    target = side
    try:
        rec = _temp_beside(side, made)
        rec.write_text(json.dumps(record, indent=1, default=_jsonable))
        target = p
        lab = _temp_beside(p, made)
        tifffile.imwrite(lab, labels, compression="zlib")
        backup = _keep_old(p, made)
        old_rec = _keep_old(side, made) if side.is_file() else None
        try:
            if old_rec is not None:
                side.unlink(missing_ok=True)
            os.replace(lab, p)
            target = side
            os.replace(rec, side)
        except BaseException:  # the labels and record as they were
            if backup is not None:
                os.replace(backup, p)
            else:  # there was none: whatever is there now is this call's
                p.unlink(missing_ok=True)
            if old_rec is not None:
                os.replace(old_rec, side)
            elif not rec.exists():  # the new record got there: it goes with the labels
                side.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise _input_error(f"cannot write {target}: {e.strerror or e}; nothing was written (choose another "
                           "--out)") from None
    finally:
        for t in made:
            t.unlink(missing_ok=True)


def _temp_beside(target: Path, made: list) -> Path:
    """An empty new file beside ``target`` with the mode ``target`` has, or else a new file's (the umask
    applies, as to any file created)."""
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else None
    while True:
        tmp = fresh_name(target, "new")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        made.append(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        return tmp


def _keep_old(target: Path, made: list) -> Path | None:
    """A second name for an existing ``target`` (a hard link; a rename where links are not supported), to
    put it back if the pair cannot be completed; None when there is none."""
    if not target.exists():
        return None
    backup = fresh_name(target, "old")
    try:
        os.link(target, backup)
    except OSError:
        os.replace(target, backup)
    made.append(backup)
    return backup




def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)

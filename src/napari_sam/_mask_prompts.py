"""``napari-sam segment --masks LABELS``: objects drawn or corrected by hand, as prompts.

A labels file of the image's (z, y, x) shape (TIFF or .npy; 0 is background): each label on each slice
where it is becomes a mask prompt of the object with that id, kept as it is on that slice. With
``--propagate`` each object is carried through z from those slices and between them (a few annotated
slices -> every slice: ``core.propagate``); with ``--every-slice`` its one annotated slice is applied to
every slice. Points and boxes of the ``--points`` / ``--boxes`` tables with the same ``object`` id prompt
the same object (on a slice with both, SAM redraws the mask with the points); prompts there without an
id get ids above the labels'. Everything is checked before the model loads; refusals say what to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import MAX_OBJECT_ID, InputError

SUFFIXES = (".tif", ".tiff", ".npy")


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"--masks {path} not found" if not path.exists() else
                         f"--masks {path} is a folder; with one image give its labels file")
    if not path.name.lower().endswith(SUFFIXES):
        raise InputError(f"--masks {path}: give the labels as a TIFF (.tif, .tiff) or a .npy file")
    try:
        if path.name.lower().endswith(".npy"):
            return np.load(path, mmap_mode="r", allow_pickle=False)
        import tifffile

        return tifffile.imread(path)
    except Exception as e:  # tifffile and numpy raise many kinds for a file that is not theirs
        raise InputError(f"cannot read --masks {path} ({type(e).__name__}: {e})") from None


def read_masks(path, spatial_shape) -> dict[int, dict[int, np.ndarray]]:
    """{object id: {z: (y, x) bool mask}} of the labels file ``path`` for an image of ``spatial_shape``
    ((y, x) or (z, y, x); z is 0 for 2D). InputError with what to do for a file that cannot serve."""
    path = Path(path)
    arr = _read(path)
    want = tuple(spatial_shape)
    if arr.shape != want and tuple(s for s in arr.shape if s != 1) == tuple(s for s in want if s != 1):
        arr = arr.reshape(want)  # e.g. ImageJ's (z, 1, y, x): singleton axes only
    if arr.shape != want:
        raise InputError(f"--masks {path} has shape {arr.shape}, the image {want}: the labels must have the "
                         "image's (z, y, x) shape (no channel axis)")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr).all()
        if not finite or not (arr == np.round(arr)).all():
            raise InputError(f"--masks {path} holds {'NaN or infinite' if not finite else 'fractional'} values "
                             f"({arr.dtype}): labels are whole numbers; save the labels layer (integers)")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"--masks {path} is {arr.dtype}: labels are whole numbers; save the labels layer")
    arr = arr.reshape((1, *want) if len(want) == 2 else want)
    out: dict[int, dict[int, np.ndarray]] = {}
    for z in range(arr.shape[0]):
        sl = np.asarray(arr[z])
        if (sl < 0).any():
            raise InputError(f"--masks {path} has negative labels (e.g. {sl.min():g} on z={z}): objects have ids "
                             "from 1; 0 is background")
        for i in np.unique(sl[sl > 0]):
            if i > MAX_OBJECT_ID:
                raise InputError(f"--masks {path}: label {i:g} on z={z} is above {MAX_OBJECT_ID}, the largest id "
                                 "the labels written can hold: relabel the objects")
            out.setdefault(int(i), {})[z] = sl == i
    if not out:
        raise InputError(f"--masks {path} holds no objects (every pixel is 0): draw the objects, or leave out --masks")
    return out


def add_masks(prompts: dict, masks: dict) -> dict:
    """``prompts`` ({id: {z: {"points", "labels", "box"}}}, from the tables) with each mask of ``masks``
    ({id: {z: mask}}) added to its object and slice."""
    out = {oid: {z: dict(s) for z, s in zs.items()} for oid, zs in prompts.items()}
    for oid, zs in masks.items():
        for z, m in zs.items():
            out.setdefault(oid, {}).setdefault(z, {"points": [], "labels": [], "box": None})["mask"] = m
    return {oid: dict(sorted(out[oid].items())) for oid in sorted(out)}


def check_mode(args) -> None:
    """``--masks`` prompts other slices with ``--propagate`` or ``--every-slice`` only."""
    if getattr(args, "masks", None) and not (args.propagate or args.every_slice):
        raise InputError("--masks are kept as they are on their slices; they segment the other slices with "
                         "--propagate (each object carried through z from its masks) or --every-slice")


def check_not_out(masks, out) -> None:
    """The labels written are never the ``--masks`` file, even with ``--overwrite``."""
    out, masks = Path(out), Path(masks)
    if out.exists() and masks.exists() and out.resolve() == masks.resolve():
        raise InputError(f"--out {out} would replace the --masks labels {masks}: choose another --out "
                         "(--overwrite never replaces an input)")


def for_record(prompts: dict) -> dict:
    """``prompts`` for the JSON record: a mask as its pixel count and content hash, not its pixels."""
    from .core.cache import slice_signature

    def slot(s):
        if "mask" not in s:
            return s
        m = np.asarray(s["mask"], bool)
        return {**s, "mask": {"pixels": int(m.sum()), "xxh3": slice_signature(np.packbits(m))}}

    return {oid: {z: slot(s) for z, s in zs.items()} for oid, zs in prompts.items()}


def read_all(points, boxes, masks, spatial_shape, image=None) -> dict:
    """The prompts of one image: the ``--points`` / ``--boxes`` tables (``io.read_prompts``) and the
    ``--masks`` labels, each of them optional but not all."""
    from .io import read_prompts

    drawn = read_masks(masks, spatial_shape) if masks else {}
    tables = read_prompts(points, boxes, spatial_shape, image, taken={o: set(zs) for o, zs in drawn.items()}) \
        if points or boxes else {}
    return add_masks(tables, drawn)

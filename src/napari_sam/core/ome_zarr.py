"""OME-Zarr images: which array of a ``.zarr`` group is the image, and what its axes are.

OME-NGFF keeps, in the group's attributes, ``multiscales[0]``: its ``datasets`` (full resolution first) and
its ``axes``. Where they are:

* 0.4 and earlier (zarr v2): ``.zattrs`` -> ``multiscales``; 0.3 gives the axes as plain names
  (``["t", "c", "z", "y", "x"]``), 0.1/0.2 give none (always t, c, z, y, x);
* 0.5 (zarr v3): ``zarr.json`` attributes -> ``ome`` -> ``multiscales``;
* bioformats2raw's layout (``bioformats2raw.layout`` at the top): the first image is the group ``0``.

The axes become tifffile's letters (time T, channel C, space z/y/x Z/Y/X, anything else Q), so the TIFF
rules apply (``core.lazy.axes_problem``: several channels, or several time points beside z, are refused
with what to do), with the axes trusted as the file gives them. Axes of one element are dropped as tifffile
drops them from a TIFF, lazily (:class:`Squeezed`): a (1, 1, z, y, x) image is a (z, y, x) stack, and a
(t, 1, 1, y, x) time series of 2D images reads its time points as slices, as a TYX TIFF does.
"""

from __future__ import annotations

import numpy as np

SPACE = {"z": "Z", "y": "Y", "x": "X"}
TYPES = {"time": "T", "channel": "C"}
BY_NAME = {"t": "T", "c": "C", **SPACE}


def multiscale(group) -> tuple[object, str, dict] | None:
    """(the group holding the image, its path from the top, its ``multiscales[0]``), or None when ``group``
    (a zarr group) carries no OME-NGFF multiscales metadata a reader can use."""
    where, meta = "", _ome(group)
    if "multiscales" not in meta and "bioformats2raw.layout" in meta:
        try:
            group, where = group["0"], "0/"
        except KeyError:
            return None
        meta = _ome(group)
    try:
        ms = meta["multiscales"][0]
        ms["datasets"][0]["path"]
    except (TypeError, KeyError, IndexError):
        return None
    return group, where, ms


def _ome(group) -> dict:
    """A zarr node's OME attributes: under ``ome`` from 0.5 on, else the attributes themselves."""
    attrs = dict(group.attrs)
    return attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs


def axes_letters(ms: dict, ndim: int) -> str | None:
    """The axes of ``multiscales[0]`` as tifffile's letters (``"TCZYX"``), None when it gives none (a
    0.1/0.2 array of 5 dimensions is TCZYX)."""
    axes = ms.get("axes")
    if axes is None:
        return "TCZYX" if ndim == 5 else None
    letters = []
    for axis in axes:
        name, kind = _name(axis).lower(), str(axis.get("type", "") if isinstance(axis, dict) else "").lower()
        if kind in TYPES:
            letters.append(TYPES[kind])
        elif kind in ("space", ""):
            letters.append((SPACE if kind else BY_NAME).get(name, "Q"))
        else:
            letters.append("Q")
    return "".join(letters)


def _name(axis) -> str:
    return str(axis.get("name", "") if isinstance(axis, dict) else axis)


def open_image(p, group):
    """(array, rgb): the image of the OME-Zarr group ``group`` (opened from ``p``), a (z, y, x) stack or
    (y, x) image read one slice at a time; None when the group has no OME metadata (read as any zarr group).
    ValueError saying what to do when its axes say channels, time beside z, or more than three dimensions."""
    from .lazy import axes_problem, tiff_layout

    found = multiscale(group)
    if found is None:
        return None
    image, where, ms = found
    path = str(ms["datasets"][0]["path"])
    try:
        a = image[path]
    except KeyError:
        a = None
    if not hasattr(a, "shape"):
        raise ValueError(f"{p}: its OME-Zarr metadata names '{where + path}' as the full-resolution array, but "
                         "the store has no array there: the store is incomplete, or its metadata is wrong")
    shape = tuple(int(n) for n in a.shape)
    axes = axes_letters(ms, len(shape))
    if axes is None:  # the array as it is, as a zarr array without metadata is read
        return a, tiff_layout(shape, a.dtype)[1]
    read = f"zarr.open({str(p)!r})[{where + path!r}]"
    if len(axes) != len(shape):
        raise ValueError(f"{p}: its OME-Zarr metadata gives {len(axes)} axes ({axes}) for an array of shape {shape}"
                         f" ({read}): the metadata does not fit the array: fix the axes in its .zattrs (zarr v2) "
                         "or zarr.json (zarr v3)")
    problem = axes_problem(p, axes, shape, read=read)
    if problem:
        raise ValueError(problem)
    view = Squeezed(a, [i for i, n in enumerate(shape[:-2]) if n == 1])
    if view.ndim > 3:  # e.g. an axis napari-sam does not know (Q), of more than one element, beside z
        unknown = ", ".join(repr(_name(ax)) for ax, letter in zip(ms.get("axes") or (), axes) if letter == "Q")
        index = ", ".join("0" for _ in shape[:-3])
        raise ValueError(f"{p} has {view.ndim} axes of more than one element (its axes, as the file gives them, are "
                         f"{axes}, shape {shape}{'; Q is ' + unknown if unknown else ''}): napari-sam segments one "
                         f"(z, y, x) stack: save the stack to segment as its own TIFF, e.g. tifffile.imwrite("
                         f"'stack0.tif', {read}[{index}]), or pass that array to napari_sam.propagate")
    return view, False


class Squeezed:
    """Array ``a`` without its axes ``drop`` (each of one element), without reading it: ``view[z]`` reads
    only that slice of ``a``."""

    def __init__(self, a, drop):
        self._a, self._drop = a, frozenset(drop)
        self.shape = tuple(n for i, n in enumerate(a.shape) if i not in self._drop)
        self.dtype = a.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            k = next(j for j, i in enumerate(index) if i is Ellipsis)
            index = index[:k] + (slice(None),) * (self.ndim - len(index) + 1) + index[k + 1:]
        if len(index) > self.ndim:
            raise IndexError(f"too many indices ({len(index)}) for an array of shape {self.shape}")
        rest = iter(index + (slice(None),) * (self.ndim - len(index)))
        return np.asarray(self._a[tuple(0 if i in self._drop else next(rest) for i in range(len(self._a.shape)))])

    def __len__(self):
        return self.shape[0]

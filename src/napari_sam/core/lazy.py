"""Stacks that are read one slice at a time.

napari-sam only ever reads ``stack[z]`` for the slices it works on (see
``core.cache.embed_cached``, ``core.precompute``, ``core.propagate``), so a
stack larger than the memory works as long as it arrives as a lazy array:
a dask array, a zarr array, a ``numpy.memmap``, or what :func:`open_stack`
returns for a file:

* ``.tif``/``.tiff``: memory-mapped when the pixels are stored uncompressed
  and contiguously, else read through tifffile's zarr view (one page or
  tile at a time);
* ``.zarr``: an array; an OME-Zarr image (``core.ome_zarr``: its full-resolution
  array, its axes read as a TIFF's are, singleton time and channel axes dropped);
  another group's array "0" (else its first); ``.npy`` (memory-mapped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LazyStack", "open_stack", "image_stem", "largest"]

# longest first: "a.ome.tif" is the image "a"
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".ome.zarr", ".zarr", ".npy")


def image_stem(path) -> str:
    """An image file's name without its image suffix, and only that (``2024.01.15_s1.ome.tif`` and
    ``2024.01.15_s1.ome.zarr`` -> ``2024.01.15_s1``): what files made for it (its labels' record, its embedding cache) are named after."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class LazyStack:
    """A (z, y, x[, c]) stack behind a file. ``data[z]`` reads one slice.

    data: array-like supporting ``shape``, ``dtype`` and ``data[z]``.
    rgb: the last axis is colour. was_2d: the file held one 2D image (z = 1 here).
    kind: "memmap", "zarr" or "array" (how it is read).
    """

    data: object
    rgb: bool
    was_2d: bool
    kind: str
    path: Path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


class _AddZ:
    """A 2D image seen as a one-slice stack, without reading it."""

    def __init__(self, a):
        self._a = a
        self.shape = (1, *a.shape)
        self.dtype = a.dtype
        self.ndim = a.ndim + 1

    def __getitem__(self, index):
        if isinstance(index, tuple):
            head, rest = index[0], index[1:]
        else:
            head, rest = index, ()
        if head not in (0, -1):
            raise IndexError(f"slice {head} is out of range for a 2D image (one slice)")
        return np.asarray(self._a[rest] if rest else self._a[...])

    def __len__(self):
        return 1


def largest(a, block_bytes: int = 16 << 20):
    """The largest value of array ``a`` (None when empty), reading a lazy array (zarr, dask...) a block
    of leading-axis slices at a time: a labels array on disk is never read whole into memory."""
    if 0 in tuple(a.shape):
        return None
    if isinstance(a, np.ndarray) or a.ndim < 2:
        return np.asarray(a).max()
    if hasattr(a, "dask"):  # dask reduces chunk by chunk
        return a.max().compute()
    per = int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize
    step = max(1, block_bytes // max(per, 1))
    chunk = getattr(a, "chunks", None)
    if isinstance(chunk, tuple) and chunk and isinstance(chunk[0], int):  # zarr: whole chunks per read
        step = max(chunk[0], step // chunk[0] * chunk[0])
    return max(np.asarray(a[i : i + step]).max() for i in range(0, a.shape[0], step))


def tiff_layout(shape, dtype, photometric=None) -> tuple[bool, bool]:
    """(planar, rgb) for pixels of ``shape`` / ``dtype`` (a TIFF's ``photometric``, if any): rgb, the
    image is colour; planar, its colour is stored as separate planes (..., 3|4, y, x), to be moved last.
    The one rule for ``open_stack`` and ``napari_sam.io``.

    A TIFF declared RGB with its colour in planes is colour only when 8-bit: tifffile writes any
    (3|4, y, x) array that way by default, so a 16-bit "planar RGB(A)" file is almost always a z-stack
    of 3 or 4 slices, and napari shows it as one."""
    declared_rgb = photometric is not None and int(photometric) == 2
    if declared_rgb and len(shape) >= 3 and shape[-1] not in (3, 4) and shape[-3] in (3, 4):
        return (True, True) if np.dtype(dtype) == np.uint8 else (False, False)
    if declared_rgb:
        return False, True
    return False, len(shape) in (3, 4) and shape[-1] in (3, 4) and np.dtype(dtype) == np.uint8 and shape[-2] > 4


MAX_GUESSED_CHANNELS = 4  # a 3D TIFF named CYX with more planes than this is read as a z-stack


def axes_problem(path, axes: str, shape, rgb: bool = False, read: str | None = None) -> str | None:
    """Why the image ``path``, whose file names its axes ``axes`` (tifffile's letters: T, Z, C, Y, X, S, Q for
    unknown), is not one (z, y, x) stack or (y, x) image, and what to do; None when it is, or when the file does
    not say.

    read: Python that reads the file's array, for the example in the message, when the file states its axes
    itself (OME-Zarr: ``zarr.open('a.zarr')['0']``); None for a TIFF, read with ``tifffile.imread``.

    Without this a channel axis (C), or a time axis (T) beside a z of more than one slice, was read as z:
    channels segmented and propagated through as if they were slices. An RGB image's axes are left alone
    (tifffile names an RGB stack written with ``imagej=True`` CYXS), and so is a 3D TIFF named CYX with more
    than ``MAX_GUESSED_CHANNELS`` planes: tifffile names any 3D array CYX when it writes it with ``imagej=True``
    or as ``.ome.tif`` without axes, which is how z-stacks are saved from Python. OME-Zarr's axes are not a
    guess: its channels are channels."""
    axes, shape = str(axes or "").upper(), tuple(int(v) for v in shape)
    if rgb or len(axes) != len(shape):
        return None
    said = f"(its axes, as the file gives them, are {axes}, shape {shape})"
    guessed = read is None
    read = f"tifffile.imread({str(path)!r})" if guessed else read

    def index(axis: str) -> str:  # the axis' first element, and the first of any other non-spatial one of one
        zero = [a == axis or (a not in "ZYX" and n == 1) for a, n in zip(axes, shape)]
        return "[" + ", ".join("0" if z else ":" for z in zero[: max(i for i, z in enumerate(zero) if z) + 1]) + "]"

    def size(axis: str) -> int:
        return shape[axes.index(axis)] if axis in axes else 1

    n = size("C")
    if guessed and axes == "CYX" and n > MAX_GUESSED_CHANNELS:
        # tifffile names a plain 3D array CYX when it writes it with imagej=True, or as .ome.tif, without
        # axes: a z-stack saved from Python, far more often than an image of more than 4 channels
        return None
    if n > 1:
        planes = ("; if these planes are z slices, not channels, save them with the axes ZYX (tifffile: "
                  "imagej=True, metadata={'axes': 'ZYX'})") if guessed and axes == "CYX" else ""
        api = "" if guessed else f", or pass that array to napari_sam.{'propagate' if size('Z') > 1 else 'segment'}"
        return (f"{path} has {n} channels {said}: napari-sam segments one channel, a (y, x) image or (z, y, x) "
                f"stack: save the channel to segment as its own TIFF, e.g. tifffile.imwrite('channel0.tif', "
                f"{read}{index('C')}){api}{planes}")
    if size("T") > 1 and size("Z") > 1:
        api = "" if guessed else ", or pass that array to napari_sam.propagate"
        return (f"{path} is a time series of {size('T')} stacks {said}: napari-sam segments one "
                f"(z, y, x) stack: save each time point as its own TIFF, e.g. tifffile.imwrite('t0.tif', "
                f"{read}{index('T')}, imagej=True, metadata={{'axes': 'ZYX'}}), with its own prompt table{api}")
    return None


def _is_rgb(shape, dtype) -> bool:
    return tiff_layout(shape, dtype)[1]


def _wrap(a, rgb, kind, path) -> LazyStack:
    spatial = len(a.shape) - (1 if rgb else 0)
    if spatial == 2:
        return LazyStack(_AddZ(a), rgb, True, kind, path)
    if spatial == 3:
        return LazyStack(a, rgb, False, kind, path)
    raise ValueError(f"{path} has shape {tuple(a.shape)}: expected a 2D (y, x) or 3D (z, y, x) image, "
                     "optionally with an RGB last axis")


def open_stack(path) -> LazyStack:
    """Open an image file without reading its pixels (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        a = np.load(p, mmap_mode="r")
        return _wrap(a, _is_rgb(a.shape, a.dtype), "memmap", p)
    if suffix == ".zarr" or (p.is_dir() and ((p / "zarr.json").exists() or (p / ".zarray").exists() or (p / ".zgroup").exists())):
        return _wrap(*_open_zarr(p), "zarr", p)
    if suffix in (".tif", ".tiff"):
        return _open_tiff(p)
    raise ValueError(f"{p}: napari-sam reads stacks from .tif/.tiff, .zarr and .npy files")


def _open_zarr(p: Path):
    import zarr

    from .ome_zarr import open_image

    z = zarr.open(str(p), mode="r")
    if hasattr(z, "shape"):
        return z, _is_rgb(z.shape, z.dtype)
    ome = open_image(p, z)  # OME-Zarr: its full-resolution array, by its axes
    if ome is not None:
        return ome
    keys = sorted(z.array_keys())
    if not keys:
        raise ValueError(f"{p} is a zarr group without arrays")
    a = z["0"] if "0" in keys else z[keys[0]]
    return a, _is_rgb(a.shape, a.dtype)


def _open_tiff(p: Path) -> LazyStack:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            photometric = series.pages[0].photometric if len(series.pages) else None
            shape, dtype, axes = series.shape, series.dtype, series.axes
    except Exception as e:  # tifffile raises many kinds for non-TIFF input
        raise ValueError(f"cannot read {p} as a TIFF image ({type(e).__name__}: {e})") from None
    planar, rgb = tiff_layout(shape, dtype, photometric)
    problem = axes_problem(p, axes, shape, rgb)
    if problem:
        raise ValueError(problem)
    if planar:  # one colour image stored as planes: read whole, colour last (as napari_sam.io does)
        return _wrap(np.moveaxis(np.asarray(tifffile.imread(p)), -3, -1), True, "array", p)
    try:
        return _wrap(tifffile.memmap(p, mode="r"), rgb, "memmap", p)
    except ValueError:  # compressed or scattered pixels
        import zarr

        return _wrap(zarr.open(tifffile.imread(p, aszarr=True), mode="r"), rgb, "zarr", p)

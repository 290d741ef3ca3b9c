"""``napari-sam embed``: fill a stack's on-disk embedding cache.

    napari-sam embed STACK.tif --out CACHE.zarr [--model NAME_OR_PATH] [--device auto]
                     [--normalize percentile] [--z-range A:B] [--start Z] [--batch N] [--overwrite]

Run it where the encoder is fast (a GPU machine), then open the cache on the
laptop that does the clicking. The stack is read one slice at a time (TIFF,
zarr or .npy; memory-mapped where possible), so stacks larger than the memory
work. An interrupted run resumes where it stopped when the same command is
run again; a cache made for another image, model or settings is refused.

Also the ``--embeddings`` cache ``segment`` reads (``open_embeddings``: checked against the image, model
and settings before anything runs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ._cli_interrupt import Interrupted, as_interrupted
from .core.models import model_help
from .io import InputError


def add_embed_parser(subparsers) -> None:
    from .cli import add_int8_option

    e = subparsers.add_parser("embed", help="compute the SAM embedding of every slice of a stack into a zarr cache")
    e.add_argument("image", help="2D or 3D (z, y, x) .tif/.tiff, .zarr or .npy; RGB last axis allowed")
    e.add_argument("--out", required=True, help="embedding cache to write or resume (a .zarr folder)")
    e.add_argument("--model", default="embedded", help=model_help())
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_int8_option(e)
    e.add_argument("--normalize", default="percentile", choices=["percentile", "minmax", "none"],
                   help="intensity normalisation (must match the one used when segmenting)")
    e.add_argument("--input-scale", type=float, default=None,
                   help="magnification before the embedded model's encoder (default the model's, 2.0; 'segment "
                        "--embeddings' uses the one the cache was made at)")
    e.add_argument("--z-range", help="A:B, embed slices A..B-1 only")
    e.add_argument("--start", type=int, help="slice to start from, then outward (default: the first of the range)")
    e.add_argument("--batch", type=int, help="slices per encoder call (default: 1 on the CPU, as many as fit on a GPU)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing cache instead of resuming it")


def _z_range(text, nz):
    if not text:
        return (0, nz)
    try:
        a, b = (int(v) if v else None for v in text.split(":"))
    except ValueError:
        raise InputError(f"--z-range must look like A:B (e.g. 3:20), got '{text}'") from None
    a, b = (0 if a is None else a), (nz if b is None else b)
    if not 0 <= a < b <= nz:
        raise InputError(f"--z-range {text} is not within the stack's slices 0..{nz} (A < B)")
    return (a, b)


def run_embed(args) -> int:
    from .core.cache_folder import store_kind
    from .core.disk_cache import CacheMismatch
    from .core.precompute import disk_cache_for, precompute
    from .core.predictor import SlicePredictor
    from .io import open_lazy

    vol, stack = open_lazy(args.image)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder name ending in .zarr")
    if args.batch is not None and args.batch < 1:
        raise InputError(f"--batch must be 1 or more, got {args.batch}")
    nz = vol.shape[0]
    lo, hi = _z_range(args.z_range, nz)
    start = lo if args.start is None else args.start
    if not lo <= start < hi:
        raise InputError(f"--start {start} is outside the slices {lo}..{hi - 1} being embedded")
    from ._cli_checks import check_input_scale, check_normalize
    from .cli import _load

    check_normalize(args.normalize, stack, args.image)

    model = _load(args.model, args.device, args.int8)
    check_input_scale(args.input_scale)
    pred = SlicePredictor(model, normalize=args.normalize, input_scale=args.input_scale)
    channel_axis = -1 if vol.rgb else None
    t0 = time.time()
    resuming = store_kind(out) == "cache" and not args.overwrite
    try:
        disk, first_encoded = disk_cache_for(out, pred, stack, start=start, channel_axis=channel_axis,
                                             overwrite=args.overwrite)
    except CacheMismatch as e:
        raise InputError(f"{e} (--overwrite replaces it)") from None
    except FileExistsError as e:  # an image or other data there: never replaced
        raise InputError(f"--out {e}") from None
    except (Interrupted, KeyboardInterrupt) as e:  # (a store whose creation was cut short is started again)
        e = as_interrupted(e)
        print(f"napari-sam: {e.name} before a slice was added to {out}: run the same command again to "
              f"{'resume' if resuming else 'start'}", file=sys.stderr)
        return e.exit_code
    if resuming:
        print(f"resuming {out}: {len(disk.done())} of {nz} slices already there", file=sys.stderr)
    gen = precompute(pred, stack, start=start, z_range=(lo, hi), disk=disk, channel_axis=channel_axis,
                     batch=args.batch)
    encoded = 0
    try:
        encoded = first_encoded + _drain(gen, hi - lo)
    except (Interrupted, KeyboardInterrupt) as e:
        e = as_interrupted(e)
        print(f"napari-sam: {e.name}; {len(disk.done())} of {nz} slices are saved in {out}: run the same "
              "command again to resume", file=sys.stderr)
        return e.exit_code
    except InputError as e:  # a slice that cannot be read: what is done is kept
        raise InputError(f"{e}; the {len(disk.done())} slices done are kept in {out}: run the same command "
                         "again once the image reads, to resume") from None
    except OSError as e:  # read-only, disk full: what is done is kept
        print(f"napari-sam: error: could not write to {out} ({e.strerror or e}); the {len(disk.done())} slices "
              "done are kept there: make room (or use another --out) and run the same command again to resume",
              file=sys.stderr)
        return 1
    mb = disk.nbytes_on_disk() / 1e6
    print(f"wrote {out}: {hi - lo} slices ({encoded} encoded, {hi - lo - encoded} already there), "
          f"{mb:.0f} MB, {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


def _drain(gen, total: int) -> int:
    """Run the precompute generator to the end with a progress bar on stderr; the slices encoded."""
    from .cli import SliceBar

    bar, done = SliceBar("embedding"), 0
    try:
        while True:
            p = next(gen)
            done += 1
            bar.show(done, total, f"z={p.index} {p.source}")
    except StopIteration as stop:
        return int(stop.value or 0)
    finally:
        bar.close()


def embeddings_scale(path):
    """The magnification an embedding cache was made at (None: unreadable; ``open_embeddings`` says why)."""
    from .core.disk_cache import CacheMismatch, DiskCache

    try:
        return DiskCache.open(path, readonly=True).settings.get("input_scale")
    except (CacheMismatch, FileNotFoundError):
        return None


def open_embeddings(path, model, stack, channel_axis, input_scale=None, normalize="percentile"):
    """The ``DiskCache`` at ``path``, checked against this image, model and settings."""
    from .core.cache import slice_signature
    from .core.cache_folder import store_kind
    from .core.disk_cache import CacheMismatch, DiskCache, settings_for
    from .core.predictor import SlicePredictor
    from .io import InputError

    p = Path(path)
    if not p.is_dir():
        raise InputError(f"--embeddings {p}: no embedding cache there; make one with: napari-sam embed IMAGE --out {p}")
    if store_kind(p) == "unfinished":
        raise InputError(f"--embeddings {p}: an embedding cache whose making was cut short before its first slice "
                         f"was saved; run napari-sam embed IMAGE --out {p} again")
    pred = SlicePredictor(model, normalize=normalize, input_scale=input_scale)
    settings = settings_for(pred, stack.shape, stack.dtype, channel_axis=channel_axis)
    try:
        disk = DiskCache.open(p, settings)
        disk.check_image(stack, slice_signature)
    except CacheMismatch as e:
        raise InputError(f"--embeddings: {e}") from None
    return disk

"""``napari-sam find``: every object of one slice, or of a whole stack, without prompts (``core.automatic``,
``core.find_stack``).

    napari-sam find IMAGE --out FOUND.tif [--z Z] [--every N] [--model NAME_OR_PATH] [--device auto]
                    [--spacing PX] [--min-score S] [--dark] [--overwrite]
    napari-sam find IMAGE IMAGE... --out FOLDER [...]

Writes labels of the image's shape with the objects found on slice Z (of a stack; the middle one unless
``--z`` says) and nothing elsewhere, and a ``.prompts.json`` record beside them (each object's seed point,
SAM's predicted IoU and stability). They are a ``--masks`` input, so a whole stack needs no prompt at all:

    napari-sam find stack.tif --z 12 --out found.tif
    napari-sam segment stack.tif --masks found.tif --propagate --out labels.tif

and for many stacks, every image and output checked before anything runs, the model loaded once::

    napari-sam find data/*.tif --out found/
    napari-sam segment data/*.tif --masks found/ --propagate --out labels/

With ``--every N`` a stack is searched on slice Z and on every N-th slice outward from it, each time
outside the objects already found, and what is found is propagated: the output is the stack's labels::

    napari-sam find data/*.tif --every 4 --out labels/
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .core.models import model_help
from .io import InputError


def add_find_parser(subparsers) -> None:
    from .cli import add_int8_option

    f = subparsers.add_parser("find", help="find every object on one slice without prompts (SAM's automatic masks)")
    f.add_argument("image", nargs="+", help="2D or 3D (z, y, x) .tif/.tiff, .zarr or .npy; RGB last axis allowed; "
                                            "several images: see --out")
    f.add_argument("--out", required=True, help="labels .tif/.tiff to write, of the image's shape (a .prompts.json "
                                                "record is written beside it); several images: a folder, "
                                                "IMAGE-NAME.tif each (a --masks folder for 'segment')")
    f.add_argument("--z", type=int, help="the slice of a stack to look on (default: each stack's middle one)")
    f.add_argument("--every", type=int, default=None, metavar="N",
                   help="a stack: look on slice Z and on every N-th slice outward from it, and propagate the "
                        "objects found through the stack (each search only outside the objects already found): "
                        "writes the whole stack's labels (4 finds nuclei 3-5 slices deep; 1 looks on every slice)")
    f.add_argument("--model", default="embedded", help=model_help())
    f.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_int8_option(f)
    f.add_argument("--normalize", default="percentile", choices=["percentile", "minmax", "none"],
                   help="intensity normalisation before the encoder")
    f.add_argument("--input-scale", type=float, default=None,
                   help="magnification before the embedded model's encoder (default the model's, 2.0)")
    f.add_argument("--spacing", type=float, default=None,
                   help="pixels between grid seed points (default 6; on a CPU coarser on slices over 384x384, "
                        "e.g. 16 at 1024x1024: --spacing 6 finds more small objects there, in about twice the time)")
    f.add_argument("--min-score", type=float, default=None, help="lowest SAM predicted IoU kept (default 0.5)")
    f.add_argument("--dark", action="store_true",
                   help="objects darker than their background, or no background (brightfield, EM): seed points "
                        "everywhere instead of only on bright parts, at several times the cost")
    f.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _settings(args):
    from .core.automatic import AutoSettings

    settings = {"spacing": args.spacing, "min_brightness": 0.0 if args.dark else AutoSettings.min_brightness}
    if args.min_score is not None:
        settings["min_score"] = args.min_score
    try:
        settings = AutoSettings(**settings)
        settings.check()
    except ValueError as e:
        raise InputError(str(e).replace("spacing=", "--spacing ").replace("min_score=", "--min-score ")) from None
    return settings


def _plan(args) -> list[tuple]:
    """[(image path, LazyStack, SliceReader, z, labels path)], every image checked against its slice and output
    before anything runs; InputError (naming the image, with several) at the first problem."""
    from ._cli_batch import _check_distinct, _check_out_folder
    from ._cli_checks import check_normalize
    from ._labels_file import check_output
    from .core.lazy import image_stem
    from .io import open_lazy

    images = [Path(p) for p in args.image]
    out = str(args.out)
    batch = len(images) > 1 or Path(out).is_dir() or out.endswith(("/", "\\"))
    if batch:
        _check_distinct(images)
        folder = _check_out_folder(args)
    jobs = []
    for p in images:
        try:
            vol, stack = open_lazy(p)
            nz = vol.shape[0]
            if vol.was_2d and args.z not in (None, 0):
                raise InputError(f"{p} is one 2D image: leave out --z")
            if vol.was_2d and args.every is not None:
                raise InputError(f"{p} is one 2D image: leave out --every (it is for stacks)")
            z = nz // 2 if args.z is None else args.z
            if not 0 <= z < nz:
                raise InputError(f"--z {args.z} is not a slice of {p} (0..{nz - 1})")
            target = folder / f"{image_stem(p)}.tif" if batch else Path(args.out)
            if not batch or folder.exists():  # a new folder: _check_out_folder checked where it goes
                target = check_output(target, args.overwrite, inputs=images)
            check_normalize(args.normalize, stack, p)
        except InputError as e:
            raise InputError(f"{p.name}: {e}" if batch else str(e)) from None
        jobs.append((p, vol, stack, z, target))
    if batch:
        folder.mkdir(exist_ok=True)
    return jobs


def run_find(args) -> int:
    from ._cli_checks import check_input_scale
    from ._cli_interrupt import Interrupted, as_interrupted
    from .cli import _load
    from .core.predictor import SlicePredictor

    settings = _settings(args)
    if args.every is not None and args.every < 1:
        raise InputError(f"--every {args.every}: give how many slices apart to look for objects, 1 or more")
    jobs = _plan(args)
    check_input_scale(args.input_scale)
    model = _load(args.model, args.device, args.int8)
    pred = SlicePredictor(model, normalize=args.normalize, input_scale=args.input_scale)
    done = []
    for k, job in enumerate(jobs):
        head = f"[{k + 1}/{len(jobs)}] {job[0].name}: " if len(jobs) > 1 else ""
        try:
            (_find_stack if args.every is not None else _find_one)(pred, model, settings, args, *job, head)
        except (Interrupted, KeyboardInterrupt) as e:
            if not done:
                raise
            e = as_interrupted(e)
            print(f"napari-sam: {e.name}; {len(done)} of {len(jobs)} images were written ({', '.join(done)}); "
                  f"the others were not: run them again", file=sys.stderr)
            return e.exit_code
        done.append(str(job[4]))
    return 0


def _record(args, path, model, settings, **more) -> dict:
    return {"command": "find", "image": str(path), **more, "model": {"name": model.name, "sha256": model.checksum},
            "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__}}


def _find_stack(pred, model, settings, args, path, vol, stack, z, out, head="") -> None:
    """Find the objects of the whole stack (``--every``) and write its labels, with their record, to ``out``."""
    from ._labels_file import label_dtype, write_labels_atomic
    from .cli import SliceBar
    from .core.find_stack import finding_in_stack
    from .core.propagate_records import run_to_end

    t0 = time.time()
    bar = SliceBar("slices looked on")
    try:
        gen = finding_in_stack(pred, stack, settings, every=args.every, z=z,
                               channel_axis=-1 if vol.rgb else None)
        found = run_to_end(gen, lambda p: bar.show(p.done, p.total, f"z={p.z} {p.stage}"))
    finally:
        bar.close()
    ids = sorted(found.objects)
    labels = found.labels.astype(label_dtype(max(ids, default=1)))
    record = _record(args, path, model, settings, every=args.every, looked_on=found.looked, objects=[
        {"id": k, "slice": found.objects[k][0], "seed": list(found.objects[k][1]),
         "predicted_iou": round(found.objects[k][2], 4)} for k in ids])
    write_labels_atomic(out, labels, record)
    print(f"{head}wrote {out}: {len(ids)} objects in the stack, looked on {len(found.looked)} slices "
          f"(z={', '.join(map(str, found.looked))}), {time.time() - t0:.1f}s", file=sys.stderr)


def _find_one(pred, model, settings, args, path, vol, stack, z, out, head="") -> None:
    """Find the objects of slice ``z`` and write them, with their record, to ``out``."""
    from ._labels_file import label_dtype, write_labels_atomic
    from .cli import SliceBar
    from .core.automatic import finding
    from .core.propagate_records import run_to_end

    t0 = time.time()
    pred.set_image(stack[z], channel_axis=-1 if vol.rgb else None)
    bar = SliceBar("seed points")
    try:
        found = run_to_end(finding(pred, settings), lambda p: bar.show(*p, f"z={z}"))
    finally:
        bar.close()
    nz, spatial = vol.shape[0], vol.shape[1:3]
    labels = np.zeros((*(() if vol.was_2d else (nz,)), *spatial), label_dtype(max(found.n, 1)))
    (labels if vol.was_2d else labels[z])[...] = found.labels
    record = _record(args, path, model, settings, slice=None if vol.was_2d else z, seed_points=found.n_seeds, objects=[
        {"id": k + 1, "seed": [float(v) for v in found.seeds[k]], "predicted_iou": round(float(s), 4),
         "stability": round(float(st), 4)} for k, (s, st) in enumerate(zip(found.scores, found.stability))])
    write_labels_atomic(out, labels, record)
    where = "" if vol.was_2d else f" on z={z}{' (the middle slice; --z chooses)' if args.z is None else ''}"
    print(f"{head}wrote {out}: {found.n} objects{where}, {found.n_seeds} seed points, {time.time() - t0:.1f}s",
          file=sys.stderr)
    if not vol.was_2d and found.n and not head:
        print(f"through z: napari-sam segment {path} --masks {out} --propagate --out LABELS.tif", file=sys.stderr)

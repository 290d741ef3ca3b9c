"""``napari-sam segment`` over several images: one model, every input checked first.

    napari-sam segment a.tif b.tif c.tif --points prompts/ --out labels/ --propagate

* ``--out`` is a folder (created if missing; also with one image when
  ``--out`` is an existing folder or ``--points`` a folder); each image writes
  ``<out>/<image name>.tif`` and its ``.prompts.json`` record.
* ``--points`` / ``--boxes``: one CSV applied to every image (objects that
  stay put from one acquisition to the next), or a folder holding
  ``<image name>.csv`` for each image.
* ``--embeddings``: a folder of ``<image name>.zarr`` caches made by
  ``napari-sam embed``.

The image name is the file's name without its image suffix (``core.lazy.image_stem``: ``a.ome.tif``,
``a.tif`` and ``a.zarr`` are all ``a``), as the record and the cache of one image are named; two images of
one batch with one name (or names differing only in case) are refused.

Before the model is loaded, every image's header, every prompt table (against
that image's shape), every output path and cache is checked, and once it is
loaded, each cache against its image and the model; the first problem is
reported (exit 2) and nothing is written. Then images run one at a
time; each output appears whole or not at all, and an interruption (Ctrl-C:
exit 130, SIGTERM: 143) or an image that cannot be read or written (exit 2)
leaves the images already done and nothing half-written, and says which image
it stopped at. Running the same command again finishes the batch: an image
whose labels and record are already in ``--out`` from the same pixels,
prompts, model and options is kept, not redone (``_cli_resume``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._cli_interrupt import Interrupted, as_interrupted
from .core.lazy import image_stem
from .io import InputError


def is_batch(args) -> bool:
    """Several images, or one written into a folder / prompted from a folder (a glob that matched one file)."""
    folders = [Path(p).is_dir() for p in (args.points, args.boxes, args.masks) if p]  # (a cache is itself a folder)
    out = str(args.out)
    return len(args.image) > 1 or Path(out).is_dir() or out.endswith(("/", "\\")) or any(folders)


@dataclass
class Job:
    image: Path
    prompts: dict
    z_range: tuple | None
    out: Path
    embeddings: Path | None
    earlier: dict | None = None  # the record of labels already at ``out`` (kept if this run would make them)


def plan(args) -> list[Job]:
    """Every image checked against its prompts, output and cache; InputError at the first problem."""
    from ._cli_checks import check_normalize, check_propagation
    from ._cli_resume import earlier_record
    from ._mask_prompts import check_mode, check_not_out, read_all
    from .io import check_output, image_header

    if not args.points and not args.boxes and not args.masks:
        raise InputError("give prompts: --points POINTS.csv|FOLDER, --boxes BOXES.csv|FOLDER and/or --masks FOLDER")
    check_mode(args)
    images = [Path(p) for p in args.image]
    _check_distinct(images)
    out = _check_out_folder(args)
    jobs = []
    for p in images:
        where = f"{p.name}: "
        try:
            shape, rgb = image_header(p)
            if args.normalize == "none":
                from .core.lazy import open_stack

                check_normalize(args.normalize, open_stack(p).data, "this image")
            spatial = shape[:len(shape) - rgb]
            pts, bxs = _per_image(args.points, p, "--points"), _per_image(args.boxes, p, "--boxes")
            msk = _per_image(args.masks, p, "--masks", (".tif", ".tiff", ".npy"))
            prompts = read_all(pts, bxs, msk, spatial, (p, shape, rgb))
            z_range = check_propagation(args, spatial, prompts)
            target = out / f"{image_stem(p)}.tif"
            earlier = None
            if msk is not None:
                check_not_out(msk, target)
            if out.exists():
                check_output(target, True, inputs=images)  # never an input image, nor a folder
                earlier = None if args.overwrite else earlier_record(target)
                if earlier is None:
                    check_output(target, args.overwrite, inputs=images)
            emb = None
            if args.embeddings:
                emb = Path(args.embeddings) / f"{image_stem(p)}.zarr"
                if not emb.is_dir():
                    raise InputError(f"no embedding cache {emb}{_old_name(emb, p, '.zarr')}; make one with: "
                                     f"napari-sam embed {p} --out {emb}")
        except InputError as e:
            raise InputError(where + str(e)) from None
        jobs.append(Job(p, prompts, z_range, target, emb, earlier))
    return jobs


def _check_distinct(images: list[Path]) -> None:
    """No two images write the same labels or the same record, nor read the same table or cache from a folder
    (``a.tif`` and ``a.ome.tif`` are both ``a``); names are compared ignoring case, as macOS and Windows disks
    do, where ``A.tif`` would replace ``a.tif``."""
    from .io import sidecar_path

    written: dict[str, Path] = {}
    for p in images:
        labels = f"{image_stem(p)}.tif"
        for name in (labels, sidecar_path(labels).name):
            first = written.get(name.lower())
            if first is not None:
                same = "" if first.name == p.name else (f" (outputs are named after the image without its suffix: "
                                                        f"{first.name} is {image_stem(first)}, {p.name} is "
                                                        f"{image_stem(p)})")
                raise InputError(f"{first} and {p} would both write {name}{same}: rename one of them, or segment "
                                 "them in separate runs with different --out folders; nothing was written")
            written[name.lower()] = p


def _check_out_folder(args) -> Path:
    """``--out`` as a folder: an existing one, or a new one that can be made (not named like a TIFF)."""
    from ._labels_file import check_folder
    from .core.lazy import TIFF_SUFFIXES

    out = Path(args.out)
    why = "with several images" if len(args.image) > 1 else "with a folder of prompt tables"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; {why} --out is a folder (IMAGE-NAME.tif is written there)")
    if not out.exists():
        if out.name.lower().endswith(TIFF_SUFFIXES) and not str(args.out).endswith(("/", "\\")):
            raise InputError(f"--out {out} names a TIFF, but {why} --out is a folder (IMAGE-NAME.tif is written "
                             "there): give a folder name")
        check_folder(out.parent, f"--out {out}")
    return out


def _per_image(path, image: Path, option: str, suffixes=(".csv",)) -> Path | None:
    """A prompt file for ``image``: the file itself, or ``<folder>/<image name><suffix>`` (the first of
    ``suffixes`` there)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        found = [p / f"{image_stem(image)}{s}" for s in suffixes if (p / f"{image_stem(image)}{s}").is_file()]
        if not found:
            f = p / f"{image_stem(image)}{suffixes[0]}"
            raise InputError(f"{option} folder {p} has no {f.name} for this image"
                             f"{_old_name(f, image, suffixes[0])}")
        return found[0]
    if not p.is_file():
        raise InputError(f"{option} {p} not found")
    return p


def _old_name(path: Path, image: Path, suffix: str) -> str:
    """A hint when ``path``'s folder holds the file under the name earlier versions used (``a.ome.csv`` for
    ``a.ome.tif``: Path.stem)."""
    old = path.with_name(image.stem + suffix)
    if old != path and old.exists():
        return f" ({old.name} is there: files for {image.name} are now named {path.name}; rename it)"
    return ""


def run_batch(args) -> int:
    from ._cli_checks import check_input_scale, check_memory
    from .cli import _load, segment_volume
    from .io import read_image

    check_input_scale(args.input_scale, args.embeddings)
    jobs = plan(args)
    model = _load(args.model, args.device, args.int8)
    check_memory(args, model)
    _check_caches(args, jobs, model)
    kept = {id(j) for j in _kept(args, jobs, model)}
    Path(args.out).mkdir(exist_ok=True)
    t0, done = time.time(), []  # jobs run in order: the one being run is jobs[len(done)]
    try:
        for k, job in enumerate(jobs):
            if id(job) in kept:
                print(f"[{k + 1}/{len(jobs)}] {job.image.name}: {job.out} is there from an earlier run of this "
                      "command (same image, prompts, model and options): kept (--overwrite redoes it)",
                      file=sys.stderr)
                done.append(job)
                continue
            vol = read_image(job.image)
            msg = segment_volume(args, job.image, vol, job.prompts, job.z_range, model, job.out, job.embeddings)
            done.append(job)
            print(f"[{k + 1}/{len(jobs)}] {job.image.name}: {msg}", file=sys.stderr)
    except (Interrupted, KeyboardInterrupt) as e:
        e = as_interrupted(e)
        where = f" during {jobs[len(done)].image.name}" if len(done) < len(jobs) else ""
        print(f"napari-sam: {e.name}{where}; {_so_far(args, jobs, done)}", file=sys.stderr)
        return e.exit_code
    except InputError as e:
        raise InputError(f"{jobs[len(done)].image.name}: {str(e).rstrip('.')}; "
                         f"{_so_far(args, jobs, done, failed=True)}") from None
    except OSError as e:  # not foreseen as an InputError: said as main says it, with how far the batch got
        print(f"napari-sam: error: {jobs[len(done)].image.name}: {e.filename + ': ' if e.filename else ''}"
              f"{e.strerror or e}; {_so_far(args, jobs, done, failed=True)}", file=sys.stderr)
        return 1
    again = f" ({len(kept)} kept from an earlier run)" if kept else ""
    print(f"{len(jobs)} images in {time.time() - t0:.1f}s -> {args.out}{again}", file=sys.stderr)
    return 0


def _check_caches(args, jobs: list[Job], model) -> None:
    """Every ``--embeddings`` cache against its image (a few slices read), the model and the settings, once
    the model is known and before anything is written: InputError naming the image."""
    from ._cli_resume import asked_scale
    from ._cli_embed import open_embeddings
    from .core.lazy import open_stack
    from .io import SliceReader

    for job in jobs:
        if job.embeddings is None:
            continue
        try:
            lazy = open_stack(job.image)
            open_embeddings(job.embeddings, model, SliceReader(lazy.data, job.image), -1 if lazy.rgb else None,
                             asked_scale(args, model, job.embeddings), args.normalize)
        except (ValueError, FileNotFoundError) as e:  # InputError, or what open_stack says of the image
            raise InputError(f"{job.image.name}: {str(e).rstrip('.')}; nothing was written") from None


def _kept(args, jobs: list[Job], model) -> list[Job]:
    """The jobs whose outputs an earlier run of this command made (see ``_cli_resume``); InputError for
    outputs made otherwise, as for any existing output (nothing is written yet)."""
    from ._cli_resume import differs
    from .io import read_image

    kept = []
    for job in jobs:
        if job.earlier is None:
            continue
        try:
            why = differs(job.earlier, args, job.image, read_image(job.image), job.prompts, job.z_range, model,
                          job.embeddings)
        except InputError as e:
            raise InputError(f"{job.image.name}: {str(e).rstrip('.')}; nothing was written") from None
        if why:
            raise InputError(f"{job.image.name}: {job.out} exists and was not made by this command (its record "
                             f"differs in: {why}); pass --overwrite to replace it, or choose another --out; nothing "
                             "was written")
        kept.append(job)
    return kept


def _so_far(args, jobs: list[Job], done: list[Job], failed: bool = False) -> str:
    """How far a batch that stopped at ``jobs[len(done)]`` got, and how to finish it (``failed``: by an error
    about that image, said before this)."""
    names = ", ".join(j.image.name for j in done[:3]) + (" …" if len(done) > 3 else "")
    if len(done) == len(jobs):
        return f"all {len(jobs)} images are done in {args.out}"
    finished = (f"{len(done)} of {len(jobs)} images are done in {args.out} ({names})" if done
                else f"none of the {len(jobs)} images is done")
    stop, rest = jobs[len(done)].image.name, len(jobs) - len(done) - 1
    stopped = f"{stop}{f' and the {rest} after it' if rest else ''} not written"
    kept = " (the images done are kept, not redone)" if done else ""
    how = (f"once that is put right, run the same command again{kept}" if failed
           else f"run the same command again to do {'them' if rest else 'it'}{kept}")
    return f"{finished}; {stopped}: {how}"

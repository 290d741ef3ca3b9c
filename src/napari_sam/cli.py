"""napari-sam from a shell: the same core as the widget.

    napari-sam segment IMAGE --points P.csv [--boxes B.csv] [--masks M.tif] --out LABELS.tif
                       [--model NAME_OR_PATH] [--device auto] [--overwrite]
                       [--propagate [--z-range A:B] [--memory] | --every-slice [--z-range A:B]]
                       [--refine] [--embeddings CACHE.zarr] [--normalize percentile|minmax|none]
    napari-sam segment IMAGE IMAGE... --points P.csv|DIR [--boxes B.csv|DIR] --out DIR [...]
    napari-sam demo [--out DIR] [--no-viewer]
    napari-sam embed STACK.tif --out CACHE.zarr [--model NAME_OR_PATH]
    napari-sam find IMAGE --out FOUND.tif [--z Z] [--model NAME_OR_PATH]

Exit status: 0 on success; 2 with a one-line reason on stderr for bad input
(or an output that cannot be written), and nothing written; 1 with a one-line
reason for any other error of the file system; 130 for Ctrl-C and 143 for
SIGTERM, with what was finished and how to go on (``_cli_interrupt``).

Only the standard library is imported here before ``main`` runs: a Ctrl-C while the rest loads is
reported as any other, not as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._cli_interrupt import Interrupted, as_interrupted, signals_interrupt


def _parser() -> argparse.ArgumentParser:
    from .core.models import model_help

    ap = argparse.ArgumentParser(prog="napari-sam", description="Segment Anything for microscopy, headless.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("segment", help="segment objects from point/box prompts in a 2D image or (z, y, x) stack")
    s.add_argument("image", nargs="+", help="2D or 3D (z, y, x) TIFF (or .zarr, .npy), RGB last axis allowed; "
                                            "several images: see --out, --points and --boxes")
    s.add_argument("--points", help="CSV: z,y,x (y,x for 2D) or axis-0,axis-1[,axis-2]; optional positive, object. "
                                    "Several images: one CSV for all of them, or a folder of IMAGE-NAME.csv")
    s.add_argument("--boxes", help="CSV: z,y0,x0,y1,x1 (y0,x0,y1,x1 for 2D); optional object. Several images: as --points")
    s.add_argument("--masks", help="labels (TIFF or .npy) of the image's shape, drawn or corrected by hand: each label "
                                   "on each slice is a mask prompt of that object, kept as it is (with --propagate or "
                                   "--every-slice). Several images: a folder of IMAGE-NAME.tif")
    s.add_argument("--out", required=True, help="labels .tif/.tiff to write (a .prompts.json record is written "
                                                "beside it); several images: a folder, IMAGE-NAME.tif each")
    s.add_argument("--model", default="embedded", help=model_help())
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_int8_option(s)
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.add_argument("--propagate", action="store_true", help="propagate each object through z from its prompted slices")
    s.add_argument("--every-slice", action="store_true",
                   help="apply each object's prompts to every slice (of --z-range), for objects that stay put; "
                        "slices the object is not on (too little contrast compared with the slice it was prompted "
                        "on) stay empty. Each object's prompts must be on one slice")
    s.add_argument("--z-range", help="A:B, slices A..B-1 (with --propagate or --every-slice)")
    s.add_argument("--memory", action="store_true",
                   help="with --propagate and a SAM 2 / 2.1 checkpoint: follow objects with SAM 2's memory of the "
                        "slices already segmented (its video predictor) instead of prompting each slice from the "
                        "previous one")
    s.add_argument("--input-scale", default=None,
                   help="magnify slices before the embedded model's encoder: 'auto' (default) keeps the model's 2.0 "
                        "(best for nuclei) unless the prompted objects measure a median radius of 18 px or more, then "
                        "1.0 (better, and faster, for cell bodies and large nuclei); or a number. With --embeddings, "
                        "the default is the magnification they were made at")
    s.add_argument("--refine", action="store_true", help="snap boundaries to the image and drop fragments not connected to the prompt")
    s.add_argument("--embeddings", help="embedding cache of this image made by 'napari-sam embed' (same model): "
                   "slices in it cost no encoder time; slices encoded here are added to it. Several images: a "
                   "folder of IMAGE-NAME.zarr caches")
    s.add_argument("--normalize", default="percentile", choices=["percentile", "minmax", "none"],
                   help="intensity normalisation before the encoder (as 'napari-sam embed --normalize'; an embedding "
                        "cache serves the same one only)")
    d = sub.add_parser("demo", help="synthetic nuclei stack -> prompts -> labels + overlay, then open napari")
    d.add_argument("--out", default="napari-sam-demo", help="folder for stack.tif, points.csv, labels.tif, overlay.png")
    d.add_argument("--no-viewer", action="store_true", help="do not open napari even when a display exists")
    d.add_argument("--device", default="auto")
    from ._cli_embed import add_embed_parser
    from ._cli_find import add_find_parser

    add_embed_parser(sub)
    add_find_parser(sub)
    return ap


def _fail(msg: str) -> int:
    print(f"napari-sam: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    with signals_interrupt() as release:
        try:
            return _main(argv, release)
        except (Interrupted, KeyboardInterrupt) as e:  # what a command did not report itself: nothing written
            e = as_interrupted(e)
            print(f"napari-sam: {e.name}; nothing was written", file=sys.stderr)
            return e.exit_code


def _main(argv, release) -> int:
    from .io import InputError

    args = _parser().parse_args(argv)
    try:
        if args.cmd == "segment":
            return _segment(args)
        if args.cmd == "demo":
            from ._demo import run_demo

            release()  # its viewer's event loop: Ctrl-C and SIGTERM as napari handles them
            return run_demo(Path(args.out), viewer=not args.no_viewer, device=args.device)
        if args.cmd == "embed":
            from ._cli_embed import run_embed

            return run_embed(args)
        if args.cmd == "find":
            from ._cli_find import run_find

            return run_find(args)
    except InputError as e:
        return _fail(str(e))
    except OSError as e:  # a file that could not be read or written (what is foreseen is an InputError)
        _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return 1
    return 0


def _segment(args) -> int:
    from ._cli_batch import is_batch, run_batch

    if is_batch(args):
        return run_batch(args)
    from ._cli_checks import check_input_scale, check_memory, check_normalize, check_propagation
    from ._mask_prompts import check_mode, check_not_out, read_all
    from .io import InputError, check_output, read_image

    if not args.points and not args.boxes and not args.masks:
        raise InputError("give prompts: --points POINTS.csv, --boxes BOXES.csv and/or --masks LABELS.tif")
    check_mode(args)
    out = check_output(args.out, args.overwrite, inputs=args.image)
    if args.masks:
        check_not_out(args.masks, out)
    check_input_scale(args.input_scale, args.embeddings)
    vol = read_image(args.image[0])
    check_normalize(args.normalize, vol.data, args.image[0])
    prompts = read_all(args.points, args.boxes, args.masks, vol.spatial_shape, (args.image[0], vol.shape, vol.rgb))
    z_range = check_propagation(args, vol.spatial_shape, prompts)
    model = _load(args.model, args.device, args.int8)
    check_memory(args, model)
    earlier = out.exists()
    try:
        print(segment_volume(args, args.image[0], vol, prompts, z_range, model, out), file=sys.stderr)
    except (Interrupted, KeyboardInterrupt) as e:  # the labels and record are written last, as a pair
        e = as_interrupted(e)
        cache = f"; the slices encoded were added to {args.embeddings}" if args.embeddings else ""
        print(f"napari-sam: {e.name}; nothing was written{f' ({out} is as it was)' if earlier else ''}{cache}: "
              "run the same command again to segment", file=sys.stderr)
        return e.exit_code
    return 0


def segment_volume(args, image_path, vol, prompts, z_range, model, out, embeddings=None) -> str:
    """Segment one checked image as ``args`` say and write ``out`` with its record; a one-line summary."""
    import numpy as np

    from ._cli_resume import asked_scale, record_for
    from .io import label_dtype, write_labels_atomic

    embeddings = args.embeddings if embeddings is None else embeddings
    t0 = time.time()
    channel_axis = -1 if vol.rgb else None
    scale = asked_scale(args, model, embeddings)  # default: "auto" for the embedded model, SAM's canvas for ViTs
    auto, cache, note = scale == "auto", None, ""
    if auto:  # (never with embeddings: check_input_scale refused that before anything ran)
        from .core.cache import EmbeddingCache
        from .core.magnify import stack_scale

        cache = EmbeddingCache(max_bytes=1 << 62)  # the slice measured at 2x is not encoded again at 2x
        scale, radius = stack_scale(model, vol.data, prompts, normalize=args.normalize, channel_axis=channel_axis,
                                    cache=cache)
        note = f"; --input-scale auto: prompted objects' median radius {radius:.1f} px -> {scale:g}x"
    from ._cli_embed import open_embeddings

    disk = open_embeddings(embeddings, model, vol.data, channel_axis, scale, args.normalize) if embeddings else None
    if args.propagate or args.every_slice:
        from .core.propagate import propagate_labels

        bar = SliceBar("propagating" if args.propagate else "every slice")
        try:
            labels = propagate_labels(
                vol.data, prompts, model=model, z_range=z_range, normalize=args.normalize, refine=args.refine,
                channel_axis=channel_axis,
                disk=disk, input_scale=scale, cache=cache, method="memory" if args.memory else "slices",
                through_z=args.every_slice, progress=bar.update,
            )
        finally:
            bar.close()
    else:
        from ._cli_slices import segment_prompted_slices

        labels = segment_prompted_slices(vol.data, prompts, model, refine=args.refine, channel_axis=channel_axis,
                                         disk=disk, input_scale=scale, cache=cache, normalize=args.normalize)
    labels = labels.astype(label_dtype(max(prompts)))
    if vol.is_2d:
        labels = labels[0]
    record = record_for(args, image_path, vol, prompts, z_range, model, scale, auto)
    found = set(np.unique(labels[labels > 0]).tolist())
    missing = [o for o in prompts if o not in found]
    lost = (f"; no pixels for object {', '.join(map(str, missing[:10]))}{' …' if len(missing) > 10 else ''} "
            "(SAM found nothing there, or another object scored higher on every pixel)" if missing else "")
    if disk is not None and disk.write_error:
        lost += f"; slices encoded here were not added to {embeddings} ({disk.write_error}): it was only read"
    write_labels_atomic(out, labels, record)  # the last step: once it is done, the image is done
    return f"wrote {out} ({len(found)} of {len(prompts)} objects, {labels.dtype}, {time.time() - t0:.1f}s{note}){lost}"


def _mode(args) -> str:
    """What ``segment`` did, for the output's record."""
    if args.propagate:
        return "propagate (SAM 2 memory)" if args.memory else "propagate"
    return "every slice" if args.every_slice else "per-slice"


class SliceBar:
    """A progress bar in slices on stderr (a terminal only): ``show`` for any generator's records, ``update``
    for propagation ``Progress`` records."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def show(self, done: int, total: int, postfix: str) -> None:
        if self.bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with napari
                return
            self.bar = tqdm(total=total, desc=self.desc, unit="slice", file=sys.stderr,
                            disable=not sys.stderr.isatty())
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(postfix)

    def update(self, p) -> None:
        self.show(p.done, p.total, f"z={p.z} {p.stage}, {len(p.objects)} object(s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_int8_option(p) -> None:
    p.add_argument("--int8", default="auto", choices=["auto", "on", "off"],
                   help="the embedded model's image encoder in int8 on the CPU: about twice as fast, as accurate "
                        "(auto: on x86 CPUs with AVX2 or AVX-512); off: fp32, as its weights are")


def _load(name, device, int8="auto"):
    from .core.models import ModelError, load_model
    from .io import InputError

    try:
        return load_model(name, device=device, int8={"on": True, "off": False}.get(int8, int8))
    except ModelError as e:
        raise InputError(str(e).splitlines()[0]) from None


if __name__ == "__main__":
    sys.exit(main())

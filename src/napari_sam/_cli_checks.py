"""``napari-sam segment``'s option checks: each refuses with the reason (``InputError``) before anything
is written. Used for one image (``cli``) and for every image of a batch before any runs (``_cli_batch``)."""

from __future__ import annotations

import functools

from .io import InputError


def _parse_z_range(text, nz):
    if text is None:
        return None
    try:
        a, b = (int(v) if v else None for v in text.split(":"))
    except ValueError:
        raise InputError(f"--z-range must look like A:B (e.g. 3:20), got '{text}'") from None
    a = 0 if a is None else a
    b = nz if b is None else b
    if not 0 <= a < b <= nz:
        raise InputError(f"--z-range {text} is not within the stack's slices 0..{nz} (A < B)")
    return (a, b)


def check_propagation(args, spatial_shape, prompts=None):
    """``--propagate`` / ``--every-slice`` / ``--z-range`` against an image's (y, x) or (z, y, x) shape and
    its prompts: the z range or None."""
    if args.propagate and args.every_slice:
        raise InputError("--propagate follows objects from the slices they were prompted on, --every-slice applies "
                         "each object's prompts to every slice: choose one")
    for flag, on in (("--propagate", args.propagate), ("--every-slice", args.every_slice)):
        if on and len(spatial_shape) == 2:
            raise InputError(f"{flag} needs a (z, y, x) stack; this image is 2D")
    z_range = _parse_z_range(args.z_range, spatial_shape[0]) if args.z_range else None
    if z_range and not (args.propagate or args.every_slice):
        raise InputError("--z-range only applies with --propagate or --every-slice")
    if (args.propagate or args.every_slice) and prompts is not None:  # as propagation will, before the model loads
        from .core.propagate_inputs import check_prompts, check_through_z

        check, flag = (check_through_z, "--every-slice") if args.every_slice else \
            (functools.partial(check_prompts, distinct=True), "--propagate")
        try:
            check(prompts, tuple(spatial_shape), z_range or (0, spatial_shape[0]))
        except ValueError as e:
            raise InputError(f"{flag}: {e}") from None
    if args.memory and not args.propagate:
        raise InputError("--memory only applies with --propagate")
    if args.memory and args.embeddings:
        raise InputError("--memory propagates with SAM 2's video predictor, which encodes each slice itself: "
                         "leave out --embeddings")
    return z_range


def check_memory(args, model) -> None:
    """``--memory`` needs a SAM 2 / 2.1 model: refused with the reason once the model is known."""
    if args.memory:
        from .core.sam2_memory import check_memory_model

        try:
            check_memory_model(model, "leave out --memory (slice by slice, every model), or give --model a SAM 2.1 "
                                      "checkpoint")
        except ValueError as e:
            raise InputError(f"--memory: {e}") from None


def check_input_scale(value, embeddings=None):
    """``--input-scale``: a number, "auto" or None; refused with the reason before anything runs
    (also "auto" with ``--embeddings``, which were computed at one magnification)."""
    from .core.magnify import check_scale

    try:
        scale = check_scale(value)
    except ValueError as e:
        raise InputError("--input-scale" + str(e).removeprefix("input_scale")) from None
    if scale == "auto" and embeddings:
        raise InputError("--input-scale auto chooses the magnification from the prompts, but --embeddings were "
                         "computed at a fixed one: pass the --input-scale they were made with, or leave it out")
    return scale


def check_normalize(normalize, stack, name) -> None:
    """``--normalize none`` hands the pixel values to SAM as they are: refused unless they lie in 0..255
    (as ``core.image.to_sam_rgb`` needs). stack: (z, y, x[, c]), read one slice at a time."""
    import numpy as np

    if normalize != "none" or np.dtype(stack.dtype) in (np.uint8, np.bool_):
        return
    lo, hi = np.inf, -np.inf
    for z in range(stack.shape[0]):
        a = np.asarray(stack[z], np.float64)
        a = a[np.isfinite(a)]  # NaN becomes 0 and infinities the ends of the range, as in to_sam_rgb
        if a.size:
            lo, hi = min(lo, a.min()), max(hi, a.max())
    if lo < 0 or hi > 255:
        raise InputError(f"--normalize none takes the pixel values as they are and needs them in 0..255 (8-bit); "
                         f"{name} has values {lo:g}..{hi:g}: leave out --normalize (percentile, for microscopy) "
                         "or use --normalize minmax")

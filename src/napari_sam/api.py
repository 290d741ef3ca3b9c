"""Public Python API: ``napari_sam.load_model``, ``segment``, ``find_objects``, ``propagate``.

Prompts use napari's convention: points (N, 2) as (row, col); boxes (M, 4) as
(row0, col0, row1, col1).
"""

from __future__ import annotations

import os

import numpy as np

from .core.cache import EmbeddingCache
from .core.models import load_model, model_key

__all__ = ["load_model", "segment", "find_objects", "find_in_stack", "propagate", "EMBEDDINGS"]

_DEFAULT = {}

#: The slices ``segment`` has encoded, most recent last (``core.cache.EmbeddingCache``, kept as the
#: encoder gave them, so a repeated call returns exactly what the first did). Keyed by the slice's content
#: hash, the model's checksum, device and dtype, and the encoding settings: an edited array is encoded
#: again. ``EMBEDDINGS.clear()`` frees them; ``EMBEDDINGS.max_bytes = 0`` keeps only the last slice.
EMBEDDINGS = EmbeddingCache(1 << 30, half=False)


def _model(model):
    """A loaded model for ``model``: itself, or a name or path loaded once (again when the file changes)."""
    if model is None or isinstance(model, (str, os.PathLike)):
        key = model_key(model)
        if key not in _DEFAULT:
            _DEFAULT[key] = load_model("embedded" if model is None else model)
            while len(_DEFAULT) > 2:  # the last two: models are large
                _DEFAULT.pop(next(iter(_DEFAULT)))
        return _DEFAULT[key]
    return model


def segment(
    image2d,
    *,
    points=None,
    point_labels=None,
    boxes=None,
    mask=None,
    model=None,
    multimask: bool = True,
    channel_axis: int | None = None,
    channel: int | None = None,
    normalize: str = "percentile",
    refine: bool = False,
    input_scale: float | str | None = "auto",
):
    """SAM on one 2D slice.

    image2d: (H, W) or, with ``channel_axis``, (H, W, C); any dtype.
    points: (N, 2) (row, col); point_labels: (N,) 1 positive / 0 negative
    (default all positive). boxes: (4,) or (M, 4) (row0, col0, row1, col1);
    M boxes are M objects. mask: a previous (H, W) bool (or integer) mask or SAM
    low-res float logits; a mask alone is given with its bounding box (SAM
    returns little of a mask alone; ``core.predictor.with_mask_box``). model: a ``LoadedModel``, a registry name or checkpoint path
    (default: the embedded model). refine: boundary snapping and removal of
    fragments not connected to the prompt (``core.refine``; off by default:
    it removes every stray fragment but does not raise the IoU on average,
    see docs/embedded-model.md). input_scale: magnification of the slice
    before the embedded model's encoder. "auto" (default): decode at the
    model's own (2.0, best for nuclei of radius ~5-20 px) and, if the
    prompted objects are large (median radius >= 18 px), again at 1.0 (better
    and faster for cell bodies and large nuclei: docs/embedded-model.md,
    ``core.magnify``); a number fixes it; None: the model's own. Official
    ViT checkpoints always see SAM's 1024 px canvas and ignore it.

    Returns a :class:`napari_sam.core.embedding.Prediction`: ``masks``
    (n_objects, n_candidates, H, W) bool, ``scores`` (n, c) SAM's predicted
    IoU, ``low_res_logits``; ``.best()`` gives (n, H, W), each object's
    candidate shown first (highest predicted IoU; for the embedded model,
    predicted IoU x the image's edge along the outline: ``core.choose``).
    """
    from .core.predictor import SlicePredictor

    a = np.asarray(image2d)
    expect = 3 if channel_axis is not None else 2
    if a.ndim != expect:
        if channel_axis is not None and a.ndim == 2:
            raise ValueError(f"segment() was given channel_axis={channel_axis}, but the array of shape {a.shape} "
                             "is one 2D grayscale slice: leave channel_axis out")
        hint = ""
        if a.ndim == 3 and channel_axis is None:
            axis = -1 if a.shape[-1] <= 4 else 0 if a.shape[0] <= 4 else None
            hint = ("; for a z-stack pick a slice (stack[z]) or use propagate()" if axis is None else
                    f"; if axis {axis} holds channels, pass channel_axis={axis} (and channel= to pick one); "
                    "for a z-stack pick a slice (stack[z]) or use propagate()")
        raise ValueError(f"segment() takes one 2D slice{' with channels' if channel_axis is not None else ''}, "
                         f"got an array of shape {a.shape}{hint}")
    if points is None and boxes is None and mask is None:
        raise ValueError("segment() needs a prompt: points, boxes or mask")
    m = _model(model)
    from .core.cache import embed_cached
    from .core.magnify import check_scale, is_auto, median_radius, scale_for

    def run(scale):
        pred = SlicePredictor(m, normalize=normalize, refine=refine, input_scale=scale)
        pred.set_embedding(embed_cached(pred, EMBEDDINGS, a, channel_axis=channel_axis, channel=channel))
        return pred, pred.predict(points=points, point_labels=point_labels, boxes=boxes, mask=mask, multimask=multimask)

    input_scale = check_scale(input_scale)
    auto = is_auto(input_scale)
    pred, out = run(None if auto else input_scale)
    if auto and pred.native:  # measured at the default magnification; again only if the objects are large
        scale = scale_for(median_radius(out.best()), pred.input_scale)
        if scale != pred.input_scale:
            _, out = run(scale)
    return out


def find_objects(
    image2d,
    *,
    model=None,
    labels=None,
    channel_axis: int | None = None,
    channel: int | None = None,
    normalize: str = "percentile",
    input_scale: float | None = None,
    **settings,
):
    """Every object on one 2D slice, without a click: SAM's automatic mask generation (``core.automatic``).

    image2d: (H, W), or (H, W, C) with ``channel_axis``. labels: (H, W) labels already drawn on the slice;
    objects are only looked for outside them (their pixels are never given to a found object). settings:
    fields of :class:`napari_sam.core.automatic.AutoSettings` (``spacing``, ``min_score``, ``min_brightness``
    0 for dark objects on a bright background, ...). input_scale: the embedded model's magnification (None:
    its own, 2x).

    Returns :class:`napari_sam.core.automatic.Found`: ``labels`` (H, W) uint32, ids 1..n, with
    ``scores``, ``stability`` and the ``seeds`` that drew them; ``found.prompts(z)`` gives each object as a
    mask prompt on slice z for :func:`propagate`::

        found = napari_sam.find_objects(stack[12])
        labels3d = napari_sam.propagate(stack, found.prompts(12))
    """
    from .core.automatic import find_objects as find
    from .core.cache import embed_cached
    from .core.predictor import SlicePredictor

    a = np.asarray(image2d)
    if a.ndim != (3 if channel_axis is not None else 2):
        raise ValueError(f"find_objects() takes one 2D slice{' with channels' if channel_axis is not None else ''}, "
                         f"got an array of shape {a.shape}: for a z-stack pick a slice, stack[z], or use "
                         "find_in_stack(stack)")
    found_settings, scale = _find_settings("find_objects", settings, input_scale)
    pred = SlicePredictor(_model(model), normalize=normalize, input_scale=scale)
    pred.set_embedding(embed_cached(pred, EMBEDDINGS, a, channel_axis=channel_axis, channel=channel))
    return find(pred, found_settings, existing=labels)


def _find_settings(name: str, settings: dict, input_scale):
    """(AutoSettings, input scale) from a find function's keywords, or an error naming what is wrong."""
    from .core.automatic import AutoSettings
    from .core.magnify import check_scale

    unknown = sorted(set(settings) - set(AutoSettings.__dataclass_fields__))
    if unknown:
        raise TypeError(f"{name}() got unknown settings {unknown}: AutoSettings has "
                        f"{sorted(AutoSettings.__dataclass_fields__)}")
    scale = check_scale(input_scale)
    if isinstance(scale, str):
        raise ValueError(f'{name}() takes a number for input_scale, not {input_scale!r}: "auto" decides '
                         "from the objects clicked, and here none are")
    return AutoSettings(**settings), scale


def find_in_stack(
    stack,
    *,
    model=None,
    every: int = 4,
    z: int | None = None,
    z_range=None,
    labels=None,
    link_depth: int | None = None,
    channel_axis: int | None = None,
    normalize: str = "percentile",
    input_scale: float | None = None,
    progress=None,
    **settings,
):
    """Every object of a (z, y, x) stack, without a click (``core.find_stack``): objects found on the middle
    slice (or ``z``) and on every ``every``-th slice outward from it, each time outside the objects already
    there, and propagated through the stack.

    labels: (z, y, x) labels already drawn; they are kept, and no found object takes their pixels.
    link_depth: a mask found on a slice is left out when most of it lies on an object that ended within
    this many slices above or below (that object's dim end, or its out-of-focus light; default
    ``core.find_stack.LINK_DEPTH``). z_range: (start, stop), half-open: nothing outside it is looked on or
    labelled. progress: called with each ``Progress`` record. settings: fields of
    :class:`napari_sam.core.automatic.AutoSettings`, as :func:`find_objects`.

    Returns :class:`napari_sam.core.find_stack.FoundStack`: ``labels`` (z, y, x) uint32 (int64 when the labels
    given are signed; the given labels and new ids after their largest), ``objects`` {id: (slice found on, seed (row, col), predicted IoU)}::

        labels3d = napari_sam.find_in_stack(stack).labels
    """
    from .core.find_stack import finding_in_stack
    from .core.predictor import SlicePredictor
    from .core.propagate_records import run_to_end

    shape = tuple(getattr(stack, "shape", np.shape(stack)))
    if len(shape) == (2 if channel_axis is None else 3):
        raise ValueError(f"find_in_stack() takes a (z, y, x) stack, got one 2D slice of shape {shape}: for one "
                         "slice use find_objects()")
    found_settings, scale = _find_settings("find_in_stack", settings, input_scale)
    pred = SlicePredictor(_model(model), normalize=normalize, input_scale=scale)
    more = {} if link_depth is None else {"link_depth": link_depth}
    gen = finding_in_stack(pred, stack, found_settings, every=every, z=z, z_range=z_range, labels=labels,
                           channel_axis=channel_axis, **more)
    return run_to_end(gen, progress)


def propagate(stack, prompts, *, model=None, z_range=None, **kwargs):
    """Propagate objects through a (z, y, x) stack; returns (z, y, x) labels.

    prompts: {object_id: {z: ObjectPrompt or dict(points=, labels=, box=, mask=)}}.
    method: "slices" (default, every model) or "memory" (SAM 2 / 2.1: its video predictor,
    ``core.sam2_memory``). See :func:`napari_sam.core.propagate.propagate_labels` for the options.
    """
    from .core.propagate import propagate_labels

    return propagate_labels(stack, prompts, model=_model(model), z_range=z_range, **kwargs)

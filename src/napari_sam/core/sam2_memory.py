"""Z-propagation with SAM 2's memory: the slices of a stack as the frames of a video.

SAM 2 was trained to follow objects through video: each frame's features
attend to a memory of the frames already segmented (the prompted ones and
the last few it propagated to), and an object-score head says when the
object is gone. For a SAM 2 / 2.1 checkpoint, ``propagate_memory`` runs Meta's
own ``SAM2VideoPredictor`` over the stack's slices, as its video notebook
does: prompts are added on their slices, then one pass forward from the first
prompted slice and one backward from the last. Each slice of an object is
taken from the pass that comes from its nearest prompted slice (below it:
forward; above it: backward), as ``propagate_objects`` fills gaps.

What differs from ``propagate_objects`` (``core.propagate``), which prompts
each slice from the previous slice's mask and works with every model:

* no stop rule: an object ends where SAM 2's object score says it is gone;
* each pass encodes every slice it visits (the video predictor keeps only
  the current frame's features), so a slice between the prompted ones is
  encoded twice; SAM 2's image encoder is the expensive part on a CPU;
* the slices reach SAM 2 as its video loader makes frames: the slice as
  8-bit RGB (``SlicePredictor.prepare``: the same normalisation as a click),
  resized to SAM 2's square input with Pillow and normalised with ImageNet's
  mean and standard deviation (``sam2.utils.misc._load_img_as_tensor``).

Overlaps are resolved as in ``propagate_objects``: per pixel by SAM 2's mask
logit minus ``decay`` per slice from the object's nearest prompted slice, and
pixels of objects not being propagated are never taken. It works on a copy of
``labels``: closing the generator (cancel) leaves the caller's array as it was.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import partial
import weakref
from collections.abc import Iterator

import numpy as np

from .label_canvas import USER_SCORE, LabelCanvas
from .propagate import pass_source
from .propagate_records import Progress
from .propagate_inputs import check_labels, check_prompts, check_stack, z_bounds

_VIDEO_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model.sam -> its video predictor
_PATCH_LOCK = threading.Lock()  # a sam2 module global is swapped (init_state's frame loader, a pass's tqdm)


def check_memory_model(model, hint: str = "use method='slices' (every model), or load a SAM 2.1 checkpoint") -> None:
    """Raise a ValueError that says why and what to do, unless ``model`` is a SAM 2 / 2.1 model."""
    from .sam2_model import is_sam2

    if not is_sam2(model.sam):
        raise ValueError(f"propagation with SAM 2's memory needs a SAM 2 / 2.1 checkpoint, and {model.name} is "
                         f"not one ({'an' if model.arch[:1].lower() in 'aeiou' else 'a'} {model.arch} model): {hint}")


def video_predictor(model):
    """Meta's ``SAM2VideoPredictor`` on ``model``'s weights (built once per model; the same tensors, not a
    copy), with the settings of ``sam2.build_sam.build_sam2_video_predictor`` (its default post-processing)."""
    check_memory_model(model)
    vp = _VIDEO_PREDICTORS.get(model.sam)
    if vp is None:
        import warnings

        from sam2.build_sam import build_sam2_video_predictor

        from .sam2_model import config_name

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            vp = build_sam2_video_predictor(config_name(model.arch), None, device=str(model.device))
        # the image model's tensors themselves (assign): the video predictor adds no second copy of the weights
        vp.load_state_dict(model.sam.state_dict(), assign=True)
        _VIDEO_PREDICTORS[model.sam] = vp
    return vp


class Frames:
    """The slices z0..z1-1 of ``stack`` as SAM 2's video frames, made when the predictor asks for them:
    (3, S, S) float32 tensors, exactly as ``sam2.utils.misc`` loads a JPEG frame of the same 8-bit RGB."""

    def __init__(self, predictor, stack, z0: int, z1: int, channel_axis=None):
        import torch

        self.predictor, self.stack, self.z0, self.n, self.channel_axis = predictor, stack, z0, z1 - z0, channel_axis
        self.size = int(predictor.sam.image_size)
        self.mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        if not 0 <= i < self.n:
            raise IndexError(i)
        img8, _, _ = self.predictor.prepare(np.asarray(self.stack[self.z0 + i]), self.channel_axis)
        rgb = np.array(Image.fromarray(img8).resize((self.size, self.size))) / 255.0
        x = torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32)
        return (x - self.mean) / self.std


@contextmanager
def _swapped(name: str, value):
    """``sam2.sam2_video_predictor.<name>`` is ``value`` inside (one caller at a time)."""
    import sam2.sam2_video_predictor as svp

    with _PATCH_LOCK:
        old = getattr(svp, name)
        setattr(svp, name, value)
        try:
            yield
        finally:
            setattr(svp, name, old)


def _init_state(vp, frames: Frames, height: int, width: int):
    """``vp.init_state`` on ``frames`` instead of a folder of JPEGs (its loader is swapped for the call)."""
    with _swapped("load_video_frames", lambda **kw: (frames, height, width)):
        return vp.init_state(video_path=None)


def _owner(anchors: list[int], z: int) -> str:
    """Which pass gives object slice z: its prompted slices and the slices the upward pass of
    ``propagate_objects`` would fill (``pass_source``) are "up" (forward), the rest "down"."""
    return "up" if z in anchors or pass_source(anchors, z, True) is not None else "down"


STATE_BYTES = 1 << 20  # what SAM 2's video predictor keeps per object and slice visited (0.85 MB measured, rounded up)
MAX_STATE_BYTES = 2 << 30  # default budget of one run's video state


def object_groups(ids, n_slices: int, max_state_bytes: int = MAX_STATE_BYTES) -> list[list[int]]:
    """``ids`` in runs of the video predictor whose state stays within ``max_state_bytes``
    (``STATE_BYTES`` per object and slice); at least one object a run."""
    per_run = max(1, int(max_state_bytes // (STATE_BYTES * max(int(n_slices), 1))))
    ids = list(ids)
    return [ids[i : i + per_run] for i in range(0, len(ids), per_run)]


def propagate_memory(predictor, stack, prompts, *, z_range=None, labels=None, channel_axis: int | None = None,
                     decay: float = 1.0, max_state_bytes: int = MAX_STATE_BYTES) -> Iterator[Progress]:
    """Propagate objects through ``stack`` (z, y, x) with SAM 2's memory (``SAM2VideoPredictor``).

    predictor: a ``SlicePredictor`` of a SAM 2 / 2.1 model (its ``normalize`` applies).
    prompts: as ``propagate_objects``: {object_id: {z: ObjectPrompt or dict(points=, labels=, box=, mask=)}};
    a mask alone is given to SAM 2 as a mask prompt (``add_new_mask``) and kept as it is on its slice; with
    points or a box, a mask in the same prompt is not used (SAM 2 takes one or the other on a frame).
    z_range, labels, channel_axis: as ``propagate_objects``. decay: subtracted from an object's logits per
    slice from its nearest prompted slice, when objects claim the same pixel. max_state_bytes: SAM 2 keeps
    ~1 MB per object and slice until a run ends; more objects than fit are propagated in several runs
    (``object_groups``; each run encodes the slices again; objects are followed independently either way).
    Yields :class:`Progress` (stages "prompted", "up", "down"); returns the (z, y, x) labels.
    """
    shape = check_stack(stack, channel_axis)
    zb = z_bounds(z_range, shape[0])
    objs = check_prompts(prompts, shape, zb, distinct=True)
    labels = check_labels(labels, shape, objs)
    vp = video_predictor(predictor.model)
    canvas = LabelCanvas(shape, labels, objs, zb)
    anchors = {o: sorted(p) for o, p in objs.items()}
    groups = object_groups(sorted(objs), zb[1] - zb[0], max_state_bytes)
    runs = [_passes([anchors[o] for o in g], zb) for g in groups]
    total, done = sum(n for passes in runs for *_, n in passes), 0
    for group, passes in zip(groups, runs):
        state = _start(vp, predictor, stack, {o: objs[o] for o in group}, zb, shape, channel_axis)
        for stage, start, reverse, _ in passes:
            for z, painted, ended in _run_pass(vp, predictor, state, canvas, objs, anchors, stage, start - zb[0],
                                               reverse, zb, decay):
                done += 1
                stage_z = "prompted" if any(z in objs[o] for o in painted) else stage
                yield Progress(done, total, z, stage_z, canvas.labels[z].copy(), tuple(painted), tuple(ended),
                               canvas.labels if done == total else None)
    return canvas.labels


def _passes(anchors: list[list[int]], zb) -> list[tuple]:
    """[(stage, start z, reverse, slices visited)] for objects prompted on ``anchors`` (sorted slices each):
    forward from the first prompted slice, backward from the last."""
    first, last = min(a[0] for a in anchors), max(a[-1] for a in anchors)
    return [("up", first, False, zb[1] - first), ("down", last, True, last - zb[0] + 1)]


def _start(vp, predictor, stack, objs, zb, shape, channel_axis):
    """A video state over the slices of ``zb`` with ``objs``' prompts added on their slices."""
    import torch

    with predictor.autocast():  # CUDA: the model's half precision, as SAM 2's own examples run it
        state = _init_state(vp, Frames(predictor, stack, zb[0], zb[1], channel_axis), shape[1], shape[2])
    for o, per_z in objs.items():
        for z, p in per_z.items():
            with torch.inference_mode(), predictor.autocast():
                if p.mask_alone:
                    vp.add_new_mask(state, frame_idx=z - zb[0], obj_id=o, mask=np.asarray(p.mask, bool))
                else:
                    box = None if p.box is None else np.asarray(p.box, np.float32)[[1, 0, 3, 2]]
                    pts = np.asarray(p.points, np.float32).reshape(-1, 2)[:, ::-1].copy() if len(p.points) else None
                    vp.add_new_points_or_box(state, frame_idx=z - zb[0], obj_id=o, points=pts,
                                             labels=np.asarray(p.labels, np.int32) if pts is not None else None,
                                             box=box)
    return state


def _run_pass(vp, predictor, state, canvas, objs, anchors, stage, start, reverse, zb, decay):
    """One pass of the video predictor; paints each object on the slices this pass owns (``_owner``) and
    yields (z, ids painted, ended) per slice; ended: ``Progress.ended`` records of objects whose mask is
    empty for the first time beyond their prompted slices in this pass (SAM 2 ends objects by its object
    score; it may find one again further on)."""
    from tqdm import tqdm

    frames = vp.propagate_in_video(state, start_frame_idx=start, reverse=reverse)
    gone: set[int] = set()
    # SAM 2 makes a "propagate in video" bar at the pass's first step: silenced, the records are the progress
    with predictor.autocast(), _swapped("tqdm", partial(tqdm, disable=True)):
        step = next(frames, None)
    while step is not None:
        f, ids, logits = step
        z = zb[0] + int(f)
        painted, ended = [], []
        for oid, lg in zip(ids, logits[:, 0].float().cpu().numpy()):
            oid = int(oid)
            if _owner(anchors[oid], z) != stage:
                continue
            src = pass_source(anchors[oid], z, stage == "up")
            if src is not None and not src[1] and oid not in gone and not (lg > 0).any():
                gone.add(oid)  # beyond its prompts SAM 2 lost it: its object score says it is not there
                ended.append((oid, stage, "SAM 2 finds no object here (its object score)", z))
            user = objs[oid].get(z)
            if user is not None and user.mask_alone:  # the user's own drawing, kept as it is
                canvas.paint_full(z, oid, np.asarray(user.mask, bool), USER_SCORE)
            else:
                canvas.paint_full(z, oid, lg > 0, lg - decay * min(abs(z - a) for a in anchors[oid]))
            painted.append(oid)
        yield z, painted, ended
        with predictor.autocast():  # around each step only: nothing leaks into the caller between records
            step = next(frames, None)

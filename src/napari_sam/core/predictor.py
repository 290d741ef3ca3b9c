"""Encode a slice once, prompt it many times.

Follows segment-anything's ``SamPredictor`` step for step (same resize, same
preprocessing, same prompt encoder and mask decoder calls, same
postprocessing), so on an official checkpoint our masks equal
``SamPredictor``'s. Two additions:

* native-resolution encoders (the embedded CNN model) run at the slice's own
  pixel size, padded to a multiple of 16, instead of SAM's fixed 1024 canvas;
* SAM 2 / 2.1 models run their own image path (``core.sam2_model``): same
  interface, masks equal to ``SAM2ImagePredictor``'s;
* many objects (several boxes, or per-object prompt sets) are decoded in one
  batched decoder call on the cached embedding.
"""

from __future__ import annotations

import threading

import numpy as np

from .choose import check_rule, default_rule, rank_keys
from .embedding import Embedding, Prediction
from .image import to_sam_rgb
from .prompts import ObjectPrompt, check_inside, on_slice

PAD_MULTIPLE = 16
INPUT_SCALE_RANGE = (0.25, 4.0)


def input_scale_problem(scale: float) -> str | None:
    """Why ``scale`` cannot be an ``input_scale`` ("must be between ..."), or None."""
    lo, hi = INPUT_SCALE_RANGE
    return None if lo <= scale <= hi else f"must be between {lo:g} and {hi:g}, got {scale:g}"


def with_mask_box(o: ObjectPrompt) -> ObjectPrompt:
    """A drawn mask alone is a weak prompt for SAM: it returns little of it (the embedded model, given
    validation objects' own true masks: median IoU 0.17). With the mask's bounding box added, as micro-sam's
    ``segment_from_mask`` does, 0.95 (and 0.74 from a rough mask of IoU 0.52)."""
    if not o.mask_alone or not o.mask.any():
        return o
    rr, cc = np.nonzero(o.mask)
    return ObjectPrompt(box=np.array([rr.min(), cc.min(), rr.max(), cc.max()], np.float32), mask=o.mask)


class SlicePredictor:
    """SAM on one 2D slice: ``set_image`` once, ``predict`` many times."""

    def __init__(self, model, normalize: str = "percentile", refine: bool = False, fast: bool = True,
                 input_scale: float | None = None, rank: str | None = None, fragments: bool | None = None):
        """model: a ``core.models.LoadedModel``. normalize: see ``core.image``.
        refine: boundary snapping + fragment removal (``core.refine``) on every mask.
        fragments: without ``refine``, drop the pieces of each mask not connected to its prompt
        (``core.refine.keep_prompted``); default on for the embedded model (session 10: validation click
        median 0.789 -> 0.792, box 0.843 -> 0.844, the real image's click 0.818 -> 0.832, no mask in
        pieces), off for official checkpoints, whose masks stay exactly SAM's.
        fast: run SAM's ViT encoder and mask decoder through ``core.fast_vit`` /
        ``core.fast_decoder`` (same weights; results equal up to float rounding);
        False runs segment-anything's own forward passes.
        input_scale: native-resolution encoders only: the slice is magnified by
        this factor before encoding (at most ``tiles.MAX_TILED`` ** 2 pixels;
        beyond the encoder's ``max_size`` it is encoded in tiles); default the model's own (embedded model: see its
        ``input_scale``). Official ViT models always see SAM's 1024 canvas.
        rank: how an ambiguous prompt's candidates are ordered, best first
        (``core.choose``): "score" (SAM's predicted IoU) or "score*edge";
        default "score*edge" for the embedded model, "score" for SAM's ViTs."""
        from segment_anything.utils.transforms import ResizeLongestSide

        from .sam2_model import image_predictor, is_sam2

        self.model = model
        self.sam = model.sam
        self.normalize = normalize
        self.refine = refine
        self.fast = fast
        enc = self.sam.image_encoder
        self.native = bool(getattr(enc, "native_resolution", False))
        self.fragments = self.native if fragments is None else bool(fragments)
        self.sam2 = image_predictor(self.sam) if is_sam2(self.sam) else None  # SAM 2: its official predictor
        self._sam2_lock = threading.Lock()  # it holds the image it encodes: one slice at a time
        scale = getattr(enc, "input_scale", 1.0) if input_scale is None else input_scale
        self.input_scale = float(scale) if self.native else 1.0
        problem = input_scale_problem(self.input_scale)
        if problem:
            raise ValueError(f"input_scale {problem}")
        self.rank = check_rule(default_rule(self.native) if rank is None else rank)
        self._resize = None if self.native or self.sam2 else ResizeLongestSide(enc.img_size)
        self.embedding: Embedding | None = None

    # ------------------------------------------------------------ encoding --
    def prepare(self, slice2d, channel_axis=None, channel=None):
        """slice -> (uint8 RGB resized (h, w, 3), original (H, W), gray (H, W))."""
        rgb = to_sam_rgb(slice2d, channel_axis=channel_axis, channel=channel, normalize=self.normalize)
        original = rgb.shape[:2]
        img8 = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        if self.native:
            from segment_anything.utils.transforms import ResizeLongestSide

            from .tiles import MAX_TILED

            long, area = max(original), original[0] * original[1]
            # magnified up to MAX_TILED**2 pixels (tiles take any shape): a thin 5000 x 40 slice keeps its 2x
            scale = min(self.input_scale, MAX_TILED / area**0.5)
            target = int(round(long * scale))
            resized = img8 if target == long else ResizeLongestSide(target).apply_image(img8)
        elif self.sam2 is not None:  # SAM2ImagePredictor resizes it
            resized = img8
        else:
            resized = self._resize.apply_image(img8)
        return resized, original, np.clip(np.rint(rgb.mean(-1)), 0, 255).astype(np.uint8)

    def embed(self, slice2d, *, channel_axis=None, channel=None) -> Embedding:
        """Run the image encoder on one slice (the expensive step)."""
        import torch

        resized, original, gray = self.prepare(slice2d, channel_axis, channel)
        if self.sam2 is not None:
            from .sam2_model import encode

            with self._sam2_lock, torch.inference_mode(), self.autocast():
                feats, high_res = encode(self.sam2, resized)
            side = int(self.sam.image_size)
            return Embedding(feats, tuple(original), (side, side), (side, side), gray, high_res)
        x, (h, w) = self._normalised(resized)
        hp, wp = x.shape[-2:]
        from .fast_vit import run_encoder

        enc = self.sam.image_encoder
        net = getattr(self.model, "int8_encoder", None)  # the embedded model on an x86 CPU: int8 (core.int8)
        net = enc if net is None else net
        with torch.inference_mode(), self.autocast():
            if self.native and max(hp, wp) > enc.max_size:  # larger than one encoder pass: tiles
                from .tiles import encode_tiled

                feats = encode_tiled(enc, x, lambda e, t: run_encoder(net, t, fast=self.fast)).float()
            else:
                feats = run_encoder(net, x, fast=self.fast).float()
        return Embedding(feats, tuple(original), (int(h), int(w)), (int(hp), int(wp)), gray)

    def encoder_input(self, slice2d, *, channel_axis=None, channel=None):
        """The (1, 3, H, W) tensor the image encoder gets for ``slice2d``: normalised, resized, padded."""
        return self._normalised(self.prepare(slice2d, channel_axis, channel)[0])[0]

    def _normalised(self, resized):
        """(padded normalised tensor, (h, w) before padding) of a resized uint8 RGB slice."""
        import torch

        x = torch.as_tensor(resized, device=self.model.device).permute(2, 0, 1).contiguous()[None]
        h, w = x.shape[-2:]
        x = (x - self.sam.pixel_mean) / self.sam.pixel_std
        if self.native:
            hp, wp = (-(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE)
        else:
            hp = wp = self.sam.image_encoder.img_size
        return torch.nn.functional.pad(x, (0, wp - w, 0, hp - h)), (int(h), int(w))

    def set_image(self, slice2d, *, channel_axis=None, channel=None) -> None:
        self.embedding = self.embed(slice2d, channel_axis=channel_axis, channel=channel)

    def set_embedding(self, embedding: Embedding) -> None:
        self.embedding = embedding

    def reset_image(self) -> None:
        self.embedding = None

    def autocast(self):
        import contextlib

        import torch

        if self.model.dtype != torch.float32 and self.model.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.model.dtype)
        return contextlib.nullcontext()

    # ----------------------------------------------------------- prompting --
    def predict(self, points=None, point_labels=None, boxes=None, mask=None, *, multimask: bool = True) -> Prediction:
        """Prompts in napari's (row, col) convention.

        points: (N, 2) (row, col); point_labels: (N,) 1/0 (default all 1).
        boxes: (4,) or (M, 4) (row0, col0, row1, col1); M boxes are M objects.
        mask: (H, W) bool previous mask or (h, w) low-res logits.
        With several boxes, points and mask are not allowed (use
        ``predict_objects`` to give each object its own prompts).
        """
        b = None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
        if b is not None and len(b) > 1:
            if points is not None and len(points) or mask is not None:
                raise ValueError("with several boxes each box is one object: give per-object points with predict_objects")
            objs = [ObjectPrompt(box=bb) for bb in b]
        else:
            pts = np.zeros((0, 2)) if points is None else points
            objs = [ObjectPrompt(pts, point_labels, None if b is None or not len(b) else b[0], mask)]
        return self.predict_objects(objs, multimask=multimask)

    def predict_objects(self, objects: list[ObjectPrompt], *, multimask: bool = True) -> Prediction:
        """Decode many objects on the current embedding, batched by prompt kind."""
        if self.embedding is None:
            raise RuntimeError("no image set: call set_image(slice) or set_embedding(...) first")
        emb = self.embedding
        objects = [with_mask_box(o) for o in objects]
        for o in objects:
            if o.empty:
                raise ValueError("an object has no prompt: give at least one point, a box or a mask")
            check_inside(o.points, None if o.box is None else o.box[None], emb.original_size)
        objects = [on_slice(o, emb.original_size) for o in objects]  # a box beyond the slice, cut to it
        groups: dict[tuple, list[int]] = {}
        for i, o in enumerate(objects):
            groups.setdefault((len(o.points), o.box is not None, o.mask is not None), []).append(i)
        out: list = [None] * len(objects)
        for idx in groups.values():
            m, s, lr = self._decode([objects[i] for i in idx], multimask)
            for j, i in enumerate(idx):
                out[i] = (m[j], s[j], lr[j])
        masks, scores = np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        keys = np.stack([self.rank_keys(s, m, points=o.points, labels=o.labels)
                         for s, m, o in zip(scores, masks, objects)])
        return Prediction(masks, scores, np.stack([o[2] for o in out]), keys)

    def rank_keys(self, scores: np.ndarray, masks: np.ndarray, r0: int = 0, c0: int = 0, points=None,
                  labels=None) -> np.ndarray:
        """(c,) ranking keys of one object's candidates (``masks``: (c, h, w) crops at (r0, c0);
        points, labels: the object's clicks, see ``core.choose.rank_keys``)."""
        return rank_keys(self.rank, scores, self.embedding.gray, masks, r0, c0, points, labels)

    def _scale(self):
        emb = self.embedding
        return (emb.input_size[0] / emb.original_size[0], emb.input_size[1] / emb.original_size[1])

    def _decode(self, objs: list[ObjectPrompt], multimask: bool):
        from .batch_decode import decode_prompts

        low, iou = decode_prompts(self, objs, multimask)
        masks = self._masks(low)
        if self.sam2 is not None:  # masks from the raw logits, the logits handed back clamped (as SAM 2 does)
            from .sam2_model import CLAMP

            low = low.clamp(-CLAMP, CLAMP)
        if self.refine or self.fragments:
            from .refine import tidy_mask

            for j, o in enumerate(objs):
                for k in range(masks.shape[1]):
                    masks[j, k] = tidy_mask(masks[j, k], self.embedding.gray, o.points, o.labels, o.box,
                                            snap=self.refine, fragments=self.fragments)
        return masks, iou.float().cpu().numpy(), low.float().cpu().numpy()

    def _masks(self, low) -> np.ndarray:
        """(n, c, H, W) bool, identical to ``_postprocess(low) > mask_threshold``, computed
        only where an object can be (``core.fast_post``)."""
        from .fast_post import masks_from_low_res
        from .sam2_model import mask_threshold

        emb = self.embedding
        thr = mask_threshold(self.sam)
        if self.sam2 is not None:  # one resize, low-res -> slice (SAM2Transforms.postprocess_masks)
            return masks_from_low_res(low, emb.original_size, emb.original_size, emb.original_size, thr)
        canvas = emb.padded_size if self.native else (self.sam.image_encoder.img_size,) * 2
        return masks_from_low_res(low, canvas, emb.input_size, emb.original_size, thr)

    def _postprocess(self, low):
        import torch.nn.functional as F

        emb = self.embedding
        if self.sam2 is not None:
            return F.interpolate(low, emb.original_size, mode="bilinear", align_corners=False)
        if not self.native:
            return self.sam.postprocess_masks(low, emb.input_size, emb.original_size)
        m = F.interpolate(low, emb.padded_size, mode="bilinear", align_corners=False)
        m = m[..., : emb.input_size[0], : emb.input_size[1]]
        if tuple(emb.input_size) != tuple(emb.original_size):
            m = F.interpolate(m, emb.original_size, mode="bilinear", align_corners=False)
        return m

    def _mask_input(self, mask):
        """A previous mask -> SAM's mask prompt (1, h, w) low-res logits.

        Low-res logits (as returned in ``Prediction.low_res_logits``) pass
        through; a full-size boolean mask is resized like the image, padded,
        averaged down to SAM's mask-input grid and mapped to logits of +-8.
        """
        import torch
        import torch.nn.functional as F

        from .sam2_model import prompt_encoder

        emb, dev = self.embedding, self.model.device
        if self.native:  # the mask grid follows the slice: set it for this embedding
            from .embedded import set_grid

            set_grid(self.sam, emb.padded_size)
        grid = prompt_encoder(self.sam).mask_input_size
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.dtype != bool and m.shape == tuple(grid):
            return torch.as_tensor(m, dtype=torch.float, device=dev)[None]
        if m.shape != tuple(emb.original_size):
            raise ValueError(
                f"mask prompt has shape {m.shape}; expected the slice's shape {tuple(emb.original_size)} "
                f"(a boolean mask) or SAM's low-res logits {tuple(grid)}"
            )
        t = torch.as_tensor(m.astype(np.float32), device=dev)[None, None]
        t = F.interpolate(t, emb.input_size, mode="bilinear", align_corners=False)
        t = F.pad(t, (0, emb.padded_size[1] - emb.input_size[1], 0, emb.padded_size[0] - emb.input_size[0]))
        t = F.adaptive_avg_pool2d(t, grid)
        return (16.0 * (t[0] - 0.5)).clamp(-8, 8)

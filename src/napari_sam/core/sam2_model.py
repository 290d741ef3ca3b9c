"""SAM 2 and SAM 2.1 image models, run through Meta's ``sam2`` package.

SAM 2's image path differs from SAM's in three ways that matter here:

* the slice is resized to a 1024 x 1024 square (not by its long side) and
  normalised on 0-1 with ImageNet's mean and standard deviation;
* its embedding is three feature maps: the 256 x 64 x 64 one the prompts
  attend to, and two finer ones (32 x 256 x 256, 64 x 128 x 128) that the
  mask decoder adds while upsampling (``Embedding.high_res``);
* a box enters the prompt encoder as two corner points labelled 2 and 3,
  before the clicks, and low-res masks are resized to the slice in one step.

The encoder runs through ``SAM2ImagePredictor.set_image`` and the prompt
encoder and mask decoder are called as its ``_predict`` calls them, so masks
equal the official predictor's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# (patch embedding width, number of Hiera blocks) -> size name, as Meta names the checkpoints
_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
_CONFIG_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
CLAMP = 32.0  # low-res logits handed back as the next mask prompt are clamped, as SAM2ImagePredictor does


def infer_sam2(sd: dict[str, torch.Tensor]) -> str | None:
    """The architecture ("sam2.1_hiera_tiny", "sam2_hiera_large", ...) of a SAM 2 state dict, or None."""
    pe = sd.get("image_encoder.trunk.patch_embed.proj.weight")
    if pe is None or pe.ndim != 4 or "sam_mask_decoder.iou_token.weight" not in sd:
        return None
    blocks = {k.split(".")[3] for k in sd if k.startswith("image_encoder.trunk.blocks.")}
    size = _SIZES.get((int(pe.shape[0]), len(blocks)))
    if size is None:
        return None
    version = "sam2.1" if "no_obj_embed_spatial" in sd else "sam2"
    return f"{version}_hiera_{size}"


def build_sam2_model(arch: str):
    """An untrained SAM 2 model of ``arch`` (from ``infer_sam2``), on the CPU, in eval mode."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError:
        from .checkpoints import ModelError

        raise ModelError(
            f"this is a SAM 2 checkpoint ({arch}); SAM 2 runs on Meta's sam2 package, which is not installed: "
            "pip install 'napari-sam[sam2]' (or pip install sam2)"
        ) from None
    return build_sam2(config_name(arch), None, device="cpu", mode="eval")


def config_name(arch: str) -> str:
    """The ``sam2`` package's config of ``arch`` ("sam2.1_hiera_tiny" -> "configs/sam2.1/sam2.1_hiera_t.yaml")."""
    version, _, size = arch.partition("_hiera_")
    folder = "sam2.1" if version == "sam2.1" else "sam2"
    return f"configs/{folder}/{version}_hiera_{_CONFIG_SUFFIX[size]}.yaml"


def is_sam2(sam) -> bool:
    """True for a SAM 2 model (``sam2``'s ``SAM2Base``), False for segment-anything's ``Sam``."""
    return hasattr(sam, "sam_mask_decoder")


def prompt_encoder(sam):
    return sam.sam_prompt_encoder if is_sam2(sam) else sam.prompt_encoder


def mask_threshold(sam) -> float:
    return 0.0 if is_sam2(sam) else float(sam.mask_threshold)


def image_predictor(sam):
    """Meta's ``SAM2ImagePredictor`` over ``sam`` (its defaults: threshold 0, no hole filling)."""
    import warnings

    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():  # its transforms use torch.jit.script, deprecated in recent torch
        warnings.simplefilter("ignore", FutureWarning)
        return SAM2ImagePredictor(sam)


def encode(official, img8) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(image embedding (1, 256, 64, 64), finer feature maps) of an (H, W, 3) uint8 slice."""
    official.set_image(img8)
    feats = official._features
    official.reset_predictor()
    return feats["image_embed"].float(), tuple(f.float() for f in feats["high_res_feats"])


def boxes_as_points(points, boxes):
    """SAM 2 takes a box as two corner points labelled 2 and 3, before the clicks
    (``SAM2ImagePredictor._predict``): -> (points, None). points: (xy (n, k, 2), labels (n, k))
    tensors or None; boxes: (n, 4) XYXY tensor or None."""
    import torch

    if boxes is None:
        return points, None
    corners = boxes.reshape(-1, 2, 2)
    labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(len(boxes), 1)
    if points is None:
        return (corners, labels), None
    return (torch.cat([corners, points[0]], 1), torch.cat([labels, points[1]], 1)), None


def decode(sam, emb, sparse, dense, multimask: bool):
    """SAM 2's mask decoder for n objects on ``emb`` (its finer maps included)
    -> (low-res logits (n, c, 256, 256), iou (n, c)). The logits are not clamped:
    the masks are thresholded from them, as in SAM2ImagePredictor."""
    low, iou, _, _ = sam.sam_mask_decoder(
        image_embeddings=emb.features, image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
        repeat_image=len(sparse) > 1, high_res_features=list(emb.high_res),
    )
    return low, iou

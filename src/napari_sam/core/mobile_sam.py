"""MobileSAM: SAM's prompt encoder and mask decoder behind a TinyViT image encoder.

MobileSAM (Zhang et al. 2023, github.com/ChaoningZhang/MobileSAM) and micro-sam's
``vit_t`` models are SAM state dicts whose ``image_encoder`` is a TinyViT (5M) run
on SAM's 1024 px canvas with a stride of 16 and SAM's neck, so its embedding is
SAM's (256 x 64 x 64) and everything after the encoder is segment-anything's.
The encoder is kornia's TinyViT with ``mobile_sam=True``, which has MobileSAM's
modules and parameter names (kornia loads MobileSAM's own checkpoint strictly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ARCH = "vit_t"
# TinyViT variants by (first, last) stage width; MobileSAM and micro-sam use "5m".
_VARIANTS = {(64, 320): "5m", (64, 448): "11m", (96, 576): "21m"}
_CANVAS, _EMBED = 1024, 256


def tiny_vit_widths(sd: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(first, last) stage width of a MobileSAM-layout state dict, or None if it is not one."""
    stem = sd.get("image_encoder.patch_embed.seq.2.c.weight")
    neck = sd.get("image_encoder.neck.0.weight")
    if stem is None or neck is None or stem.ndim != 4 or neck.ndim != 4:
        return None
    if not any(k.startswith("image_encoder.layers.") for k in sd):
        return None
    return int(stem.shape[0]), int(neck.shape[1])


def infer_tiny_vit(sd: dict[str, torch.Tensor]) -> str | None:
    """The TinyViT variant ("5m", "11m", "21m") of a MobileSAM-layout state dict, or None."""
    return _VARIANTS.get(tiny_vit_widths(sd))


def unknown_widths(widths: tuple[int, int]) -> str:
    known = ", ".join(f"{v} {a}-{b}" for (a, b), v in _VARIANTS.items())
    return f"its TinyViT stage widths {widths[0]}-{widths[1]} are no TinyViT variant ({known})"


def tiny_vit_class():
    """kornia's TinyViT class; a ModelError saying how to install kornia when it is missing."""
    try:
        from kornia.models.tiny_vit import TinyViT
    except ImportError:
        try:  # kornia < 0.8.1 kept it under contrib
            from kornia.contrib.models.tiny_vit import TinyViT
        except ImportError:
            from .checkpoints import ModelError

            raise ModelError(
                "this is a MobileSAM (TinyViT) checkpoint; its image encoder comes from kornia, which is not "
                "installed: pip install 'kornia>=0.8'"
            ) from None
    return TinyViT


def build_mobile_sam(variant: str = "5m"):
    """An untrained MobileSAM-architecture ``segment_anything`` ``Sam`` (load weights into it)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    encoder = tiny_vit_class().from_config(variant, img_size=_CANVAS, mobile_sam=True)
    grid = _CANVAS // 16
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=_EMBED, image_embedding_size=(grid, grid), input_image_size=(_CANVAS, _CANVAS), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=_EMBED, mlp_dim=2048, num_heads=8),
            transformer_dim=_EMBED,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )

"""The embedded model: SAM's prompt encoder and mask decoder (from
segment-anything, at width 128) on a small CNN image encoder.

The encoder downsamples 8x (SAM's ViT: 16x), keeps global context with one
attention block at 1/16, and ends in SAM's neck (1x1 conv, LayerNorm2d, 3x3
conv, LayerNorm2d). It is fully convolutional, so it runs at the slice's own
pixel size (``native_resolution``; magnified by ``input_scale``): a 5 px nucleus becomes 10 px instead of being
rescaled to a fixed 1024 canvas. Everything after the encoder is the official
``segment_anything`` code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

EMBEDDED_DEFAULT_CONFIG = {
    "arch": "napari-sam-tiny-cnn",
    "embed_dim": 128,
    "widths": [24, 48, 128],
    "blocks_1_8": 3,
    "dilations": [1, 2, 4],
    "attn_heads": 4,
    "decoder_depth": 2,
    "decoder_mlp_dim": 512,
    "decoder_heads": 4,
    "img_size": 512,  # nominal; the encoder runs at the slice's own size
    "stride": 8,
    "max_size": 1024,  # one encoder pass at most; longer (magnified) slices are encoded in tiles (core/tiles.py)
    # inference: slices are magnified 2x before encoding (at most tiles.MAX_TILED**2 pixels). The model was
    # trained on slices magnified 1-2.2x (train.py --max-scale); 2x was chosen on validation stacks (seeds
    # 800000-800007, 1x ... 2.5x in docs/embedded-model.md). The shipped checkpoint carries its own value.
    "input_scale": 2.0,
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


class _ConvBN(nn.Sequential):
    def __init__(self, cin, cout, stride=1, dilation=1, act=True):
        layers = [
            nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _ResBlock(nn.Module):
    def __init__(self, ch, dilation=1):
        super().__init__()
        self.a = _ConvBN(ch, ch, dilation=dilation)
        self.b = _ConvBN(ch, ch, dilation=dilation, act=False)

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)), inplace=True)


class _GlobalAttention(nn.Module):
    """One pre-norm transformer block over all tokens (scaled-dot-product attention)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):  # x: (B, C, H, W)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(t)).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        t = t + self.proj(a)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class TinyCNNEncoder(nn.Module):
    """Image encoder: (B, 3, H, W) normalised pixels -> (B, embed_dim, H/8, W/8).

    H and W must be multiples of 16 (the predictor pads to that).
    """

    native_resolution = True

    def __init__(self, cfg: dict):
        super().__init__()
        w1, w2, w3 = cfg["widths"]
        self.img_size = int(cfg["img_size"])
        self.stride = int(cfg["stride"])
        self.max_size = int(cfg["max_size"])
        self.input_scale = float(cfg.get("input_scale", 1.0))
        self.stem = nn.Sequential(_ConvBN(3, w1, stride=2), _ConvBN(w1, w2, stride=2), _ResBlock(w2))
        self.down = _ConvBN(w2, w3, stride=2)
        self.blocks = nn.Sequential(*[_ResBlock(w3, d) for d in cfg["dilations"][: cfg["blocks_1_8"]]])
        self.ctx_down = _ConvBN(w3, w3, stride=2)
        self.attn = _GlobalAttention(w3, cfg["attn_heads"])
        self.fuse = _ConvBN(w3, w3)
        from segment_anything.modeling.common import LayerNorm2d

        d = cfg["embed_dim"]
        self.neck = nn.Sequential(
            nn.Conv2d(w3, d, 1, bias=False),
            LayerNorm2d(d),
            nn.Conv2d(d, d, 3, padding=1, bias=False),
            LayerNorm2d(d),
        )

    def forward(self, x):
        x = self.blocks(self.down(self.stem(x)))
        ctx = self.attn(self.ctx_down(x))
        x = self.fuse(x + F.interpolate(ctx, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.neck(x)


PE_REFERENCE = 256  # the training slices' size, in pixels


def _native_prompt_encoder_cls():
    from segment_anything.modeling import PromptEncoder

    class NativePromptEncoder(PromptEncoder):
        """SAM's PromptEncoder, with coordinates in pixels / ``PE_REFERENCE``.

        SAM normalises prompt coordinates and its dense positional encoding by
        the size of its (fixed, 1024 px) input. The embedded model runs at the
        slice's own size, so normalising by the slice size would change the
        scale of the positional code with every slice size (a 20 px nucleus
        would look twice as big, in the decoder's coordinates, on a 128 px
        slice as on the 256 px slices it was trained on). Here both points and
        the dense grid are normalised by the fixed training size instead:
        identical to training on 256 px slices, consistent at any other size
        (SAM's random Fourier features depend on coordinate differences).
        Same parameters and state-dict keys as PromptEncoder.
        """

        stride = 8

        def get_dense_pe(self):
            gh, gw = self.image_embedding_size
            dev = self.pe_layer.positional_encoding_gaussian_matrix.device
            y = (torch.arange(gh, device=dev, dtype=torch.float32) + 0.5) * (self.stride / PE_REFERENCE)
            x = (torch.arange(gw, device=dev, dtype=torch.float32) + 0.5) * (self.stride / PE_REFERENCE)
            yy, xx = torch.meshgrid(y, x, indexing="ij")
            pe = self.pe_layer._pe_encoding(torch.stack([xx, yy], dim=-1))
            return pe.permute(2, 0, 1).unsqueeze(0)

    return NativePromptEncoder


def build_embedded_sam(cfg: dict | None = None):
    """A ``segment_anything.modeling.Sam`` with the tiny CNN encoder.

    ``cfg`` is the configuration stored in the checkpoint (defaults above).
    """
    from segment_anything.modeling import MaskDecoder, Sam, TwoWayTransformer

    cfg = {**EMBEDDED_DEFAULT_CONFIG, **(cfg or {})}
    d = cfg["embed_dim"]
    size = cfg["img_size"]
    grid = size // cfg["stride"]
    sam = Sam(
        image_encoder=TinyCNNEncoder(cfg),
        prompt_encoder=_native_prompt_encoder_cls()(
            embed_dim=d, image_embedding_size=(grid, grid), input_image_size=(PE_REFERENCE, PE_REFERENCE), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg["decoder_depth"], embedding_dim=d, mlp_dim=cfg["decoder_mlp_dim"], num_heads=cfg["decoder_heads"]
            ),
            transformer_dim=d,
            iou_head_depth=3,
            iou_head_hidden_dim=d,
        ),
        pixel_mean=cfg["pixel_mean"],
        pixel_std=cfg["pixel_std"],
    )
    return sam


def set_grid(sam, input_hw: tuple[int, int]) -> None:
    """Point SAM's prompt encoder at a padded input of ``input_hw`` (H, W).

    The embedding grid follows the slice; prompt coordinates keep being
    normalised by ``PE_REFERENCE`` (see ``NativePromptEncoder``). Official ViT
    models keep their fixed 1024 canvas and never call this.
    """
    pe = sam.prompt_encoder
    stride = sam.image_encoder.stride
    h, w = int(input_hw[0]), int(input_hw[1])
    pe.stride = stride
    pe.input_image_size = (PE_REFERENCE, PE_REFERENCE)
    pe.image_embedding_size = (h // stride, w // stride)
    pe.mask_input_size = (4 * (h // stride), 4 * (w // stride))

"""The fast ViT encoder path against segment-anything's own forward, on the same weights."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ._sam_helpers import distinctive  # noqa: E402

from napari_sam.core.fast_vit import encode, is_vit_encoder, run_encoder  # noqa: E402


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


def _encoder(img_size=1024, dim=64, depth=3, heads=2, window=14, glob=(1,), rel_pos=True, qkv_bias=True):
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=img_size, embed_dim=dim, depth=depth, num_heads=heads, window_size=window,
                          global_attn_indexes=glob, use_rel_pos=rel_pos, qkv_bias=qkv_bias, out_chans=32)
    return distinctive(enc)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # SAM's layout: 64x64 tokens, 14 px windows (padded to 70), one global block
        {"img_size": 224, "window": 7},  # windows tile the grid exactly: no padding
        {"img_size": 256, "window": 7, "qkv_bias": False},  # padded windows without a qkv bias
        {"img_size": 256, "window": 5, "rel_pos": False, "glob": (0, 2)},  # no relative positions
    ],
)
def test_equals_official_forward(kwargs):
    enc = _encoder(**kwargs)
    size = kwargs.get("img_size", 1024)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = enc(x)
    out = encode(enc, x)
    assert out.shape == ref.shape
    assert _rel(ref, out) < 1e-5


def test_leaves_the_module_untouched():
    enc = _encoder(img_size=224, window=7)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cls = type(enc)
    encode(enc, torch.randn(1, 3, 224, 224))
    assert type(enc) is cls
    after = enc.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_run_encoder_dispatch():
    enc = _encoder(img_size=224, window=7)
    assert is_vit_encoder(enc)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert _rel(enc(x), run_encoder(enc, x)) < 1e-5
        assert torch.equal(run_encoder(enc, x, fast=False), enc(x))
    conv = torch.nn.Conv2d(3, 4, 3)
    assert not is_vit_encoder(conv)
    with torch.inference_mode():
        assert torch.equal(run_encoder(conv, x), conv(x))


def _embed(model, image, fast: bool):
    """One slice's embedding through the official encoder forward or the fast path (same weights)."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    from napari_sam.core.predictor import SlicePredictor

    pred = SlicePredictor(model, normalize="none")
    pred.fast = fast  # honoured once the predictor routes through run_encoder
    enc = model.sam.image_encoder
    enc.forward = (lambda x: encode(enc, x)) if fast else (lambda x: ImageEncoderViT.forward(enc, x))
    try:
        return pred, pred.embed(image, channel_axis=-1)
    finally:
        del enc.forward


def _official_vs_fast(model, image, prompts):
    """Embeddings and masks of one slice through the official and the fast encoder."""
    pred, ref = _embed(model, image, fast=False)
    _, fast = _embed(model, image, fast=True)
    masks, logits = [], []
    for emb in (ref, fast):
        pred.set_embedding(emb)
        preds = [pred.predict(**p) for p in prompts]
        masks.append([r.masks for r in preds])
        logits.append([pred._postprocess(torch.from_numpy(r.low_res_logits)).numpy() for r in preds])
    return ref.features, fast.features, masks, logits


def _same_masks(masks, logits, rel=1e-3):
    """Masks identical wherever the official logit is not within ``rel`` of zero; the fraction that differs."""
    differ = total = 0
    for a, b, la in zip(*masks, logits[0]):
        flipped = a != b
        near_zero = np.abs(la) <= rel * np.abs(la).max()
        assert not (flipped & ~near_zero).any()
        differ, total = differ + int(flipped.sum()), total + a.size
    return differ / total


PROMPTS = [
    {"points": [[140.0, 200.0]]},
    {"points": [[140.0, 200.0], [20.0, 20.0]], "point_labels": [1, 0]},
    {"boxes": [100.0, 150.0, 180.0, 260.0]},
    {"boxes": [[100.0, 150.0, 180.0, 260.0], [10.0, 10.0, 60.0, 90.0]]},
]


@pytest.fixture(scope="module")
def rgb_image():
    rng = np.random.default_rng(1)
    img = (rng.random((300, 420, 3)) * 255).astype(np.uint8)
    img[100:180, 150:260] = (220, 200, 180)
    return img


def test_small_vit_checkpoint_same_embedding_and_masks(tmp_path, rgb_image):
    from segment_anything.build_sam import _build_sam

    from napari_sam.core.models import load_model

    torch.manual_seed(0)
    sam = distinctive(_build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                                  encoder_global_attn_indexes=[1]))
    path = tmp_path / "small_vit.pth"
    torch.save(sam.state_dict(), path)
    ref, fast, masks, logits = _official_vs_fast(load_model(str(path), device="cpu"), rgb_image, PROMPTS)
    assert _rel(ref, fast) < 1e-5
    assert _same_masks(masks, logits) < 1e-4


@pytest.mark.slow
def test_vit_b_checkpoint_same_embedding_and_masks(tmp_path, rgb_image):
    """A randomly initialised ViT-B saved as an official-format state dict (~360 MB)."""
    from segment_anything import sam_model_registry

    from napari_sam.core.models import load_model

    torch.manual_seed(0)
    sam = distinctive(sam_model_registry["vit_b"](checkpoint=None), scale=0.01)
    path = tmp_path / "vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    del sam
    model = load_model(str(path), device="cpu")
    assert model.arch == "vit_b"
    ref, fast, masks, logits = _official_vs_fast(model, rgb_image, PROMPTS)
    assert _rel(ref, fast) < 1e-3
    assert float((ref - fast).norm() / ref.norm()) < 1e-4
    # Random weights make salt-and-pepper masks whose logits crowd around 0; a few such pixels may flip.
    assert _same_masks(masks, logits) < 1e-3

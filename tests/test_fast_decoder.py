"""The fast mask-decoder path against segment-anything's MaskDecoder, on the same weights."""

import pytest

torch = pytest.importorskip("torch")

from ._sam_helpers import distinctive  # noqa: E402

from napari_sam.core.fast_decoder import decode, dense_pe  # noqa: E402


@pytest.fixture(scope="module", params=["vit", "embedded"])
def sam(request):
    torch.manual_seed(0)
    if request.param == "vit":
        from segment_anything.build_sam import _build_sam

        return distinctive(_build_sam(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                                       encoder_global_attn_indexes=[0]))
    from napari_sam.core.embedded import build_embedded_sam

    return distinctive(build_embedded_sam())


def _prompts(sam, n_obj, n_pts, box, mask, seed):
    g = torch.Generator().manual_seed(seed)
    size = sam.prompt_encoder.input_image_size[0]
    points = (torch.rand(n_obj, n_pts, 2, generator=g) * size, torch.randint(0, 2, (n_obj, n_pts), generator=g)) if n_pts else None
    boxes = torch.sort(torch.rand(n_obj, 2, 2, generator=g) * size, dim=1).values.reshape(n_obj, 4) if box else None
    masks = torch.randn(n_obj, 1, *sam.prompt_encoder.mask_input_size, generator=g) * 8 if mask else None
    return points, boxes, masks


@pytest.mark.parametrize("n_obj, n_pts, box, mask, multimask", [
    (1, 1, False, False, True),  # one click, three candidates
    (1, 3, False, False, False),
    (1, 0, True, False, False),  # a box
    (1, 2, True, True, False),  # points, box and a previous mask
    (5, 1, False, False, True),  # several objects in one batch
    (3, 0, True, False, True),
])
def test_same_logits_and_masks_as_official(sam, n_obj, n_pts, box, mask, multimask):
    pe, md = sam.prompt_encoder, sam.mask_decoder
    g = torch.Generator().manual_seed(n_obj * 10 + n_pts)
    emb = torch.randn(1, pe.embed_dim, *pe.image_embedding_size, generator=g)
    with torch.inference_mode():
        points, boxes, masks = _prompts(sam, n_obj, n_pts, box, mask, 1)
        sparse, dense = pe(points=points, boxes=boxes, masks=masks)
        ref, ref_iou = md(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                          dense_prompt_embeddings=dense, multimask_output=multimask)
    low, iou = decode(md, emb, dense_pe(pe), sparse, dense, multimask)
    assert low.shape == ref.shape and iou.shape == ref_iou.shape
    assert float((low - ref).abs().max() / ref.abs().max()) < 1e-5
    assert float((iou - ref_iou).abs().max()) < 1e-5
    # Masks: identical except where the official logit is indistinguishable from 0 (float rounding;
    # random weights put many logits there, a trained model few).
    flipped = (low > 0) != (ref > 0)
    assert not flipped.any() or float(ref[flipped].abs().max()) <= 1e-5 * float(ref.abs().max())
    assert int(flipped.sum()) <= 1e-4 * ref.numel()


def test_dense_pe_is_remembered_until_the_weights_change(sam):
    pe = sam.prompt_encoder
    a = dense_pe(pe)
    assert torch.equal(a, pe.get_dense_pe()) and dense_pe(pe) is a
    with torch.no_grad():
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(1.5)
    b = dense_pe(pe)
    assert b is not a and torch.equal(b, pe.get_dense_pe())


def test_unusual_upscaling_runs_the_module_itself(sam, monkeypatch):
    md = sam.mask_decoder
    calls = []
    monkeypatch.setattr(type(md), "forward", lambda self, **k: calls.append(k["image_embeddings"].shape[0])
                        or (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3)))
    monkeypatch.setattr(md, "output_upscaling", torch.nn.Sequential(*list(md.output_upscaling)[:3]))
    c = md.transformer_dim
    one, two = torch.zeros(1, c, 2, 2), torch.zeros(2, c, 2, 2)
    masks, iou = decode(md, one, one, torch.zeros(1, 2, c), one, True)
    assert masks.shape == (1, 3, 8, 8) and calls == [1]
    masks, iou = decode(md, two, one, torch.zeros(2, 2, c), two, True)  # one embedding per object: one call each
    assert masks.shape == (2, 3, 8, 8) and iou.shape == (2, 3) and calls == [1, 1, 1]

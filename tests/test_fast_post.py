"""Cropped mask upsampling against SAM's full postprocessing: identical masks."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from napari_sam.core import fast_post  # noqa: E402
from napari_sam.core.fast_post import masks_from_low_res  # noqa: E402


def _official(low, canvas, input_size, original_size):
    """segment-anything's Sam.postprocess_masks, then > 0."""
    m = F.interpolate(low, canvas, mode="bilinear", align_corners=False)[..., : input_size[0], : input_size[1]]
    return (F.interpolate(m, original_size, mode="bilinear", align_corners=False) > 0).numpy()


def _native(low, padded, input_size, original_size):
    """The predictor's native-resolution path, then > 0."""
    m = F.interpolate(low, padded, mode="bilinear", align_corners=False)[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(original_size):
        m = F.interpolate(m, original_size, mode="bilinear", align_corners=False)
    return (m > 0).numpy()


def _logits(rng, n=2, size=256, blobs=1, max_blob=40):
    low = torch.from_numpy((rng.standard_normal((n, 3, size, size)) - 9).astype(np.float32))
    for _ in range(blobs):
        r, c = rng.integers(0, size - 1, 2)
        h, w = rng.integers(1, max_blob, 2)
        low[..., r : r + h, c : c + w] += torch.from_numpy((rng.random((h, w)) * 12).astype(np.float32))[
            : min(h, size - r), : min(w, size - c)]
    return low


@pytest.fixture
def cropped_only(monkeypatch):
    """Fail if the plain full-size path runs: the test must exercise the cropped one."""
    assert fast_post.calibrate() is not None, "F.interpolate's arithmetic not reproduced on this platform"

    def refuse(*a, **k):
        raise AssertionError("full path used")

    monkeypatch.setattr(fast_post, "full_masks", refuse)


def _vit_geometry(H, W, target=1024):
    s = target / max(H, W)
    return (int(H * s + 0.5), int(W * s + 0.5))


@pytest.mark.parametrize("seed", range(12))
def test_vit_path_identical_masks(seed, cropped_only):
    rng = np.random.default_rng(seed)
    H, W = (int(v) for v in rng.integers(40, 2100, 2))
    low = _logits(rng, max_blob=25)
    inp = _vit_geometry(H, W)
    got = masks_from_low_res(low, (1024, 1024), inp, (H, W))
    assert got.dtype == bool and got.shape == (2, 3, H, W)
    assert np.array_equal(got, _official(low, (1024, 1024), inp, (H, W)))


@pytest.mark.parametrize("shape", [(512, 512), (1024, 1024), (300, 420), (1000, 1463), (2048, 2048), (7, 900)])
def test_vit_path_common_sizes_and_edges(shape, cropped_only):
    rng = np.random.default_rng(sum(shape))
    inp = _vit_geometry(*shape)
    for r, c in [(0, 0), (250, 250), (0, 250), (120, 0)]:
        low = torch.full((1, 3, 256, 256), -5.0)
        block = low[..., max(r - 6, 0) : r + 6, max(c - 6, 0) : c + 6]
        block.copy_(torch.from_numpy((rng.random(block.shape) * 8 - 2).astype(np.float32)))
        got = masks_from_low_res(low, (1024, 1024), inp, shape)
        assert np.array_equal(got, _official(low, (1024, 1024), inp, shape))


@pytest.mark.parametrize("seed", range(8))
def test_native_path_identical_masks(seed, cropped_only):
    rng = np.random.default_rng(100 + seed)
    H, W = (int(v) for v in rng.integers(30, 1024, 2))
    padded = (-(-H // 16) * 16, -(-W // 16) * 16)
    low = _logits(rng, size=max(padded) // 2, max_blob=12)[..., : padded[0] // 2, : padded[1] // 2]
    got = masks_from_low_res(low, padded, (H, W), (H, W))
    assert np.array_equal(got, _native(low, padded, (H, W), (H, W)))
    small = (max(H // 2, 1), max(W // 3, 1))  # slice larger than the encoder's max size: resized back
    got = masks_from_low_res(low, padded, (H, W), small)
    assert np.array_equal(got, _native(low, padded, (H, W), small))


def test_empty_and_large_objects():
    low = torch.full((1, 3, 256, 256), -3.0)
    assert not masks_from_low_res(low, (1024, 1024), (1024, 768), (800, 600)).any()
    low[..., 10:250, 10:250] = 4.0  # most of the slice: the full path runs, same answer
    assert np.array_equal(masks_from_low_res(low, (1024, 1024), (1024, 768), (800, 600)),
                          _official(low, (1024, 1024), (1024, 768), (800, 600)))


def test_threshold_other_than_zero_uses_the_full_path(monkeypatch):
    calls = []
    real = fast_post.full_masks
    monkeypatch.setattr(fast_post, "full_masks", lambda *a, **k: calls.append(1) or real(*a, **k))
    low = torch.randn(1, 3, 256, 256)
    got = masks_from_low_res(low, (1024, 1024), (1024, 1024), (512, 512), threshold=0.5)
    m = F.interpolate(F.interpolate(low, (1024, 1024), mode="bilinear"), (512, 512), mode="bilinear") > 0.5
    assert calls and np.array_equal(got, m.numpy())

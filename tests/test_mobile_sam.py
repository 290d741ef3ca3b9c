"""MobileSAM (TinyViT encoder) checkpoints: MobileSAM's own and micro-sam's vit_t models.

No MobileSAM weights can be downloaded here, so a randomly initialised model with
MobileSAM's architecture and parameter names stands in: what is checked is that
such a file loads by path and by registry name (from a server on 127.0.0.1,
checksum verified) and that napari-sam's predictor gives exactly what
segment-anything's official SamPredictor gives with the same model.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_sam.core import models  # noqa: E402
from napari_sam.core.models import ModelError, ModelSpec, load_model  # noqa: E402

from ._sam_helpers import click_and_commit_in_widget, predictor_pair, same_weights, save_mobile_sam  # noqa: E402


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    """(module, path) of a MobileSAM-layout checkpoint."""
    return save_mobile_sam(tmp_path_factory.mktemp("mobile") / "mobile_sam.pt")


@pytest.fixture(scope="module")
def pair(mobile):
    from segment_anything import SamPredictor

    return predictor_pair(mobile[1], SamPredictor)


def test_mobile_sam_checkpoint_loads_by_path_as_vit_t(mobile, pair):
    sam, path = mobile
    loaded = pair[0]
    assert (loaded.arch, loaded.name, loaded.native_resolution) == ("vit_t", "mobile_sam.pt", False)
    assert type(loaded.sam.image_encoder).__name__ == "TinyViT"
    assert not loaded.sam.training and same_weights(loaded.sam, sam)


def test_embedding_and_masks_equal_official_sam_predictor(pair):
    _, ours, off = pair
    assert ours.embedding.features.shape == (1, 256, 64, 64)
    assert torch.equal(ours.embedding.features, off.features)
    pts = np.array([[130.0, 175.0], [20.0, 20.0]])  # (row, col): inside the bright object, and background
    r = ours.predict(points=pts, point_labels=[1, 0], multimask=True)
    m, s, lr = off.predict(point_coords=pts[:, ::-1].copy(), point_labels=np.array([1, 0]), multimask_output=True)
    assert r.masks.shape == (1, 3, 260, 380)
    np.testing.assert_array_equal(r.masks[0], m)
    np.testing.assert_allclose(r.scores[0], s, atol=1e-4)
    np.testing.assert_allclose(r.low_res_logits[0], lr, atol=1e-4)
    box = np.array([85.0, 115.0, 175.0, 235.0])  # row0, col0, row1, col1
    rb = ours.predict(boxes=box, multimask=False)
    mb, sb, _ = off.predict(box=box[[1, 0, 3, 2]], multimask_output=False)
    np.testing.assert_array_equal(rb.masks[0], mb)
    np.testing.assert_allclose(rb.scores[0], sb, atol=1e-4)


def test_vit_t_downloads_by_name_verified_and_loads(pair, mobile, server, monkeypatch):
    """A registry entry like MobileSAM's: xxh128 checksum, a URL without a file name."""
    xxhash = pytest.importorskip("xxhash")
    base, folder, seen = server
    data = mobile[1].read_bytes()
    (folder / "s" / "vit_t").mkdir(parents=True)
    (folder / "s" / "vit_t" / "download").write_bytes(data)
    spec = ModelSpec(f"{base}/s/vit_t/download", "xxh128:" + xxhash.xxh128(data).hexdigest(), "vit_t", "t", "vt.pt")
    monkeypatch.setitem(models.REGISTRY, "vit_t_test", spec)
    loaded = load_model("vit_t_test", device="cpu", progress=False)
    assert (loaded.name, loaded.arch, loaded.path.name) == ("vit_t_test", "vit_t", "vt.pt")
    assert seen == ["/s/vit_t/download"] and loaded.path.read_bytes() == data
    assert same_weights(loaded.sam, pair[0].sam)


def test_registry_knows_mobile_sam_and_micro_sams_vit_t_models():
    for name in ("vit_t", "vit_t_lm", "vit_t_em_organelles"):
        spec = models.REGISTRY[name]
        assert spec.arch == "vit_t" and spec.known_hash.startswith("xxh128:") and spec.url.startswith("https://")


def test_tiny_vit_of_another_width_is_named(mobile, tmp_path):
    sd = dict(mobile[0].state_dict())
    sd["image_encoder.neck.0.weight"] = torch.zeros(256, 200, 1, 1)  # a last stage 200 wide: no TinyViT
    path = tmp_path / "odd.pt"
    torch.save(sd, path)
    with pytest.raises(ModelError, match=r"layout of a MobileSAM checkpoint, but its TinyViT stage widths 64-200 "
                                         r"are no TinyViT variant \(5m 64-320"):
        load_model(path, device="cpu")


def test_missing_kornia_says_how_to_install(mobile, monkeypatch):
    monkeypatch.setitem(sys.modules, "kornia", None)  # import kornia.* now raises ImportError
    monkeypatch.setitem(sys.modules, "kornia.models.tiny_vit", None)
    monkeypatch.setitem(sys.modules, "kornia.contrib.models.tiny_vit", None)
    with pytest.raises(ModelError, match=r"MobileSAM \(TinyViT\) checkpoint; .*kornia.*pip install 'kornia>=0.8'"):
        load_model(mobile[1], device="cpu")


@pytest.mark.gui
def test_widget_runs_a_mobile_sam_checkpoint_like_the_official_predictor(mobile, make_napari_viewer, qtbot):
    """The dock widget loads a MobileSAM file; a click's preview is the official predictor's top mask,
    and committing it writes it as object 1 on that slice only."""
    from segment_anything import SamPredictor

    rgb8, preview, labels = click_and_commit_in_widget(make_napari_viewer, qtbot, mobile[1])

    official = SamPredictor(mobile[0])
    official.set_image(rgb8)
    logits, scores, _ = official.predict(point_coords=np.array([[120.0, 100.0]]), point_labels=np.array([1]),
                                         return_logits=True)
    top = logits[int(np.argmax(scores))]
    # the widget decodes with napari-sam's faster decoder: equal up to float rounding, so pixels
    # whose logit sits within rounding of the threshold may differ
    differ = preview != (top > 0)
    assert preview.sum() > 100 and differ.sum() <= 0.001 * preview.size
    assert np.abs(top[differ]).max(initial=0) < 1e-3

    np.testing.assert_array_equal(labels[1], np.where(preview, 1, 0))
    assert not labels[[0, 2]].any()

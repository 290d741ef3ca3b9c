"""SAM 2 / 2.1 checkpoints, run through Meta's sam2 package.

No SAM 2 weights can be downloaded here, so randomly initialised models with
SAM 2's architectures and Meta's checkpoint layout ({"model": state dict})
stand in: what is checked is that such files load by path, that every prompt
kind gives exactly what Meta's SAM2ImagePredictor gives with the same model,
and that SAM 2's larger embedding (three feature maps) survives the memory
and disk caches, the CLI and the widget.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from napari_sam.core.models import ModelError, load_model  # noqa: E402

from ._sam_helpers import click_and_commit_in_widget, predictor_pair, same_weights, save_sam2  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(module, path) of a SAM 2.1 Hiera-tiny checkpoint."""
    return save_sam2(tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="module")
def pair(tiny):
    from napari_sam.core.sam2_model import image_predictor

    return predictor_pair(tiny[1], image_predictor)


def test_sam2_checkpoint_loads_by_path(tiny, pair):
    loaded = pair[0]
    assert (loaded.arch, loaded.name, loaded.native_resolution) == ("sam2.1_hiera_tiny", tiny[1].name, False)
    assert not loaded.sam.training and same_weights(loaded.sam, tiny[0])


def test_sam2_0_is_told_from_2_1(tmp_path):
    sam, path = save_sam2(tmp_path / "sam2_hiera_tiny.pt", arch="sam2_hiera_tiny")
    assert load_model(path, device="cpu").arch == "sam2_hiera_tiny"


def test_embedding_is_the_official_one_with_its_finer_maps(pair):
    _, ours, off = pair
    emb = ours.embedding
    assert torch.equal(emb.features, off._features["image_embed"])
    assert [tuple(t.shape) for t in emb.high_res] == [(1, 32, 256, 256), (1, 64, 128, 128)]
    assert all(torch.equal(a, b) for a, b in zip(emb.high_res, off._features["high_res_feats"]))


def test_clicks_box_mask_and_many_objects_equal_the_official_predictor(pair):
    _, ours, off = pair
    pts = np.array([[130.0, 175.0], [20.0, 20.0]])  # (row, col)
    r = ours.predict(points=pts, point_labels=[1, 0], multimask=True)
    m, s, lr = off.predict(point_coords=pts[:, ::-1].copy(), point_labels=np.array([1, 0]), multimask_output=True)
    assert r.masks.shape == (1, 3, 260, 380) and 0 < m.sum() < m.size
    np.testing.assert_array_equal(r.masks[0], m)
    np.testing.assert_allclose(r.scores[0], s, atol=1e-5)
    np.testing.assert_allclose(r.low_res_logits[0], lr, atol=1e-5)  # clamped to +-32, as SAM 2 hands them back

    box = np.array([85.0, 115.0, 175.0, 235.0])  # row0, col0, row1, col1
    rb = ours.predict(points=pts[:1], point_labels=[1], boxes=box, mask=r.low_res_logits[0, :1], multimask=False)
    mb, sb, _ = off.predict(point_coords=pts[:1, ::-1].copy(), point_labels=np.array([1]), box=box[[1, 0, 3, 2]],
                            mask_input=r.low_res_logits[0, :1], multimask_output=False)
    np.testing.assert_array_equal(rb.masks[0], mb)
    np.testing.assert_allclose(rb.scores[0], sb, atol=1e-5)

    boxes = np.array([[85.0, 115.0, 175.0, 235.0], [10.0, 10.0, 60.0, 80.0]])
    rbb = ours.predict(boxes=boxes, multimask=False)
    mbb, sbb, _ = off.predict(box=boxes[:, [1, 0, 3, 2]], multimask_output=False)
    np.testing.assert_array_equal(rbb.masks, mbb)
    np.testing.assert_allclose(rbb.scores, sbb, atol=1e-5)


def test_slices_embedded_from_two_threads_get_their_own_embedding(pair):
    """The widget embeds ahead in a worker while a click's slice is embedded: SAM 2's official
    predictor holds the image it encodes, so the two must not mix."""
    from concurrent.futures import ThreadPoolExecutor

    _, ours, _ = pair
    rng = np.random.default_rng(5)
    slices = [(rng.random((120, 150)) * 255).astype(np.uint8) for _ in range(2)]
    alone = [ours.embed(a).features for a in slices]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda a: ours.embed(a).features, slices))
    assert not torch.equal(alone[0], alone[1])
    assert all(torch.equal(a, b) for a, b in zip(alone, together))


def test_memory_cache_keeps_all_three_maps(pair):
    from napari_sam.core.cache import EmbeddingCache

    _, ours, _ = pair
    cache = EmbeddingCache()
    stored = cache.put("k", ours.embedding)
    back = cache.get("k")
    assert stored == 2 * sum(t.nelement() for t in ours.embedding.tensors) + ours.embedding.gray.nbytes
    assert len(back.high_res) == 2
    assert all(torch.allclose(a, b, rtol=1e-2, atol=1e-2) for a, b in zip(back.tensors, ours.embedding.tensors))


def test_cli_embeds_a_stack_to_disk_and_segments_from_it_like_without(tiny, tmp_path):
    import tifffile
    import zarr

    from napari_sam.cli import main
    from napari_sam.synthetic import make_stack

    st = make_stack((3, 96, 128), seed=6, radius_range=(10, 18), density=0.3)
    tifffile.imwrite(tmp_path / "s.tif", st.image)
    (tmp_path / "p.csv").write_text("z,y,x,object\n1,48,64,1\n2,30,40,2\n")
    assert main(["embed", str(tmp_path / "s.tif"), "--model", str(tiny[1]), "--out", str(tmp_path / "e.zarr")]) == 0
    g = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")
    assert g["high_res_0"].shape == (3, 32, 256, 256) and g["high_res_1"].shape == (3, 64, 128, 128)
    args = ["segment", str(tmp_path / "s.tif"), "--points", str(tmp_path / "p.csv"), "--model", str(tiny[1])]
    assert main([*args, "--out", str(tmp_path / "a.tif")]) == 0
    assert main([*args, "--embeddings", str(tmp_path / "e.zarr"), "--out", str(tmp_path / "b.tif")]) == 0
    a, b = tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif")
    assert set(np.unique(a)) <= {0, 1, 2} and (a[1] == 1).sum() > 0 and not a[0].any()
    # the disk cache holds fp16 maps: masks agree but for pixels at the threshold
    assert (a != b).mean() < 0.01


def test_missing_sam2_package_says_how_to_install(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    with pytest.raises(ModelError, match=r"SAM 2 checkpoint \(sam2.1_hiera_tiny\).*pip install 'napari-sam\[sam2\]'"):
        load_model(tiny[1], device="cpu")


@pytest.mark.gui
def test_widget_runs_a_sam2_checkpoint_like_the_official_predictor(tiny, make_napari_viewer, qtbot):
    """The dock widget loads a SAM 2.1 file; a click's preview is SAM2ImagePredictor's top mask,
    and committing it writes it as object 1 on that slice only."""
    from napari_sam.core.sam2_model import image_predictor

    rgb8, preview, labels = click_and_commit_in_widget(make_napari_viewer, qtbot, tiny[1])

    official = image_predictor(tiny[0])
    official.set_image(rgb8)
    masks, scores, _ = official.predict(point_coords=np.array([[120.0, 100.0]]), point_labels=np.array([1]))
    np.testing.assert_array_equal(preview, masks[int(np.argmax(scores))])

    np.testing.assert_array_equal(labels[1], np.where(preview, 1, 0))
    assert not labels[[0, 2]].any()

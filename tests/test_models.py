"""core/models.py and core/checkpoints.py: registry, download, devices, loading, errors.

Nothing is downloaded from the internet: "downloads" come from an http.server on
127.0.0.1 (the ``server`` fixture of conftest.py) serving a tiny randomly initialised SAM (ViT, embed dim 64, 2 blocks).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import numpy as np
import torch

from napari_sam.core import models
from napari_sam.core.checkpoints import infer_vit
from napari_sam.core.models import ModelError, ModelSpec, choose_dtype, load_model, resolve_device

from ._sam_helpers import same_weights

TINY_KWARGS = dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])


class _Thing:  # an arbitrary Python object: weights_only loading must refuse it
    pass


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory):
    """(module, path) of a randomly initialised small ViT SAM saved as a plain state dict."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    sam = _build_sam(**TINY_KWARGS, checkpoint=None)
    for p in sam.parameters():  # rel_pos and some biases start at zero: make every weight distinctive
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny") / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    return sam.eval(), path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decode(sam, seed=0):
    """SAM's prompt encoder + mask decoder on a fixed random image embedding and one point."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(
            points=(torch.tensor([[[300.0, 500.0]]]), torch.tensor([[1]])), boxes=None, masks=None
        )
        return sam.mask_decoder(
            image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
        )


# --- import cost -------------------------------------------------------------------------------


def test_import_is_light():
    code = (
        "import sys, napari_sam, napari_sam.core.models\n"
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'segment_anything', 'pooch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_public_api():
    import napari_sam

    assert napari_sam.load_model is load_model
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        napari_sam.nope  # noqa: B018


# --- devices and precision ---------------------------------------------------------------------


def _fake_gpu(monkeypatch, cuda=False, mps=False, count=1, bf16=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _fake_gpu(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)


@pytest.mark.parametrize("device", ["cpu", "CPU", torch.device("cpu")])
def test_cpu_always_honoured(monkeypatch, device):
    _fake_gpu(monkeypatch, cuda=True, mps=True)
    assert resolve_device(device) == torch.device("cpu")


def test_explicit_gpu_devices_honoured(monkeypatch):
    _fake_gpu(monkeypatch, cuda=True, mps=True, count=2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("mps") == torch.device("mps")


def test_cuda_refused_without_gpu(monkeypatch):
    _fake_gpu(monkeypatch, cuda=False)
    with pytest.raises(ModelError, match=r"device 'cuda' requested but torch.cuda.is_available\(\) is False") as e:
        resolve_device("cuda")
    assert "device='cpu' or 'auto'" in str(e.value)


def test_cuda_index_beyond_visible_gpus_refused(monkeypatch):
    _fake_gpu(monkeypatch, cuda=True, count=1)
    with pytest.raises(ModelError, match=r"only 1 CUDA device\(s\) are visible \(cuda:0..cuda:0\)"):
        resolve_device("cuda:1")


def test_mps_refused_when_unavailable(monkeypatch):
    _fake_gpu(monkeypatch, mps=False)
    with pytest.raises(ModelError, match=r"torch.backends.mps.is_available\(\) is False"):
        resolve_device("mps")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x", "cpu:1", "mps:0", ""])
def test_unknown_device_lists_valid_ones(bad):
    with pytest.raises(ModelError, match="unknown device") as e:
        resolve_device(bad)
    assert "'auto', 'cpu', 'cuda', 'cuda:N'" in str(e.value) and "'mps'" in str(e.value)


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_half_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch, bf16, expected):
    _fake_gpu(monkeypatch, cuda=True, bf16=bf16)
    assert choose_dtype(torch.device("cuda"), "auto") == expected
    assert choose_dtype("cuda:0", True) == expected
    assert choose_dtype("cuda", False) == torch.float32
    assert choose_dtype("cuda", np.False_) == choose_dtype("cuda", 0) == torch.float32  # ran as "auto"


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_never_half_off_cuda(device):
    assert choose_dtype(device, "auto") == torch.float32
    assert choose_dtype(device, False) == torch.float32
    with pytest.raises(ModelError, match="half precision only on CUDA"):
        choose_dtype(device, True)


def test_half_value_checked():
    with pytest.raises(ModelError, match="half must be 'auto', True or False"):
        choose_dtype("cpu", "yes")


# --- names, paths and files that are not checkpoints ---------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(ModelError) as e:
        load_model("vit_q", device="cpu")
    msg = str(e.value)
    assert msg.startswith("unknown model 'vit_q'")
    for name in ("embedded", "vit_b", "vit_l", "vit_h", "vit_b_lm", "vit_b_em_organelles"):
        assert name in msg
    assert "path to a .pth/.pt checkpoint" in msg


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "sam.pth"
    with pytest.raises(ModelError, match="checkpoint file not found: .*sam.pth"):
        load_model(missing, device="cpu")


def test_folder_is_not_a_file(tmp_path):
    with pytest.raises(ModelError, match="is a folder"):
        load_model(tmp_path, device="cpu")


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 40, b"# just some notes\nthis is not a model\n", b"", b"hello", b"README for the model"],
    ids=["random-bytes", "text", "empty", "text-KeyError", "text-IndexError"],
)
def test_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"model.pth is not a PyTorch checkpoint \(torch.load could not read it"):
        load_model(path, device="cpu")


def test_truncated_checkpoint_and_foreign_zip(tmp_path, tiny_sam):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(tiny_sam[1].read_bytes()[:100_000])
    damaged = r"cut.pth is not a PyTorch checkpoint \(torch.load could not read it: it is a damaged or incomplete"
    with pytest.raises(ModelError, match=damaged):
        load_model(cut, device="cpu")
    import zipfile

    archive = tmp_path / "photos.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(ModelError, match=r"photos.pt is not a PyTorch checkpoint"):
        load_model(archive, device="cpu")


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"weight": torch.zeros(2), "extra": _Thing()}, path)
    with pytest.raises(ModelError, match="holds Python objects other than tensors") as e:
        load_model(path, device="cpu")
    assert "_Thing" in str(e.value)
    assert "weights_only=True" in str(e.value)


@pytest.mark.parametrize(
    "obj, message",
    [(torch.zeros(3), "holds a Tensor, not a state dict"), ({"lr": 0.1, "epoch": 3}, "without any tensors")],
)
def test_checkpoint_without_state_dict(tmp_path, obj, message):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(ModelError, match=message):
        load_model(path, device="cpu")


def test_state_dict_of_unknown_architecture_names_keys(tmp_path):
    path = tmp_path / "mobile.pt"
    torch.save({"encoder.conv.weight": torch.zeros(8, 3, 3, 3), "decoder.fc.bias": torch.zeros(2)}, path)
    with pytest.raises(ModelError) as e:
        load_model(path, device="cpu")
    msg = str(e.value)
    assert "does not match any model napari-sam can build" in msg
    assert "missing keys (" in msg and "image_encoder." in msg
    assert "unexpected keys (2): decoder.fc.bias, encoder.conv.weight" in msg
    assert "SAM ViT-B/L/H" in msg and "MobileSAM" in msg and "SAM 2 and 2.1" in msg


def test_incomplete_or_misshaped_sam_names_keys(tmp_path, tiny_sam):
    sd = torch.load(tiny_sam[1], weights_only=True)
    sd = {k: v for k, v in sd.items() if not k.startswith("mask_decoder.iou_prediction_head")}
    sd["mask_decoder.mask_tokens.weight"] = torch.zeros(5, 7)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(ModelError) as e:
        load_model(path, device="cpu")
    msg = str(e.value)
    assert "missing keys (6): mask_decoder.iou_prediction_head.layers.0.bias" in msg and "and 1 more" in msg
    assert "shape mismatches (file vs model) (1): mask_decoder.mask_tokens.weight (5, 7) vs (4, 256)" in msg


# --- architecture inference and loading by path --------------------------------------------------


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h"])
def test_official_architectures_inferred_from_shapes(arch):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # shapes only: no memory, no init time
        sd = sam_model_registry[arch](checkpoint=None).state_dict()
    found, kwargs = infer_vit(sd)
    assert found == arch
    assert kwargs["encoder_embed_dim"] == {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}[arch]


def test_small_vit_loads_by_path_with_identical_weights_and_outputs(tiny_sam):
    sam, path = tiny_sam
    loaded = load_model(path, device="cpu")
    assert loaded.arch == "vit_custom"
    assert infer_vit(loaded.sam.state_dict())[1] == TINY_KWARGS
    assert (loaded.name, loaded.path, loaded.checksum) == (path.name, path.resolve(), _sha256(path))
    assert (loaded.device, loaded.dtype, loaded.native_resolution) == (torch.device("cpu"), torch.float32, False)
    assert not loaded.sam.training
    assert all(p.dtype == torch.float32 for p in loaded.sam.parameters())
    assert same_weights(loaded.sam, sam)
    (masks_a, iou_a), (masks_b, iou_b) = _decode(loaded.sam), _decode(sam)
    assert torch.equal(masks_a, masks_b) and torch.equal(iou_a, iou_b)


def test_wrapped_and_prefixed_state_dict_loads(tmp_path, tiny_sam):
    sam, path = tiny_sam
    wrapped = {"model_state": {f"sam.{k}": v for k, v in sam.state_dict().items()}, "epoch": 7}
    wpath = tmp_path / "micro_sam_style.pt"
    torch.save(wrapped, wpath)
    loaded = load_model(wpath, device="cpu")
    assert loaded.arch == "vit_custom" and same_weights(loaded.sam, sam)


def test_embedded_format_loads_in_fp32(tmp_path):
    from napari_sam.core.embedded import EMBEDDED_DEFAULT_CONFIG, build_embedded_sam

    torch.manual_seed(1)
    sam = build_embedded_sam(EMBEDDED_DEFAULT_CONFIG)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sam.state_dict().items()}
    path = tmp_path / "emb.pt"
    torch.save({"format": "napari-sam-embedded/1", "config": dict(EMBEDDED_DEFAULT_CONFIG),
                "state_dict": half, "training": {"log": []}}, path)
    loaded = load_model(path, device="cpu")
    assert (loaded.arch, loaded.native_resolution) == ("embedded", True)
    state = loaded.sam.state_dict()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], v.float())
               for k, v in half.items() if v.is_floating_point())

    torch.save({"format": "napari-sam-embedded/2", "config": {}, "state_dict": half}, path)
    with pytest.raises(ModelError, match="newer than this napari-sam reads .* upgrade napari-sam"):
        load_model(path, device="cpu")


# --- the embedded model shipped in the package ---------------------------------------------------


def test_shipped_embedded_model_loads():
    weights, meta = models._embedded_files()
    if not weights.is_file():
        pytest.skip(f"the embedded weights are not in this checkout yet ({weights})")
    loaded = load_model(device="cpu")
    assert (loaded.name, loaded.arch, loaded.native_resolution) == ("embedded", "embedded", True)
    assert loaded.checksum == json.loads(meta.read_text())["sha256"]


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated", "missing"])
def test_corrupted_embedded_model_says_reinstall(tmp_path, monkeypatch, damage):
    weights, meta = tmp_path / "embedded.pt", tmp_path / "embedded.json"
    weights.write_bytes(b"0123456789" * 100)
    meta.write_text(json.dumps({"sha256": _sha256(weights), "size": 1000}))
    if damage == "flipped-byte":
        weights.write_bytes(b"1123456789" + b"0123456789" * 99)
    elif damage == "truncated":
        weights.write_bytes(b"0123456789" * 99)
    else:
        weights.unlink()
    monkeypatch.setattr(models, "_embedded_files", lambda: (weights, meta))
    with pytest.raises(ModelError, match="installation is corrupted: reinstall it") as e:
        load_model("embedded", device="cpu")
    assert ("is missing" if damage == "missing" else "do not match the checksum recorded in embedded.json") in str(e.value)


# --- downloads (from 127.0.0.1) ----------------------------------------------------------------


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "here"))
    assert models.cache_dir() == tmp_path / "here"
    monkeypatch.delenv("NAPARI_SAM_CACHE")
    assert "napari-sam" in str(models.cache_dir())


def test_wrong_checksum_is_refused_and_not_cached(server, tmp_path):
    base, folder, _ = server
    (folder / "sam_vit_b_01ec64.pth").write_bytes(b"not the real ViT-B" * 1000)
    actual = _sha256(folder / "sam_vit_b_01ec64.pth")
    with pytest.raises(ModelError) as e:
        models.fetch_checkpoint("vit_b", url=f"{base}/sam_vit_b_01ec64.pth", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"checksum mismatch for model 'vit_b' downloaded from {base}/sam_vit_b_01ec64.pth")
    assert "expected sha256 ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912" in msg
    assert f"got {actual}" in msg and "corrupted download was deleted" in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_verifies_caches_and_loads(server, tiny_sam, monkeypatch, tmp_path):
    base, folder, seen = server
    sam, path = tiny_sam
    (folder / "tiny.pth").write_bytes(path.read_bytes())
    digest = _sha256(path)
    monkeypatch.setitem(
        models.REGISTRY, "tiny", ModelSpec(f"{base}/tiny.pth", f"sha256:{digest}", "vit_custom", "test", "tiny.pth")
    )
    loaded = load_model("tiny", device="cpu", progress=False)
    assert (loaded.name, loaded.arch, loaded.checksum) == ("tiny", "vit_custom", digest)
    assert loaded.path == (tmp_path / "cache" / "tiny.pth").resolve()
    assert same_weights(loaded.sam, sam)
    assert seen == ["/tiny.pth"]
    load_model("tiny", device="cpu", progress=False)  # cached: no second download
    assert seen == ["/tiny.pth"]
    loaded.path.write_bytes(b"damaged cache")  # a damaged cached file is fetched again
    assert models.fetch_checkpoint("tiny", progress=False) == loaded.path
    assert seen == ["/tiny.pth", "/tiny.pth"] and _sha256(loaded.path) == digest


def test_xxh128_checksums_are_verified(server, monkeypatch):
    xxhash = pytest.importorskip("xxhash")
    base, folder, _ = server
    data = b"micro-sam style weights" * 100
    (folder / "vit_b.pt").write_bytes(data)
    good = xxhash.xxh128(data).hexdigest()
    monkeypatch.setitem(models.REGISTRY, "lm", ModelSpec(f"{base}/vit_b.pt", f"xxh128:{good}", "vit_b", "t", "lm.pt"))
    assert models.fetch_checkpoint("lm", progress=False).read_bytes() == data
    monkeypatch.setitem(models.REGISTRY, "lm2", ModelSpec(f"{base}/vit_b.pt", "xxh128:" + "0" * 32, "vit_b", "t", "lm2.pt"))
    with pytest.raises(ModelError, match=f"checksum mismatch for model 'lm2'.*expected xxh128 0{{32}}, got {good}"):
        models.fetch_checkpoint("lm2", progress=False)


def test_unreachable_download_says_what_to_do(server):
    base, _, _ = server
    with pytest.raises(ModelError, match=r"could not download model 'vit_h' from .*/missing.pth: .*404") as e:
        models.fetch_checkpoint("vit_h", url=f"{base}/missing.pth", progress=False)
    assert "give its path instead of the name (load_model(PATH), --model PATH" in str(e.value)


def test_registry_entries_are_complete():
    assert list(models.REGISTRY)[:4] == ["embedded", "vit_b", "vit_l", "vit_h"]
    filenames = [spec.filename for spec in models.REGISTRY.values()]
    assert len(set(filenames)) == len(filenames)  # two micro-sam files are both called vit_b.pt upstream
    for name, spec in models.REGISTRY.items():
        if name != "embedded":
            assert spec.url.startswith("https://") and spec.known_hash.split(":")[0] in ("sha256", "xxh128")

"""A model given by path, as users give them: web addresses, empty names, registry file names, safetensors
files, a checkpoint replaced in place, and a device the machine does not have (API and command line).

Checkpoints are tiny randomly initialised SAMs (ViT, embed dim 64, 2 blocks); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types

import pytest
import torch

from napari_sam.core.models import ModelError, load_model

from ._cli_helpers import _run, _write
from ._sam_helpers import same_weights

TINY_KWARGS = dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])


def _tiny_state_dict(seed):
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(seed)
    return _build_sam(**TINY_KWARGS, checkpoint=None).state_dict()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny_sam.pth"
    torch.save(_tiny_state_dict(0), path)
    return path


def _safetensors_bytes(tensors: dict) -> bytes:
    """The safetensors layout (written by hand: the package is optional): header length, JSON, data."""
    header, data = {}, b""
    for name, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


# --- names that are not paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, says",
    [
        ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
         "for the weights of registry model 'vit_b', give the name vit_b and napari-sam downloads them once"),
        ("https://mirror.example.org/sam/sam_vit_b_01ec64.pth", "give the name vit_b and napari-sam downloads them"),
        ("https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/noisy-ox/1.2/files/vit_b.pt",
         "give the name vit_b_em_organelles"),
        ("https://example.org/models/my_sam.pth",
         "download the file yourself (a browser, or curl -LO URL) and give its path"),
        ("file:///data/models/my%20sam.pth", "is a file URL; give the file's path instead: /data/models/my sam.pth"),
    ],
)
def test_web_address_as_model_says_what_to_give(url, says):
    with pytest.raises(ModelError) as e:
        load_model(url, device="cpu")
    assert str(e.value).startswith(f"{url} is a")
    assert says in str(e.value)


@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_model_name_is_not_the_current_folder(empty):
    with pytest.raises(ModelError) as e:
        load_model(empty, device="cpu")
    assert str(e.value).startswith("no model given (an empty name): give a registry name (embedded, vit_b")
    assert "is a folder" not in str(e.value)


def test_missing_registry_file_name_points_at_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as e:
        load_model("sam_vit_b_01ec64.pth", device="cpu")
    assert str(e.value).startswith("checkpoint file not found: sam_vit_b_01ec64.pth")
    assert "registry model 'vit_b': give the name vit_b" in str(e.value)
    with pytest.raises(ModelError, match=r"^checkpoint file not found: MODEL.PTH$"):  # not "unknown model"
        load_model("MODEL.PTH", device="cpu")


# --- safetensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "model.pth"])
def test_safetensors_without_the_package_says_install_it(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    path = tmp_path / name
    path.write_bytes(_safetensors_bytes({"image_encoder.patch_embed.proj.bias": torch.zeros(4)}))
    with pytest.raises(ModelError) as e:
        load_model(path, device="cpu")
    assert str(e.value) == (f"{path} is a safetensors file; reading it needs the safetensors package, which is not "
                            "installed: pip install safetensors (or give the checkpoint as a .pth/.pt file)")


def test_safetensors_is_read_with_the_package(tmp_path, monkeypatch):
    sd = _tiny_state_dict(0)
    read = []

    def load_file(filename, device="cpu"):
        read.append((filename, device))
        return sd

    fake = types.ModuleType("safetensors.torch")
    fake.load_file = load_file
    monkeypatch.setitem(sys.modules, "safetensors", types.ModuleType("safetensors"))
    monkeypatch.setitem(sys.modules, "safetensors.torch", fake)
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_bytes({"a": torch.zeros(2)}))
    m = load_model(path, device="cpu")
    assert read == [(str(path.resolve()), "cpu")] and m.arch == "vit_custom"
    assert all(torch.equal(m.sam.state_dict()[k], v) for k, v in sd.items())


def test_safetensors_cut_short_in_its_header(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_bytes({"a": torch.zeros(2)})[:20])
    with pytest.raises(ModelError, match=r"model.safetensors is an incomplete safetensors file .*download it again"):
        load_model(path, device="cpu")


def test_hugging_face_transformers_layout_is_named(tmp_path):
    path = tmp_path / "hf.pth"
    torch.save({"vision_encoder.patch_embed.projection.weight": torch.zeros(8, 3, 16, 16),
                "mask_decoder.iou_token.weight": torch.zeros(1, 8)}, path)
    with pytest.raises(ModelError) as e:
        load_model(path, device="cpu")
    assert "is a Hugging Face transformers SAM checkpoint (keys vision_encoder.*)" in str(e.value)
    assert "give the name vit_b, vit_l or vit_h" in str(e.value)


# --- a checkpoint replaced at the same path -------------------------------------------------------


def test_checkpoint_replaced_with_same_size_and_modification_time_is_loaded_again(tmp_path):
    """cp -p / rsync -t give new weights the old file's modification time; both tiny models have one size."""
    from napari_sam.api import _model

    path = tmp_path / "finetuned.pth"
    torch.save(_tiny_state_dict(1), path)
    first = _model(str(path))
    st = os.stat(path)
    torch.save(_tiny_state_dict(2), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    second = _model(str(path))
    assert second.checksum == hashlib.sha256(path.read_bytes()).hexdigest() != first.checksum
    assert not same_weights(first.sam, second.sam)


# --- the command line -----------------------------------------------------------------------------


def test_segment_with_a_web_address_exits_2_and_writes_nothing(stack_files, tmp_path, capsys):
    d, _ = stack_files
    _write(d / "points.csv", "z,y,x\n6,40,40\n")
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()
    url = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    code, err = _run(["segment", d / "stack.tif", "--points", d / "points.csv", "--out", out, "--model", url], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"napari-sam: error: {url} is a web address") and "give the name vit_b" in err
    assert not list(out.parent.iterdir())


def test_demo_on_a_device_this_machine_lacks_exits_2_before_making_its_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "demo"
    code, err = _run(["demo", "--out", out, "--no-viewer", "--device", "cuda"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("napari-sam: error: device 'cuda' requested but torch.cuda.is_available() is False")
    assert not out.exists() and not list(tmp_path.iterdir())


# --- the widget -----------------------------------------------------------------------------------


@pytest.mark.gui
def test_widget_names_what_was_wrong_and_keeps_the_loaded_model(make_napari_viewer, qtbot, tiny_path):
    import numpy as np
    from napari.utils._proxies import PublicOnlyProxy

    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 64, 64), np.uint8), name="img")
    widget = SamWidget(PublicOnlyProxy(viewer), model=str(tiny_path), device="cpu")
    viewer.window.add_dock_widget(widget, name="SAM")
    qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
    url = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    widget.load_model(url, "cpu")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    text = widget._ui.status.text()
    assert text == (f"Could not load model {url!r}: {url} is a web address, not a file: for the weights of registry "
                    "model 'vit_b', give the name vit_b and napari-sam downloads them once, verifies them and caches "
                    "them. Still using tiny_sam.pth."), text
    assert widget.model.path == tiny_path.resolve() and widget._ui.model.currentText() == "tiny_sam.pth"
    viewer.window.remove_dock_widget(widget)


def test_weights_with_nan_are_refused(tmp_path):
    """A fine-tuning run that diverged: masks would all be empty and scores NaN, with no word why."""
    sd = _tiny_state_dict(0)
    sd["mask_decoder.iou_token.weight"][0, 3] = float("nan")
    sd["image_encoder.neck.0.weight"][0, 0, 0, 0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(sd, path)
    with pytest.raises(ModelError) as e:
        load_model(path, device="cpu")
    assert str(e.value) == (f"{path} has NaN or infinite weights in 2 tensor(s) (e.g. image_encoder.neck.0.weight): "
                            "the training run that saved it diverged; use an earlier checkpoint of that run")

"""The embedded model's int8 encoder (core.int8): on by default on x86 CPUs, masks as good as fp32's against
ground truth, the same encoder in every process, refused with the reason where it cannot run."""

import json
import sys

import numpy as np
import pytest
import torch

import napari_sam
from napari_sam.core import int8
from napari_sam.core.checkpoints import ModelError
from napari_sam.core.predictor import SlicePredictor
from napari_sam.core.prompts import ObjectPrompt
from napari_sam.synthetic import interior_point, make_image, make_stack

from .conftest import needs_embedded

X86 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and int8.int8_reason("embedded", "cpu") is None
needs_x86 = pytest.mark.skipif(not X86, reason="int8 runs on x86 CPUs with AVX2 or AVX-512")


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def fp32_model():
    return napari_sam.load_model("embedded", device="cpu", int8=False)


@needs_embedded
@needs_x86
def test_int8_is_the_default_on_this_cpu_and_segments_as_fp32_does(embedded_model, fp32_model):
    """One click on each nucleus of a held-out slice: against the ground truth the int8 encoder's masks are
    as good as fp32's (held-out set: click median 0.842 both ways, docs/embedded-model.md), and they are
    nearly the same masks; the embeddings really differ (it is int8) by a few percent."""
    assert embedded_model.precision == "int8" and fp32_model.precision == "float32"
    st = make_image((256, 256), seed=900_140, radius_range=(6, 25), density=0.45)
    ids, counts = np.unique(st.labels[st.labels > 0], return_counts=True)
    gts = [st.labels == i for i in ids[counts >= 60]]
    assert len(gts) >= 12
    prompts = [ObjectPrompt(np.array([interior_point(g)], np.float32), [1]) for g in gts]
    masks, feats = {}, {}
    for m in (embedded_model, fp32_model):
        pred = SlicePredictor(m)
        pred.set_image(st.image)
        masks[m.precision] = pred.predict_objects(prompts).best()
        feats[m.precision] = pred.embedding.features
    a, b = feats["int8"], feats["float32"]
    rel = float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())
    assert 1e-4 < rel < 0.05, rel
    truth_int8 = [_iou(m, g) for m, g in zip(masks["int8"], gts)]
    truth_fp32 = [_iou(m, g) for m, g in zip(masks["float32"], gts)]
    agree = [_iou(x, y) for x, y in zip(masks["int8"], masks["float32"])]
    assert np.median(truth_int8) >= 0.75 and np.median(truth_int8) >= np.median(truth_fp32) - 0.02, (truth_int8, truth_fp32)
    assert np.median(agree) >= 0.95 and min(agree) >= 0.7, agree


@needs_embedded
@needs_x86
def test_the_shipped_activation_ranges_are_what_calibration_gives(fp32_model):
    """weights/embedded-int8.json is reproducible: calibrating the shipped weights on the generated slices
    gives its ranges, and on the CPU that wrote it (AVX-512) an encoder made without the table (another torch,
    other weights) computes the same features bit for bit. On another CPU (an AVX2-only one, session 15) the
    fp32 kernels round differently and the histogram observers' search moved one range by 1.6% and two by
    0.1-0.3%: the same graph nodes and zero points, scales within 2%."""
    shipped = json.loads(int8._table_file().read_text())
    assert shipped["weights_sha256"] == fp32_model.checksum
    now = int8.calibrated_table(fp32_model)
    assert now.keys() == shipped["observers"].keys()
    for k, (scale, zero, node) in shipped["observers"].items():
        assert now[k][1:] == [zero, node] and abs(now[k][0] - scale) <= 0.02 * scale, (k, now[k], scale)
    if now != shipped["observers"]:
        return  # not the CPU that wrote the table: the encoders below would differ by those ranges
    with_table = int8._quantize(fp32_model)
    real = int8._shipped_table
    try:
        int8._shipped_table = lambda checksum: None
        calibrated = int8._quantize(fp32_model)
    finally:
        int8._shipped_table = real
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(with_table(x), calibrated(x))


@needs_embedded
@needs_x86
def test_int8_and_fp32_embeddings_are_cached_apart(embedded_model, fp32_model):
    from napari_sam.core.cache import cache_key

    a, b = SlicePredictor(embedded_model), SlicePredictor(fp32_model)
    assert cache_key(a, "sig") != cache_key(b, "sig")


def test_int8_is_refused_with_the_reason_where_it_cannot_run():
    assert int8.wants_int8(False, "embedded", "cpu") is False
    assert int8.wants_int8("auto", "vit_b", "cpu") is False  # official ViTs run as they are
    assert int8.wants_int8("auto", "embedded", torch.device("cuda")) is False  # a GPU: fp32 weights (fp16 on CUDA)
    with pytest.raises(ModelError, match="int8 was requested, but int8 is for the embedded model; vit_b runs as it is"):
        int8.wants_int8(True, "vit_b", "cpu")
    with pytest.raises(ModelError, match="int8 is for the CPU; on cuda"):
        int8.wants_int8(True, "embedded", "cuda")
    with pytest.raises(ModelError, match="int8 must be 'auto', True or False, not 'yes'"):
        int8.wants_int8("yes", "embedded", "cpu")


def test_int8_on_a_downloadable_model_is_refused_before_downloading(monkeypatch):
    monkeypatch.setattr("napari_sam.core.models.fetch_checkpoint", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(ModelError, match="vit_b runs as it is"):
        napari_sam.load_model("vit_b", device="cpu", int8=True)


@needs_embedded
def test_a_torch_without_fx_quantization_runs_fp32(monkeypatch):
    """torch.ao.quantization is deprecated: where a future torch has removed it, "auto" loads the fp32
    encoder and int8=True says why it cannot."""
    monkeypatch.setitem(sys.modules, "torch.ao.quantization.quantize_fx", None)
    assert "has no FX quantization" in int8.int8_reason("embedded", "cpu")
    assert napari_sam.load_model("embedded", device="cpu").precision == "float32"
    with pytest.raises(ModelError, match="has no FX quantization"):
        napari_sam.load_model("embedded", device="cpu", int8=True)


@needs_embedded
@needs_x86
def test_the_command_line_turns_int8_off(tmp_path, monkeypatch):
    from napari_sam import cli

    seen = []
    real = cli._load

    def spy(*a):
        seen.append(real(*a).precision)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_load", spy)
    image = tmp_path / "a.npy"
    np.save(image, make_image((64, 64), seed=900_141).image)
    for option, precision in ((["--int8", "off"], "float32"), ([], "int8")):
        with pytest.raises(SystemExit):
            cli.main(["embed", str(image), "--out", str(tmp_path / "c.zarr"), *option])
        assert seen[-1] == precision


@pytest.mark.parametrize("off", [0, np.False_])
def test_int8_off_given_as_zero_or_numpy_false_is_off(off):
    """``0 in (True, False)`` but ``0 is not False``: int8=0 (or numpy's False, from a config or an array)
    passed the check and was then taken for "auto", so the int8 encoder ran although it was turned off."""
    assert int8.wants_int8(off, "embedded", "cpu") is False
    for bad in (2, 0.0, None, "on"):
        with pytest.raises(ModelError, match=f"int8 must be 'auto', True or False, not {bad!r}"):
            int8.wants_int8(bad, "embedded", "cpu")


@needs_embedded
@needs_x86
def test_int8_off_as_numpy_false_loads_the_fp32_encoder():
    assert napari_sam.load_model("embedded", device="cpu", int8=np.False_).precision == "float32"


def test_a_wrong_int8_value_is_said_before_a_checkpoint_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("napari_sam.core.models.read_checkpoint", lambda *a: pytest.fail("read"))
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    with pytest.raises(ModelError, match="int8 must be 'auto', True or False, not 'on'"):
        napari_sam.load_model(path, device="cpu", int8="on")


@needs_embedded
@needs_x86
def test_embedded_weights_by_path_use_the_shipped_ranges_other_weights_are_calibrated(tmp_path, monkeypatch):
    """A copy of the shipped checkpoint has its checksum: the shipped table applies, nothing is calibrated. The
    same weights slightly changed (a fine-tuned model, saved as the shipped one is) are calibrated at load, and
    their int8 masks are as good as their fp32 masks against the ground truth."""
    import shutil

    from .conftest import EMBEDDED

    calibrated = []
    real = int8._calibration_inputs
    monkeypatch.setattr(int8, "_calibration_inputs", lambda m: calibrated.append(m.name) or real(m))
    copy = shutil.copy(EMBEDDED, tmp_path / "copy.pt")
    monkeypatch.setattr(int8, "_MADE", {})  # as in a new process
    assert napari_sam.load_model(copy, device="cpu").precision == "int8" and calibrated == []

    ck = torch.load(EMBEDDED, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(0)
    ck["state_dict"] = {k: (v.float() * (1 + 0.01 * torch.randn(v.shape, generator=g))).to(v.dtype)
                        if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    torch.save(ck, tmp_path / "tuned.pt")
    tuned = napari_sam.load_model(tmp_path / "tuned.pt", device="cpu")
    assert tuned.precision == "int8" and calibrated == ["tuned.pt"]
    tuned_fp32 = napari_sam.load_model(tmp_path / "tuned.pt", device="cpu", int8=False)
    st = make_image((192, 192), seed=900_142, radius_range=(6, 25), density=0.45)
    ids, counts = np.unique(st.labels[st.labels > 0], return_counts=True)
    gts = [st.labels == i for i in ids[counts >= 60]]
    prompts = [ObjectPrompt(np.array([interior_point(g)], np.float32), [1]) for g in gts]
    medians = {}
    for m in (tuned, tuned_fp32):
        pred = SlicePredictor(m)
        pred.set_image(st.image)
        medians[m.precision] = np.median([_iou(x, g) for x, g in zip(pred.predict_objects(prompts).best(), gts)])
    assert len(gts) >= 8 and medians["int8"] >= 0.75 and medians["int8"] >= medians["float32"] - 0.03, medians


@needs_embedded
@needs_x86
@pytest.mark.gui
def test_the_widget_says_int8_encoder_until_the_first_prompt(make_napari_viewer, qtbot):
    """"(int8 encoder)" was on the status line for an instant: the slice's hint, shown once the model was
    ready, replaced it. Now the model's line stays until the user prompts, on "cpu" as on "auto"."""
    from napari.utils._proxies import PublicOnlyProxy

    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer()
    viewer.add_image(make_stack((3, 64, 64), seed=900_143).image, name="nuclei")
    widget = SamWidget(PublicOnlyProxy(viewer), model="embedded", device="auto")
    viewer.window.add_dock_widget(widget, name="SAM")
    status = widget._ui.status
    for device in ("auto", "cpu"):
        if device != "auto":
            widget.load_model("embedded", device)
        qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
        qtbot.waitUntil(lambda: "Next:" in status.text() or "z=" in status.text(), timeout=5000)  # the hint after it
        assert status.text() == ("Model embedded (embedded) ready on cpu (int8 encoder), slices magnified 2×. "
                                 "Next: click on an object, or draw a box around it."), status.text()
    viewer.window.remove_dock_widget(widget)

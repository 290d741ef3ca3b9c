"""Getting a model when things go wrong: downloads (core/download.py), names, wrapped files, devices.

"Downloads" come from an http.server on 127.0.0.1 that can misbehave on purpose (cut a transfer
short, answer 500, send a login page); the weights are a tiny randomly initialised SAM
(ViT, embed dim 64, 2 blocks), so what is checked is plumbing, never accuracy.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from napari_sam.core import devices, download, models
from napari_sam.core.models import ModelError, ModelSpec, choose_dtype, load_model, resolve_device

from ._sam_helpers import same_weights
from .conftest import serve_on_loopback

TINY_KWARGS = dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(module, state dict, bytes of its torch.save file) of a small random ViT SAM."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(3)
    sam = _build_sam(**TINY_KWARGS, checkpoint=None).eval()
    for p in sam.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save(sam.state_dict(), path)
    return sam, sam.state_dict(), path.read_bytes()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A server on 127.0.0.1: ``routes[path] = list of (kind, bytes)`` answered in turn (the last one repeats);
    kind "ok", "cut" (half the bytes, then the connection closes), "html", "500", "slow" (ok, in pieces).
    Yields (base_url, routes, requests_seen); $NAPARI_SAM_CACHE is tmp_path/"cache"."""
    routes: dict[str, list] = {}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            answers = routes.get(self.path) or [("404", b"")]
            kind, data = answers.pop(0) if len(answers) > 1 else answers[0]
            if kind in ("404", "500"):
                self.send_response(int(kind))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if kind == "html" else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if kind == "cut":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            step = len(data) // 8 + 1 if kind == "slow" else len(data)
            for i in range(0, len(data), step):
                self.wfile.write(data[i : i + step])
                self.wfile.flush()
                if kind == "slow":
                    time.sleep(0.05)

    with serve_on_loopback(Handler, tmp_path, monkeypatch) as url:
        yield url, routes, seen


def _register(monkeypatch, name, url, data, filename="m.pt"):
    spec = ModelSpec(url, "sha256:" + hashlib.sha256(data).hexdigest(), "vit_custom", "test", filename)
    monkeypatch.setitem(models.REGISTRY, name, spec)
    return spec


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _alternatives_named(msg: str) -> None:
    assert "load_model('embedded'), --model embedded" in msg and "--model PATH" in msg
    assert "\n" not in msg  # the command line prints the first line only


# --- downloads that go wrong ------------------------------------------------------------------


def test_download_cut_short_keeps_nothing_then_a_retry_loads_the_right_weights(site, tiny, monkeypatch, tmp_path):
    base, routes, seen = site
    sam, _, data = tiny
    routes["/m.pt"] = [("cut", data), ("ok", data)]
    _register(monkeypatch, "m", f"{base}/m.pt", data)
    with pytest.raises(ModelError) as e:
        load_model("m", device="cpu", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"could not download model 'm' from {base}/m.pt: the connection broke after ")
    assert "the partial file was deleted and nothing was cached. Run again to download it from the start" in msg
    _alternatives_named(msg)
    assert _files(tmp_path / "cache") == []
    loaded = load_model("m", device="cpu", progress=False)  # run again: a clean restart, verified
    assert seen == ["/m.pt", "/m.pt"] and _files(tmp_path / "cache") == ["m.pt"]
    assert same_weights(loaded.sam, sam)


def test_terminal_bar_of_a_failed_download_is_closed_and_none_is_drawn_offline(site, tiny, monkeypatch, capsys,
                                                                                 tmp_path):
    """pooch's own bar stayed open when a transfer broke, so the command line's error began on the bar's
    line; and an unreachable server got an empty bar. The bar now appears once the server answers, and closes."""
    import numpy as np
    import tifffile

    from napari_sam import cli

    base, routes, _ = site
    routes["/m.pt"] = [("cut", tiny[2])]
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "p.csv").write_text("y,x\n10,10\n")
    args = ["segment", str(tmp_path / "img.tif"), "--points", str(tmp_path / "p.csv"), "--out",
            str(tmp_path / "labels.tif"), "--model", "m", "--device", "cpu"]
    _register(monkeypatch, "m", f"{base}/m.pt", tiny[2])
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "m:" in err and "\nnapari-sam: error: could not download model 'm'" in err, repr(err[-300:])
    _register(monkeypatch, "m", "http://127.0.0.1:9/m.pt", tiny[2])  # the discard port: nobody answers
    assert cli.main(args) == 2
    assert capsys.readouterr().err.startswith("napari-sam: error: could not download model 'm'")


def test_login_page_instead_of_weights_is_named(site, tiny, monkeypatch, tmp_path):
    base, routes, _ = site
    page = b"<!DOCTYPE html>\n<html><body><form>Sign in to continue</form></body></html>"
    routes["/m.pt"] = [("html", page)]
    _register(monkeypatch, "m", f"{base}/m.pt", tiny[2])
    with pytest.raises(ModelError) as e:
        models.fetch_checkpoint("m", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"could not download model 'm' from {base}/m.pt: the server sent a web page "
                          f"({len(page)} bytes of HTML) instead of the weights, e.g. a login, proxy or firewall page")
    _alternatives_named(msg)
    assert _files(tmp_path / "cache") == []


def test_server_error_is_named_with_what_to_do(site, tiny, monkeypatch, tmp_path):
    base, routes, _ = site
    routes["/m.pt"] = [("500", b"")]
    _register(monkeypatch, "m", f"{base}/m.pt", tiny[2])
    with pytest.raises(ModelError) as e:
        models.fetch_checkpoint("m", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"could not download model 'm' from {base}/m.pt: the server answered 500 Internal Server "
                          "Error (nothing was saved)")
    _alternatives_named(msg)
    assert _files(tmp_path / "cache") == []


def test_no_network_names_the_embedded_model_and_a_path(tmp_path, monkeypatch, tiny):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _register(monkeypatch, "m", f"http://127.0.0.1:{port}/m.pt", tiny[2])
    with pytest.raises(ModelError) as e:
        load_model("m", device="cpu", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"could not download model 'm' from http://127.0.0.1:{port}/m.pt: no connection to "
                          "127.0.0.1 (")
    assert "are you offline, or behind a proxy or firewall?" in msg
    assert "use the embedded model, which ships with napari-sam" in msg
    _alternatives_named(msg)
    assert _files(tmp_path / "cache") == []


def test_cli_reports_an_offline_download_in_one_line(tmp_path, monkeypatch, capsys, tiny):
    import numpy as np
    import tifffile

    from napari_sam import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _register(monkeypatch, "m", f"http://127.0.0.1:{port}/m.pt", tiny[2])
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "p.csv").write_text("y,x\n10,10\n")
    out = tmp_path / "labels.tif"
    rc = cli.main(["segment", str(tmp_path / "img.tif"), "--points", str(tmp_path / "p.csv"), "--out", str(out),
                   "--model", "m", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.startswith("napari-sam: error: could not download model 'm'") and err.count("\n") == 1
    assert "--model embedded" in err and "--model PATH" in err


def test_full_disk_is_not_blamed_on_the_network(site, monkeypatch, tmp_path):
    """A write that fails (here: a file size limit, as a full disk or a quota does) is named as such."""
    pytest.importorskip("resource")  # the limit is set in a child process, not in pytest's
    base, routes, _ = site
    data = os.urandom(3 << 20)
    routes["/big.pt"] = [("ok", data)]
    digest = hashlib.sha256(data).hexdigest()
    code = textwrap.dedent(f"""
        import resource, signal
        from napari_sam.core import models
        models.REGISTRY["big"] = models.ModelSpec({base + '/big.pt'!r}, "sha256:{digest}", "vit_b", "t", "big.pt")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        try:
            models.fetch_checkpoint("big", progress=False)
        except models.ModelError as e:
            print(e)
    """)
    src = str(Path(models.__file__).parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    msg = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert msg.startswith(f"could not save model 'big' in the cache folder {tmp_path / 'cache'}: File too large. "
                          "The partial file was deleted; free some space or set the environment variable "
                          "NAPARI_SAM_CACHE to a folder on another disk."), msg
    _alternatives_named(msg.strip())
    assert _files(tmp_path / "cache") == []


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_cache_folder_that_cannot_be_made_is_named(site, tiny, monkeypatch, tmp_path, where):
    base, routes, seen = site
    routes["/m.pt"] = [("ok", tiny[2])]
    _register(monkeypatch, "m", f"{base}/m.pt", tiny[2])
    blocker = tmp_path / "models.txt"
    blocker.write_text("not a folder")
    folder = blocker if where == "a-file" else blocker / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(folder))
    with pytest.raises(ModelError) as e:
        models.fetch_checkpoint("m", progress=False)
    reason = "it is a file, not a folder" if where == "a-file" else "Not a directory"
    assert str(e.value).startswith(f"cannot save model 'm' in the cache folder {folder}: {reason}. Set the "
                                   "environment variable NAPARI_SAM_CACHE to a folder you can write to.")
    _alternatives_named(str(e.value))
    assert seen == [] and blocker.read_text() == "not a folder"


def test_relative_cache_folder_is_made_absolute(tmp_path, monkeypatch):
    """A relative $NAPARI_SAM_CACHE is the folder it names from where the model was first asked for; the
    path handed back (and recorded with the labels) must not change meaning when the working folder does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAPARI_SAM_CACHE", "weights")
    assert models.cache_dir() == tmp_path / "weights" and models.cache_dir().is_absolute()


def test_parts_left_by_a_killed_download_are_cleaned_up(site, tiny, monkeypatch, tmp_path):
    base, routes, _ = site
    routes["/m.pt"] = [("ok", tiny[2])]
    _register(monkeypatch, "m", f"{base}/m.pt", tiny[2])
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, active, other = cache / "m.pt.k1ll3d.part", cache / "m.pt.4ct1v3.part", cache / "x.pt.k1ll3d.part"
    for p in (stale, active, other):
        p.write_bytes(b"half a model")
    old = time.time() - 2 * download.STALE_PART_SECONDS
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert models.fetch_checkpoint("m", progress=False).read_bytes() == tiny[2]
    # the killed download's file is gone; one still being written (recent) and other models' are left alone
    assert _files(cache) == ["m.pt", "m.pt.4ct1v3.part", "x.pt.k1ll3d.part"]
    os.utime(active, (old, old))  # ... and once the model is cached, later loads clean up too
    assert models.fetch_checkpoint("m", progress=False).read_bytes() == tiny[2]
    assert _files(cache) == ["m.pt", "x.pt.k1ll3d.part"]


def test_two_loads_of_one_model_at_once_download_it_once(site, tiny, monkeypatch, tmp_path):
    base, routes, seen = site
    routes["/m.pt"] = [("slow", tiny[2])]
    _register(monkeypatch, "m", f"{base}/m.pt", tiny[2])
    results, errors = [], []

    def fetch():
        try:
            results.append(models.fetch_checkpoint("m", progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert seen == ["/m.pt"]  # the second waited for the first, then found the verified file
    assert results[0].read_bytes() == tiny[2] and _files(tmp_path / "cache") == ["m.pt"]


# --- names ------------------------------------------------------------------------------------


def test_names_ignore_case_and_surrounding_spaces(site, tiny, monkeypatch, tmp_path):
    base, routes, _ = site
    routes["/m.pt"] = [("ok", tiny[2])]
    _register(monkeypatch, "vit_test", f"{base}/m.pt", tiny[2])
    loaded = load_model(" VIT_Test ", device="cpu", progress=False)
    assert loaded.name == "vit_test" and same_weights(loaded.sam, tiny[0])
    # a file of that spelling in the working folder is what the user means
    monkeypatch.chdir(tmp_path)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in tiny[1].items()}, tmp_path / "VIT_TEST")
    mine = load_model("VIT_TEST", device="cpu")
    assert mine.name == "VIT_TEST" and mine.path == tmp_path / "VIT_TEST"
    assert torch.equal(mine.sam.state_dict()["mask_decoder.iou_token.weight"],
                       tiny[1]["mask_decoder.iou_token.weight"] + 1)


@pytest.mark.parametrize("typo, nearest", [("vit_b_ml", "vit_b_lm"), ("vit_b_em_organelle", "vit_b_em_organelles"),
                                           ("embeded", "embedded")])
def test_a_typo_suggests_the_nearest_name(typo, nearest):
    with pytest.raises(ModelError) as e:
        load_model(typo, device="cpu")
    assert str(e.value).startswith(f"unknown model {typo!r} (did you mean {nearest!r}?): known names are embedded, ")


def test_a_sam2_name_says_sam2_loads_by_path():
    with pytest.raises(ModelError) as e:
        load_model("sam2.1_hiera_tiny", device="cpu")
    assert "SAM 2 / 2.1 checkpoints load by path: download e.g. sam2.1_hiera_tiny.pt" in str(e.value)


# --- wrapped and prefixed files ---------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model_state": {f"module.sam.{k}": v for k, v in sd.items()}},  # DataParallel over micro-sam
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "hyper_parameters": {"lr": 0.1}},
        lambda sd: {"model": dict(sd), "state_dict": {"epoch": 3}},  # a wrapper without tensors comes first
    ],
    ids=["module.sam.", "_orig_mod.", "lightning-model.", "tensorless-state_dict"],
)
def test_wrapped_and_prefixed_checkpoints_load_the_same_weights(tmp_path, tiny, wrap):
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(tiny[1]), path)
    loaded = load_model(path, device="cpu")
    assert loaded.arch == "vit_custom" and same_weights(loaded.sam, tiny[0])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ec2df627\nsize 375042383\n",
         "is a Git LFS pointer (a small text file standing for the weights), not the weights: fetch them with "
         "'git lfs pull'"),
        (b"\n<!DOCTYPE html>\n<html lang='en'><head><title>ownCloud</title></head></html>\n",
         "is a web page (HTML), not a checkpoint: the link it was downloaded from gave a page (a login, a preview "
         "or an error) instead of the file; download the file itself."),
    ],
    ids=["git-lfs-pointer", "saved-web-page"],
)
def test_a_file_that_only_stands_for_the_weights_is_named(tmp_path, content, message):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError) as e:
        load_model(path, device="cpu")
    assert str(e.value).startswith(f"{path} {message}")


# --- devices and precision --------------------------------------------------------------------


def test_cuda_hidden_by_cuda_visible_devices_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ModelError) as e:
        resolve_device("cuda")
    assert str(e.value) == (
        "device 'cuda' requested but torch.cuda.is_available() is False: the environment variable "
        "CUDA_VISIBLE_DEVICES='' hides every GPU from this process (on a cluster: request a GPU for the job); "
        "use device='cpu' or 'auto'"
    )
    assert resolve_device("auto") == torch.device("cpu")


def test_gpu_index_past_cuda_visible_devices_explains_the_numbering(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(ModelError, match=r"only 1 CUDA device\(s\) are visible \(cuda:0..cuda:0\) "
                                         r"\(CUDA_VISIBLE_DEVICES='3': the visible GPUs are numbered from 0"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_bf16_only_where_the_gpu_computes_in_it(monkeypatch, native, expected):
    """torch.cuda.is_bf16_supported() says True on a T4 or V100 too (bf16 emulated: slower than fp16, and
    cuDNN has no bf16 convolutions there); those GPUs get fp16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert choose_dtype("cuda", "auto") == expected
    assert choose_dtype("cuda:0", True) == expected
    assert choose_dtype("cpu", "auto") == torch.float32
    assert devices._native_bf16(torch, torch.device("cuda")) is native


# --- the widget's model loading (napari_sam._qt._session; no viewer needed) --------------------------


def test_widget_download_shows_progress_in_napari_and_only_when_downloading(site, tiny, monkeypatch):
    import napari.utils

    from napari_sam._qt import _session

    bars = []

    class Recording(napari.utils.progress):
        def close(self):
            if not self.disable:
                bars.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(napari.utils, "progress", Recording)
    monkeypatch.setattr(_session, "_MODELS", type(_session._MODELS)())
    base, routes, _ = site
    routes["/m.pt"] = [("slow", tiny[2])]
    _register(monkeypatch, "vit_test", f"{base}/m.pt", tiny[2])
    first = _session.load_model_cached("vit_test", "cpu")
    assert same_weights(first.sam, tiny[0])
    assert len(bars) == 1 and bars[0][0].startswith("Downloading model vit_test")
    assert bars[0][1] == bars[0][2] == len(tiny[2])  # every byte shown
    _session._MODELS.clear()
    again = _session.load_model_cached("vit_test", "cpu")  # from the cache folder: no bar
    assert same_weights(again.sam, tiny[0]) and len(bars) == 1


def test_widget_reloads_a_checkpoint_saved_again_at_the_same_path(tmp_path, tiny, monkeypatch):
    from napari_sam._qt import _session

    monkeypatch.setattr(_session, "_MODELS", type(_session._MODELS)())
    path = tmp_path / "mine.pth"
    torch.save(tiny[1], path)
    old = _session.load_model_cached(str(path), "cpu")
    assert _session.load_model_cached(str(path), "cpu") is old  # unchanged file: the loaded model
    newer = {k: v + 1 if v.is_floating_point() else v for k, v in tiny[1].items()}
    torch.save(newer, path)  # e.g. a fine-tuned model written over the old one
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    new = _session.load_model_cached(str(path), "cpu")
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(new.sam.state_dict()[key], newer[key]) and not torch.equal(old.sam.state_dict()[key], newer[key])


def test_api_takes_a_path_object_and_reloads_a_checkpoint_saved_again(tmp_path, tiny, monkeypatch):
    """segment(model=Path(...)) was passed on as if it were a loaded model (AttributeError), and a name or
    path given as text was loaded once per process: a checkpoint saved again at that path kept the old weights."""
    import numpy as np

    import napari_sam
    from napari_sam import api

    monkeypatch.setattr(api, "_DEFAULT", {})
    path = tmp_path / "mine.pth"
    torch.save(tiny[1], path)
    pred = napari_sam.segment(np.random.default_rng(0).random((64, 80)), points=[[30, 40]], model=path)
    assert pred.masks.shape[-2:] == (64, 80)
    old = api._model(str(path))
    assert api._model(path) is old and same_weights(old.sam, tiny[0])
    newer = {k: v + 1 if v.is_floating_point() else v for k, v in tiny[1].items()}
    torch.save(newer, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(api._model(path).sam.state_dict()[key], newer[key])

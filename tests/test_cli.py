"""`napari-sam segment` and `napari-sam demo` as a user runs them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_sam.cli import main
from napari_sam.synthetic import interior_point

from ._cli_helpers import _click_each, _objects_on, _run, _write
from .conftest import needs_embedded


BAD = [
    ("image.txt", "points.csv", "cannot read .* as a TIFF image"),
    ("stack.tif", "no_header.csv", "is empty"),
    ("stack.tif", "bad_cols.csv", "lacks the columns z,y,x"),
    ("stack.tif", "not_number.csv", "line 2: column 'y' has 'abc', which is not a number"),
    ("stack.tif", "outside.csv", r"line 2: point \(y=500, x=3\) is outside the image of 128x128 pixels"),
    ("stack.tif", "bad_z.csv", "point on z=40, but the image has slices 0..11"),
    ("stack.tif", "only_negative.csv", "negative point on z=3 but no object has a positive prompt there"),
    ("missing.tif", "points.csv", "image not found"),
    ("complex.tif", "points.csv", r"holds complex values \(complex64\): save its magnitude"),
]


@pytest.mark.parametrize("image,points,message", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(stack_files, tmp_path, capsys, image, points, message):
    d, _ = stack_files
    _write(d / "image.txt", "this is not an image")
    tifffile.imwrite(d / "complex.tif", np.ones((12, 128, 128), np.complex64))
    _write(d / "points.csv", "z,y,x\n6,40,40\n")
    _write(d / "no_header.csv", "")
    _write(d / "bad_cols.csv", "row,col\n1,2\n")
    _write(d / "not_number.csv", "z,y,x\n1,abc,3\n")
    _write(d / "outside.csv", "z,y,x\n1,500,3\n")
    _write(d / "bad_z.csv", "z,y,x\n40,5,3\n")
    _write(d / "only_negative.csv", "z,y,x,positive\n3,5,3,0\n")
    out = tmp_path / "labels.tif"
    code, err = _run(["segment", d / image, "--points", d / points, "--out", out], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("napari-sam: error:")
    assert pytest.importorskip("re").search(message, err), err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unknown_model_lists_names(stack_files, tmp_path, capsys):
    d, _ = stack_files
    _write(d / "points.csv", "z,y,x\n6,40,40\n")
    code, err = _run(["segment", d / "stack.tif", "--points", d / "points.csv", "--out", tmp_path / "o.tif", "--model", "vit_q"], capsys)
    assert code == 2 and "unknown model 'vit_q'" in err and "vit_b" in err and "embedded" in err
    assert not list(tmp_path.iterdir())


def test_existing_output_is_not_clobbered(stack_files, tmp_path, capsys):
    d, _ = stack_files
    _write(d / "points.csv", "z,y,x\n6,40,40\n")
    out = tmp_path / "labels.tif"
    out.write_bytes(b"precious")
    code, err = _run(["segment", d / "stack.tif", "--points", d / "points.csv", "--out", out], capsys)
    assert code == 2 and "--overwrite" in err
    assert out.read_bytes() == b"precious"


@needs_embedded
def test_segment_stack_writes_ids_on_prompted_slices_only(stack_files, tmp_path, capsys):
    d, st = stack_files
    z = 6
    ids = _click_each(st.labels, z, tmp_path / "p.csv")
    out = tmp_path / "labels.tif"
    code, err = _run(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--out", out], capsys)
    assert code == 0, err
    lab = tifffile.imread(out)
    assert lab.shape == st.image.shape and lab.dtype == np.uint16
    assert set(np.unique(lab)) == {0} | {10 + k for k in range(len(ids))}
    assert not lab[np.arange(12) != z].any()  # nothing written on other slices
    for k, oid in enumerate(ids):
        gt, got = st.labels[z] == oid, lab[z] == 10 + k
        assert (gt & got).sum() / (gt | got).sum() >= 0.8
    rec = json.loads((tmp_path / "labels.prompts.json").read_text())
    assert rec["model"] == "embedded" and len(rec["model_sha256"]) == 64
    from napari_sam.core.int8 import wants_int8

    assert rec["precision"] == ("int8" if wants_int8("auto", "embedded", "cpu") else "float32")  # core.int8
    assert set(rec["prompts"]) == {str(10 + k) for k in range(len(ids))}


@needs_embedded
def test_segment_2d_with_napari_columns_boxes_and_shared_negative(stack_files, tmp_path, capsys):
    d, st = stack_files
    lab2 = st.labels[6]
    a, b = _objects_on(st.labels, 6, 2)
    rr, cc = np.nonzero(lab2 == b)
    pa = interior_point(lab2 == a)
    _write(tmp_path / "p.csv", f"index,axis-0,axis-1,positive\n0,{pa[0]},{pa[1]},True\n")
    _write(tmp_path / "b.csv", f"y0,x0,y1,x1\n{rr.min()},{cc.min()},{rr.max()},{cc.max()}\n")
    out = tmp_path / "l.tif"
    code, err = _run(["segment", d / "slice.tif", "--points", tmp_path / "p.csv", "--boxes", tmp_path / "b.csv", "--out", out], capsys)
    assert code == 0, err
    lab = tifffile.imread(out)
    assert lab.shape == (128, 128)
    for oid, gt in ((1, lab2 == a), (2, lab2 == b)):  # point -> 1, box -> next id
        got = lab == oid
        assert (gt & got).sum() / (gt | got).sum() >= 0.8


@needs_embedded
def test_console_script_runs_as_a_process(stack_files, tmp_path):
    d, st = stack_files
    oid = _objects_on(st.labels, 6, 1)[0]
    r, c = interior_point(st.labels[6] == oid)
    _write(tmp_path / "p.csv", f"y,x\n{r},{c}\n")
    out = tmp_path / "o.tif"
    res = subprocess.run(
        [sys.executable, "-m", "napari_sam.cli", "segment", str(d / "slice.tif"), "--points", str(tmp_path / "p.csv"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    got = tifffile.imread(out) == 1
    gt = st.labels[6] == oid
    assert (gt & got).sum() / (gt | got).sum() >= 0.8


@needs_embedded
def test_demo_writes_results_and_never_clobbers(tmp_path, capsys, monkeypatch):
    # Every run makes the same stack and prompts (a fixed seed). The first propagates them with SAM; the later
    # runs, which test where the demo writes, are handed the first run's labels instead of propagating the same
    # image, prompts and model again (~2/3 of this test's time); any other input is propagated as usual
    from napari_sam.core import propagate

    real, done = propagate.propagate_labels, []

    def same_as_the_first_run(image, prompts, **kw):
        key = (prompts, kw["model"].checksum, {k: v for k, v in kw.items() if k != "model"})
        for image_then, key_then, labels in done:
            if key_then == key and np.array_equal(image_then, image):
                return labels.copy()
        labels = real(image, prompts, **kw)
        done.append((np.array(image, copy=True), key, labels.copy()))
        return labels

    monkeypatch.setattr(propagate, "propagate_labels", same_as_the_first_run)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-viewer"]) == 0
    err = capsys.readouterr().err
    for f in ("stack.tif", "points.csv", "labels.tif", "labels.prompts.json", "overlay.png"):
        assert (out / f).stat().st_size > 0
    lab = tifffile.imread(out / "labels.tif")
    assert lab.shape == tifffile.imread(out / "stack.tif").shape and lab.max() > 5
    median = float(err.split("IoU vs ground truth: median ")[1].split(",")[0])
    # 3D IoU after propagation through z: the measured level of the embedded model
    # with the current propagation rule on this dense stack (docs/propagation.md)
    assert median >= 0.5, err
    before = (out / "labels.tif").read_bytes()
    assert main(["demo", "--out", str(out), "--no-viewer"]) == 0
    assert (out / "labels.tif").read_bytes() == before and (tmp_path / "demo-2" / "labels.tif").exists()
    # "--out ." inside it (a traceback: '.' has no name), with a file where the next folder would go
    (tmp_path / "demo-3").write_text("mine")
    monkeypatch.chdir(out)
    assert main(["demo", "--out", ".", "--no-viewer"]) == 0
    assert (tmp_path / "demo-4" / "labels.tif").exists() and (tmp_path / "demo-3").read_text() == "mine"
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path / "demo-3"), "--no-viewer"]) == 2
    assert "is a file: give a folder for the demo's results" in capsys.readouterr().err


def test_planar_rgb_tiff_is_read_as_colour_and_a_4_slice_stack_as_slices(tmp_path):
    from napari_sam.core.lazy import open_stack
    from napari_sam.io import image_spatial_shape, read_image

    rgb = np.zeros((3, 20, 30), np.uint8)
    rgb[0, :, :10] = 200
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    vol = read_image(tmp_path / "planar.tif")
    assert vol.rgb and vol.is_2d and vol.spatial_shape == (20, 30) == image_spatial_shape(tmp_path / "planar.tif")
    assert vol.data.shape == (1, 20, 30, 3) and (vol.data[0, :, :10, 0] == 200).all()
    lazy = open_stack(tmp_path / "planar.tif")  # what 'napari-sam embed' reads: the same image
    assert lazy.rgb and lazy.was_2d and np.array_equal(np.asarray(lazy.data[0]), vol.data[0])

    # tifffile stores any (4, y, x) array as planar RGBA by default: 16-bit, it is a 4-slice z-stack
    stack = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    tifffile.imwrite(tmp_path / "four.tif", stack)
    vol, lazy = read_image(tmp_path / "four.tif"), open_stack(tmp_path / "four.tif")
    assert not vol.rgb and vol.spatial_shape == (4, 20, 30) == image_spatial_shape(tmp_path / "four.tif")
    assert not lazy.rgb and not lazy.was_2d and np.array_equal(np.asarray(lazy.data[2]), stack[2])


@needs_embedded
def test_propagate_from_the_shell_reads_the_embedding_cache(stack_files, tmp_path, capsys, monkeypatch):
    from napari_sam.core.predictor import SlicePredictor

    d, st = stack_files
    z = 6
    ids = _click_each(st.labels, z, tmp_path / "p.csv")
    plain, cached = tmp_path / "plain.tif", tmp_path / "cached.tif"
    code, err = _run(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--propagate", "--out", plain], capsys)
    assert code == 0, err
    code, err = _run(["embed", d / "stack.tif", "--out", tmp_path / "e.zarr"], capsys)
    assert code == 0, err

    calls = []
    embed = SlicePredictor.embed
    monkeypatch.setattr(SlicePredictor, "embed", lambda self, *a, **k: calls.append(1) or embed(self, *a, **k))
    code, err = _run(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--propagate", "--out", cached,
                      "--embeddings", tmp_path / "e.zarr"], capsys)
    assert code == 0, err
    assert calls == [], "every slice came from the cache"
    a, b = tifffile.imread(plain), tifffile.imread(cached)
    # the cache holds fp16 embeddings, a fresh run uses fp32 ones: nearly the same masks
    assert np.count_nonzero(a != b) <= 0.02 * np.count_nonzero(a | b), np.count_nonzero(a != b)
    assert set(np.unique(a)) == {0} | {10 + k for k in range(len(ids))}
    for k, oid in enumerate(ids):
        gt, got = st.labels == oid, a == 10 + k
        assert (gt & got).sum() / (gt | got).sum() >= 0.6, (oid, k)
        assert got.any((1, 2)).sum() >= 3  # carried beyond the prompted slice

    other = tmp_path / "other.tif"
    tifffile.imwrite(other, st.image[::-1].copy())
    code, err = _run(["segment", other, "--points", tmp_path / "p.csv", "--propagate", "--out", tmp_path / "x.tif",
                      "--embeddings", tmp_path / "e.zarr"], capsys)
    assert code == 2 and "different image" in err and not (tmp_path / "x.tif").exists()

    # a cache made at the default magnification does not serve another one: refused, nothing written
    code, err = _run(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--propagate", "--out",
                      tmp_path / "y.tif", "--embeddings", tmp_path / "e.zarr", "--input-scale", "1.0"], capsys)
    assert code == 2 and "input magnification" in err and not (tmp_path / "y.tif").exists(), err
    code, err = _run(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--out", tmp_path / "y.tif",
                      "--input-scale", "9"], capsys)
    assert code == 2 and "--input-scale must be between 0.25 and 4" in err and not (tmp_path / "y.tif").exists(), err


def test_propagation_shows_a_progress_bar_in_a_terminal(monkeypatch):
    import io

    from napari_sam.cli import SliceBar
    from napari_sam.core.propagate import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = SliceBar("propagating")
    for done, z, stage in [(1, 6, "prompted"), (2, 7, "up"), (3, 5, "down")]:
        bar.update(Progress(done, 3, z, stage, np.zeros((2, 2), np.uint8), (1, 2)))
    bar.close()
    text = term.getvalue()
    assert "propagating" in text and "3/3" in text and "z=5 down, 2 object(s)" in text
    # not a terminal (a log file, a pipe): no bar
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = SliceBar("propagating")
    bar.update(Progress(1, 3, 6, "prompted", np.zeros((2, 2), np.uint8)))
    bar.close()
    assert log.getvalue() == ""


@needs_embedded
def test_every_slice_from_the_shell(stack_files, tmp_path, capsys, embedded_model):
    """--every-slice: each object's prompts on every slice of --z-range, the slices it is not on left empty;
    the same labels as the API's ``propagate(..., through_z=True)``."""
    import napari_sam
    from napari_sam.io import read_prompts

    d, st = stack_files
    z = 6
    ids = _click_each(st.labels, z, tmp_path / "p.csv")
    out = tmp_path / "every.tif"
    code, err = _run(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--every-slice", "--out", out], capsys)
    assert code == 0, err
    lab = tifffile.imread(out)
    prompts = read_prompts(tmp_path / "p.csv", None, st.image.shape)
    api = napari_sam.propagate(st.image, prompts, model=embedded_model, through_z=True, refine=False)  # as the CLI
    assert np.array_equal(lab, api)
    assert set(np.unique(lab)) == {0} | {10 + k for k in range(len(ids))}
    for k, oid in enumerate(ids):
        gt, got = st.labels == oid, lab == 10 + k
        assert (gt & got).sum() / (gt | got).sum() >= 0.6, (oid, k)
        true_z, got_z = np.flatnonzero(gt.any((1, 2))), np.flatnonzero(got.any((1, 2)))
        assert got_z[0] >= true_z[0] - 1 and got_z[-1] <= true_z[-1] + 1, (oid, true_z, got_z)
    assert json.loads((tmp_path / "every.prompts.json").read_text())["mode"] == "every slice"

    ranged = tmp_path / "ranged.tif"
    code, err = _run(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--every-slice", "--z-range", "5:8",
                      "--out", ranged], capsys)
    assert code == 0, err
    r = tifffile.imread(ranged)
    assert not r[:5].any() and not r[8:].any() and np.array_equal(r[5:8], lab[5:8])


def test_every_slice_refusals_write_nothing(stack_files, tmp_path, capsys):
    d, _ = stack_files
    _write(tmp_path / "two.csv", "z,y,x,object\n3,40,40,10\n6,41,40,10\n")
    _write(tmp_path / "one.csv", "z,y,x\n6,40,40\n")
    _write(tmp_path / "yx.csv", "y,x\n40,40\n")
    out = tmp_path / "o.tif"
    for image, pts, extra, message in [
        ("stack.tif", "two.csv", [], "--every-slice: object 10 is prompted on slices 3, 6: .* propagate it"),
        ("stack.tif", "one.csv", ["--propagate"], "--propagate follows objects .* --every-slice applies .* choose one"),
        ("slice.tif", "yx.csv", [], r"--every-slice needs a \(z, y, x\) stack; this image is 2D"),
        ("stack.tif", "one.csv", ["--z-range", "7:9"], "object 1 is prompted on slice 6, outside z_range 7:9"),
    ]:
        code, err = _run(["segment", d / image, "--points", tmp_path / pts, "--every-slice", *extra, "--out", out], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert pytest.importorskip("re").search(message, err), err
        assert not out.exists()


@pytest.mark.parametrize("cmd", ["segment", "embed"])
def test_normalize_none_on_16_bit_values_is_refused_in_one_line(stack_files, tmp_path, capsys, cmd):
    # the 16-bit stack's values lie far above 255: this was a ValueError traceback (exit 1) from the core
    d, _ = stack_files
    _write(tmp_path / "p.csv", "z,y,x\n6,40,40\n")
    out = tmp_path / ("labels.tif" if cmd == "segment" else "cache.zarr")
    prompts = ["--points", tmp_path / "p.csv"] if cmd == "segment" else []
    code, err = _run([cmd, d / "stack.tif", *prompts, "--normalize", "none", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--normalize none" in err and "needs them in 0..255" in err and "--normalize minmax" in err, err
    assert not out.exists()


@needs_embedded
def test_normalize_none_runs_on_8_bit_values(stack_files, tmp_path, capsys):
    d, st = stack_files
    img = st.image.astype(np.float64)
    eight = np.rint((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint16)  # 16-bit file, 0..255
    tifffile.imwrite(tmp_path / "eight.tif", eight)
    ids = _click_each(st.labels, 6, tmp_path / "p.csv")
    out = tmp_path / "labels.tif"
    code, err = _run(["segment", tmp_path / "eight.tif", "--points", tmp_path / "p.csv", "--normalize", "none",
                      "--out", out], capsys)
    assert code == 0, err
    assert set(np.unique(tifffile.imread(out)[6])) == {0, *range(10, 10 + len(ids))}

"""`napari-sam segment` and `embed` cut short (Ctrl-C, SIGTERM, SIGKILL) or failing midway, and run again.

What is asserted each time: the exit status, a message saying what was finished and how to go on (no
traceback), what is on disk (no half-written or mismatched labels/record pair, no temporary files, no
earlier output replaced), and that running the same command again ends with what one uninterrupted run
makes (arrays compared). Interrupted runs are real processes; a small launcher around ``cli.main`` prints
a line where the run has visibly started and slows that step down, so that the signal lands there.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_sam
from napari_sam.cli import main
from napari_sam.synthetic import interior_point, make_stack

from .conftest import needs_embedded

SRC = str(Path(napari_sam.__file__).resolve().parents[1])

# Launchers: run `cli.main(argv)` as the console script does, after one change that makes "the run has
# started" visible on stderr (non-terminal stderr shows no progress bar) and gives the signal time to land.
SLOW_PROGRESS = """
    from napari_sam import cli

    def show(self, done, total, postfix):
        print(f"PROGRESS {done}/{total}", file=sys.stderr, flush=True)
        time.sleep(0.5)

    cli.SliceBar.show = show
"""
SLOW_WRITE = """
    import tifffile

    real = tifffile.imwrite

    def imwrite(*a, **k):
        real(*a, **k)
        print("WRITTEN TO A TEMPORARY FILE", file=sys.stderr, flush=True)
        time.sleep(3)

    tifffile.imwrite = imwrite
"""
KILL_AFTER_LABELS = """
    import os, signal

    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith("a.tif"):  # the labels are in place; their record not yet
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
"""


def _launch(tmp_path, patch, argv):
    script = tmp_path / "launch.py"
    script.write_text("import sys, time\n" + textwrap.dedent(patch) +
                      "\nfrom napari_sam.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    # as from a terminal's foreground: SIGINT handled by default even when these tests run in a background job
    # (which starts ignoring SIGINT, and so would the CLI, on purpose: ``_cli_interrupt``)
    return subprocess.Popen([sys.executable, str(script), *map(str, argv)], stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_when(proc, marker, sig, timeout=120):
    """Send ``sig`` once stderr shows ``marker``; (exit status, all of stderr)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=timeout)
    err = "".join(seen) + rest
    assert marker in err, err
    return code, err


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _clicks(labels, z, n=3, min_area=150):
    ids, counts = np.unique(labels[z][labels[z] > 0], return_counts=True)
    rows = ["z,y,x,positive,object"]
    for k, oid in enumerate(ids[counts >= min_area][:n]):
        r, c = interior_point(labels[z] == oid)
        rows.append(f"{z},{r},{c},1,{10 + k}")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three (10, 96, 96) stacks a, b, c with a table of clicks each (prompts/NAME.csv)."""
    d = tmp_path_factory.mktemp("interrupted")
    (d / "prompts").mkdir()
    for k, name in enumerate("abc"):
        st = make_stack((10, 96, 96), seed=900_700 + k, radius_range=(10, 18), density=0.35)
        tifffile.imwrite(d / f"{name}.tif", st.image)
        (d / "prompts" / f"{name}.csv").write_text(_clicks(st.labels, 5))
    return d


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """What one uninterrupted batch run with --propagate writes: {name: labels}."""
    out = tmp_path_factory.mktemp("reference") / "labels"
    assert main(["segment", *[str(data / f"{n}.tif") for n in "abc"], "--points", str(data / "prompts"),
                 "--propagate", "--out", str(out)]) == 0
    return {n: tifffile.imread(out / f"{n}.tif") for n in "abc"}


def _no_temporary_files(folder):
    left = [p.name for p in Path(folder).iterdir() if p.name.startswith(".napari-sam-")]
    assert not left, f"temporary files left: {left}"


def _one(data, out):
    return ["segment", data / "a.tif", "--points", data / "prompts" / "a.csv", "--propagate", "--out", out]


# ------------------------------------------------------------------------------------------- one image --
@needs_embedded
@pytest.mark.parametrize("sig, code, said", [
    (signal.SIGINT, 130, "napari-sam: interrupted; nothing was written"),
    (signal.SIGTERM, 143, "napari-sam: stopped by SIGTERM; nothing was written"),
])
def test_segment_stopped_while_propagating_writes_nothing_and_says_so(data, reference, tmp_path, capsys, sig, code,
                                                                      said):
    """Ctrl-C ended with exit status 2 (bad input); SIGTERM (a scheduler's time limit) with no word at all.
    Now: 130 / 143 and one line, nothing on disk; the same command run again writes what one run writes."""
    out = tmp_path / "out" / "a.tif"
    out.parent.mkdir()
    got, err = _signal_when(_launch(tmp_path, SLOW_PROGRESS, _one(data, out)), "PROGRESS", sig)
    assert got == code, err
    assert said in err and "run the same command again" in err and "Traceback" not in err, err
    assert list(out.parent.iterdir()) == [], "no labels, no record, no temporary file"

    rc, err = _run(_one(data, out), capsys)
    assert rc == 0, err
    assert np.array_equal(tifffile.imread(out), reference["a"])


@needs_embedded
def test_segment_stopped_while_writing_keeps_the_earlier_pair(data, tmp_path):
    """SIGTERM while the labels were being written (--overwrite) left the temporary files behind; now the
    earlier labels and record are as they were and nothing else is there."""
    out = tmp_path / "out" / "a.tif"
    out.parent.mkdir()
    tifffile.imwrite(out, np.ones((10, 96, 96), np.uint16))
    (out.parent / "a.prompts.json").write_text('{"earlier": true}')
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    code, err = _signal_when(_launch(tmp_path, SLOW_WRITE, [*_one(data, out), "--overwrite"]),
                             "WRITTEN TO A TEMPORARY FILE", signal.SIGTERM)
    assert code == 143 and "stopped by SIGTERM; nothing was written" in err and "Traceback" not in err, err
    assert f"({out} is as it was)" in err
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before


@needs_embedded
def test_a_run_killed_between_labels_and_record_never_pairs_new_labels_with_the_old_record(data, tmp_path):
    """SIGKILL (no cleanup runs) once the new labels had replaced the old ones but before the record had:
    the new labels sat beside the old run's record, which then described labels it had not made. Now the
    old record is taken away first: what is left is labels without a record (never taken as finished)."""
    out = tmp_path / "out" / "a.tif"
    out.parent.mkdir()
    old = np.full((10, 96, 96), 7, np.uint16)
    tifffile.imwrite(out, old)
    side = out.parent / "a.prompts.json"
    side.write_text('{"earlier": true}')
    proc = _launch(tmp_path, KILL_AFTER_LABELS, [*_one(data, out), "--overwrite"])
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == -signal.SIGKILL, err
    labels = tifffile.imread(out)
    assert not np.array_equal(labels, old), "the kill came after the labels were replaced"
    assert not side.exists(), "the old record does not describe the new labels"


# --------------------------------------------------------------------------------------------- a batch --
def _batch(data, out, prompts=None):
    return ["segment", *[data / f"{n}.tif" for n in "abc"], "--points", prompts or data / "prompts", "--propagate",
            "--out", out]


@needs_embedded
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_batch_cut_short_is_finished_by_the_same_command(data, reference, tmp_path, capsys, sig):
    """Ctrl-C after the first image: exit status 2, and the same command run again was refused ("a.tif
    exists; pass --overwrite"): the user had to list the images left by hand, or redo all. SIGKILL: the
    same refusal. Now the images done are kept and the rest are done; the result is one run's."""
    out = tmp_path / "labels"
    code, err = _signal_when(_launch(tmp_path, SLOW_PROGRESS, _batch(data, out)), "[1/3] a.tif: wrote", sig)
    if sig == signal.SIGINT:
        assert code == 130, err
        assert ("napari-sam: interrupted during b.tif; 1 of 3 images are done in" in err and "(a.tif)" in err
                and "b.tif and the 1 after it not written: run the same command again to do them" in err), err
        assert "Traceback" not in err
    else:
        assert code == -signal.SIGKILL, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.prompts.json", "a.tif"]
    if sig == signal.SIGINT:
        _no_temporary_files(out)
    first = (out / "a.tif").stat()

    code, err = _run(_batch(data, out), capsys)
    assert code == 0, err
    assert "[1/3] a.tif: " in err and "is there from an earlier run of this command" in err and "kept" in err
    assert "[2/3] b.tif: wrote" in err and "[3/3] c.tif: wrote" in err and "(1 kept from an earlier run)" in err
    assert (out / "a.tif").stat().st_mtime_ns == first.st_mtime_ns, "a.tif was not written again"
    for n in "abc":
        assert np.array_equal(tifffile.imread(out / f"{n}.tif"), reference[n]), n
        assert json.loads((out / f"{n}.prompts.json").read_text())["image"] == str((data / f"{n}.tif").resolve())


@needs_embedded
def test_a_batch_run_again_keeps_only_what_this_command_made(data, reference, tmp_path, capsys):
    out = tmp_path / "labels"
    assert _run(_batch(data, out), capsys)[0] == 0
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    code, err = _run(_batch(data, out), capsys)  # all done: nothing to do, nothing rewritten
    assert code == 0 and err.count("kept (--overwrite redoes it)") == 3 and "(3 kept from an earlier run)" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written

    # other prompts for b, other options: refused before anything is written, as any existing output is
    (tmp_path / "p").mkdir()
    for n in "abc":
        (tmp_path / "p" / f"{n}.csv").write_text((data / "prompts" / f"{n}.csv").read_text())
    fewer = (data / "prompts" / "b.csv").read_text().splitlines()[:-1]  # one object less
    (tmp_path / "p" / "b.csv").write_text("\n".join(fewer) + "\n")
    for argv, what in [(_batch(data, out, tmp_path / "p"), "b.tif: "),
                       ([*_batch(data, out), "--input-scale", "1"], "a.tif: "),
                       ([*_batch(data, out)[:-3], "--out", out], "a.tif: ")]:  # without --propagate
        code, err = _run(argv, capsys)
        assert code == 2 and what in err and "exists and was not made by this command" in err, err
        assert "pass --overwrite" in err and "nothing was written" in err
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written

    # a record without its labels, or labels without a record, is not a finished image
    (out / "c.prompts.json").unlink()
    code, err = _run(_batch(data, out), capsys)
    assert code == 2 and "c.tif: " in err and "c.tif exists; pass --overwrite" in err, err
    for n in "ab":
        assert np.array_equal(tifffile.imread(out / f"{n}.tif"), reference[n])


@needs_embedded
def test_a_batch_stops_at_an_image_whose_pixels_cannot_be_read(data, tmp_path, capsys):
    """A .zarr image whose header reads but one of whose chunks is damaged: a RuntimeError traceback from
    zarr's codec, with no word of the images already done. Now it is named, and the others are kept."""
    zarr = pytest.importorskip("zarr")
    images = []
    for n in "abc":
        a = tifffile.imread(data / f"{n}.tif")
        z = zarr.open_array(str(tmp_path / f"{n}.zarr"), mode="w", shape=a.shape, chunks=(1, *a.shape[1:]),
                            dtype=a.dtype)
        z[...] = a
        images.append(tmp_path / f"{n}.zarr")
    chunks = [p for p in (tmp_path / "c.zarr").rglob("*") if p.is_file() and p.stat().st_size and
              "zarr.json" not in p.name and not p.name.startswith(".z")]
    chunks[len(chunks) // 2].write_bytes(b"not a compressed chunk")
    out = tmp_path / "labels"
    code, err = _run(["segment", *images, "--points", data / "prompts", "--propagate", "--out", out], capsys)
    assert code == 2, err
    assert err.startswith("[1/3] a.zarr: wrote") and "[2/3] b.zarr: wrote" in err
    assert "napari-sam: error: c.zarr: cannot read the pixels of" in err and "2 of 3 images are done" in err, err
    assert "once that is put right, run the same command again (the images done are kept, not redone)" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.prompts.json", "a.tif", "b.prompts.json", "b.tif"]


@needs_embedded
def test_a_batch_checks_every_cache_against_its_image_before_writing(data, tmp_path, capsys):
    """c's cache was made from another image: found when c's turn came, after a and b were written, though
    every image's cache is said to be checked before anything runs."""
    import shutil

    caches = tmp_path / "caches"
    for n in "ab":
        assert _run(["embed", data / f"{n}.tif", "--out", caches / f"{n}.zarr", "--z-range", "4:7"], capsys)[0] == 0
    shutil.copytree(caches / "a.zarr", caches / "c.zarr")
    out = tmp_path / "labels"
    code, err = _run([*_batch(data, out), "--embeddings", caches], capsys)
    assert code == 2 and err.startswith("napari-sam: error: c.tif: --embeddings: "), err
    assert "was made from a different image" in err and "nothing was written" in err and ".;" not in err, err
    assert not out.exists()


@needs_embedded
def test_a_batch_stops_at_a_full_disk_keeping_the_images_done(data, reference, tmp_path, capsys, monkeypatch):
    """The disk fills up while the second image's labels are written: the first image's labels and record
    stay, nothing of the second is left, the failing image is named and the exit status says it failed."""
    import errno

    real, calls = tifffile.imwrite, []

    def imwrite(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", imwrite)
    out = tmp_path / "labels"
    code, err = _run(_batch(data, out), capsys)
    assert code == 2, err
    assert "napari-sam: error: b.tif: cannot write" in err and "No space left on device" in err, err
    assert "1 of 3 images are done in" in err and "b.tif and the 1 after it not written" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["a.prompts.json", "a.tif"]
    assert np.array_equal(tifffile.imread(out / "a.tif"), reference["a"])

    monkeypatch.setattr(tifffile, "imwrite", real)  # room again: the same command finishes the batch
    code, err = _run(_batch(data, out), capsys)
    assert code == 0 and "(1 kept from an earlier run)" in err, err
    for n in "abc":
        assert np.array_equal(tifffile.imread(out / f"{n}.tif"), reference[n]), n


# ---------------------------------------------------------------------------------------------- embed --
def _zarr_arrays(path):
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("features", "gray", "signature")}


@needs_embedded
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "napari-sam: interrupted; "),
                                             (signal.SIGTERM, 143, "napari-sam: stopped by SIGTERM; ")])
def test_embed_stopped_midway_resumes_to_the_same_cache(data, tmp_path, capsys, sig, code, said):
    """SIGTERM ended `embed` with no word of the slices saved; now it says so as Ctrl-C does, and the same
    command resumes to the cache one uninterrupted run makes."""
    ref = tmp_path / "ref.zarr"
    assert _run(["embed", data / "a.tif", "--out", ref], capsys)[0] == 0
    out = tmp_path / "a.zarr"
    got, err = _signal_when(_launch(tmp_path, SLOW_PROGRESS, ["embed", data / "a.tif", "--out", out]), "PROGRESS", sig)
    assert got == code, err
    assert said in err and "slices are saved in" in err and "run the same command again to resume" in err, err
    assert "Traceback" not in err

    rc, err = _run(["embed", data / "a.tif", "--out", out], capsys)
    assert rc == 0 and "resuming" in err and "already there" in err, err
    done = int(err.split("resuming")[1].split(": ")[1].split(" of ")[0])
    assert 1 <= done < 10, err
    a, b = _zarr_arrays(ref), _zarr_arrays(out)
    # every slice there once, the same: the signatures and normalised slices exactly; the features up to the
    # float rounding of the interrupted run's one thread against this process's threads (1 fp16 step)
    assert np.array_equal(a["signature"], b["signature"]) and np.array_equal(a["gray"], b["gray"])
    assert np.allclose(a["features"], b["features"], rtol=2e-3, atol=2e-3)


@needs_embedded
def test_embed_stops_at_an_unreadable_slice_keeping_the_slices_done(data, tmp_path, capsys):
    """A TIFF cut short after its sixth slice: a tifffile traceback halfway through `embed`. Now the slice is
    named, the slices done are kept, and the run resumes there once the image reads."""
    whole = (data / "a.tif").read_bytes()
    with tifffile.TiffFile(data / "a.tif") as tf:
        cut = tf.pages[5].dataoffsets[0] + 100
    bad = tmp_path / "a.tif"
    bad.write_bytes(whole[:cut])
    out = tmp_path / "a.zarr"
    code, err = _run(["embed", bad, "--out", out], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "napari-sam: error: cannot read slice 5 of" in err and "the 5 slices done are kept in" in err, err
    assert "run the same command again once the image reads, to resume" in err

    bad.write_bytes(whole)
    code, err = _run(["embed", bad, "--out", out], capsys)
    assert code == 0 and "resuming" in err and "5 of 10 slices already there" in err, err


@needs_embedded
def test_segment_names_a_cache_whose_making_was_cut_short(data, tmp_path, capsys):
    """`embed` stopped while it created the cache (its arrays made, its record not yet) leaves a store that
    `embed` starts again; `segment --embeddings` called it "not a napari-sam embedding cache"."""
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    for name, shape in (("features", (10, 8, 4, 4)), ("gray", (10, 96, 96)), ("signature", (10, 16))):
        g.create_array(name, shape=shape, dtype="f2" if name == "features" else "u1")
    out = tmp_path / "a.tif"
    code, err = _run([*_one(data, out), "--embeddings", tmp_path / "a.zarr", "--input-scale", "2"], capsys)
    assert code == 2 and "making was cut short" in err and "napari-sam embed IMAGE --out" in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- start --
def test_the_command_line_module_loads_only_the_standard_library_before_main():
    """Ctrl-C in the second or so while numpy and the rest loaded printed a traceback (they were imported
    by `napari_sam.cli` itself, before `main` could catch anything)."""
    code = ("import sys, napari_sam.cli; heavy = [m for m in ('numpy', 'tifffile', 'torch', 'napari_sam.io') "
            "if m in sys.modules]; print(heavy)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr

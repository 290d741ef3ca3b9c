"""`napari-sam segment` over several images: one run, every input checked before anything is written."""

import json

import numpy as np
import pytest
import tifffile

from napari_sam.cli import main
from napari_sam.synthetic import interior_point, make_stack

from .conftest import needs_embedded


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _clicks(labels, n=3, min_area=150):
    """points CSV text: one click per object on its middle slice (objects 1..n); the true ids."""
    rows, ids = ["z,y,x,positive,object"], []
    for oid in np.unique(labels[labels > 0]):
        zs = np.flatnonzero((labels == oid).any((1, 2)))
        z = int(zs[0] + zs[-1]) // 2
        if (labels[z] == oid).sum() >= min_area and 0 < zs[0] and zs[-1] < labels.shape[0] - 1:
            r, c = interior_point(labels[z] == oid)
            ids.append(int(oid))
            rows.append(f"{z},{r},{c},1,{len(ids)}")
        if len(ids) == n:
            break
    return "\n".join(rows) + "\n", ids


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    (d / "prompts").mkdir()
    truth = {}
    for k, seed in enumerate((900_610, 900_611)):
        st = make_stack((12, 128, 128), seed=seed, radius_range=(10, 20), density=0.3)
        name = f"stack{k}"
        tifffile.imwrite(d / f"{name}.tif", st.image)
        text, ids = _clicks(st.labels)
        assert len(ids) >= 2
        (d / "prompts" / f"{name}.csv").write_text(text)
        truth[name] = (st.labels, ids)
    return d, truth


@needs_embedded
def test_several_stacks_are_propagated_each_into_its_own_labels(stacks, tmp_path, capsys):
    d, truth = stacks
    out = tmp_path / "labels"
    code, err = _run(["segment", d / "stack0.tif", d / "stack1.tif", "--points", d / "prompts", "--propagate",
                      "--out", out], capsys)
    assert code == 0, err
    assert "[1/2] stack0.tif: wrote" in err and "[2/2] stack1.tif: wrote" in err
    for name, (gt, ids) in truth.items():
        lab = tifffile.imread(out / f"{name}.tif")
        rec = json.loads((out / f"{name}.prompts.json").read_text())
        assert rec["image"] == str((d / f"{name}.tif").resolve()) and rec["mode"] == "propagate"
        assert set(np.unique(lab)) == {0, *range(1, len(ids) + 1)}, "the ids given in the CSV"
        ious = []
        for k, oid in enumerate(ids, start=1):
            g, p = gt == oid, lab == k
            ious.append((g & p).sum() / (g | p).sum())
            assert p.any((1, 2)).sum() >= 3, "carried through z"
        assert min(ious) >= 0.45 and np.median(ious) >= 0.65, (name, ious)


@needs_embedded
def test_one_table_for_every_image(stacks, tmp_path, capsys):
    # e.g. repeated acquisitions of one field: the same clicks on every image
    d, truth = stacks
    again = tmp_path / "again.tif"
    again.write_bytes((d / "stack0.tif").read_bytes())
    code, err = _run(["segment", d / "stack0.tif", again, "--points", d / "prompts" / "stack0.csv",
                      "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    gt, ids = truth["stack0"]
    a, b = tifffile.imread(tmp_path / "o" / "stack0.tif"), tifffile.imread(tmp_path / "o" / "again.tif")
    assert np.array_equal(a, b) and set(np.unique(a)) == {0, *range(1, len(ids) + 1)}
    ious = []
    for k, oid in enumerate(ids, start=1):  # each object on its clicked slice only (no --propagate)
        z = np.flatnonzero(a == k) // (a.shape[1] * a.shape[2])
        assert len(set(z)) == 1
        g, p = gt[z[0]] == oid, a[z[0]] == k
        ious.append((g & p).sum() / (g | p).sum())
    assert min(ious) >= 0.5 and np.median(ious) >= 0.75, ious
    rec0 = json.loads((tmp_path / "o" / "stack0.prompts.json").read_text())
    rec1 = json.loads((tmp_path / "o" / "again.prompts.json").read_text())
    assert rec0["prompts"] == rec1["prompts"] and rec0["mode"] == "per-slice"


def test_every_image_is_checked_before_anything_is_written(stacks, tmp_path, capsys):
    d, _ = stacks
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((12, 64, 64), np.uint16))
    out = tmp_path / "labels"
    # stack0's table asks for points beyond the 64 px image
    (tmp_path / "p").mkdir()
    for name in ("stack0", "small"):
        (tmp_path / "p" / f"{name}.csv").write_text((d / "prompts" / "stack0.csv").read_text())
    code, err = _run(["segment", d / "stack0.tif", small, "--points", tmp_path / "p", "--out", out], capsys)
    assert code == 2 and err.startswith("napari-sam: error: small.tif: ") and "outside the image of 64x64" in err, err
    assert not out.exists(), "nothing written, not even the folder"

    code, err = _run(["segment", d / "stack0.tif", d / "stack1.tif", "--points", tmp_path / "p", "--out", out], capsys)
    assert code == 2 and "stack1.tif: --points folder" in err and "has no stack1.csv" in err, err
    assert not out.exists()

    out.mkdir()
    (out / "stack1.tif").write_bytes(b"earlier result")
    code, err = _run(["segment", d / "stack0.tif", d / "stack1.tif", "--points", d / "prompts", "--out", out], capsys)
    assert code == 2 and "stack1.tif: " in err and "exists; pass --overwrite" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["stack1.tif"], "stack0 not written either"
    assert (out / "stack1.tif").read_bytes() == b"earlier result"

    # --every-slice takes each object's prompts from one slice: stack1's table has object 1 on two slices
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "stack0.csv").write_text((d / "prompts" / "stack0.csv").read_text())
    (tmp_path / "two" / "stack1.csv").write_text("z,y,x,object\n3,40,40,1\n6,41,40,1\n")
    fresh = tmp_path / "fresh"
    code, err = _run(["segment", d / "stack0.tif", d / "stack1.tif", "--points", tmp_path / "two", "--every-slice",
                      "--out", fresh], capsys)
    assert code == 2 and "stack1.tif: --every-slice: object 1 is prompted on slices 3, 6" in err, err
    assert not fresh.exists(), "stack0 was not written either"

    code, err = _run(["segment", d / "stack0.tif", d / "stack0.tif", "--points", d / "prompts", "--out", out], capsys)
    assert code == 2 and "would both write stack0.tif" in err
    code, err = _run(["segment", d / "stack0.tif", d / "stack1.tif", "--points", d / "prompts", "--out",
                      out / "stack1.tif"], capsys)
    assert code == 2 and "with several images --out is a folder" in err
    code, err = _run(["segment", d / "stack0.tif", d / "stack1.tif", "--points", d / "prompts", "--out", out,
                      "--embeddings", tmp_path / "caches"], capsys)
    assert code == 2 and "stack0.tif: no embedding cache" in err and "napari-sam embed" in err



def test_normalize_none_checks_every_image_before_anything_is_written(stacks, tmp_path, capsys):
    d, _ = stacks
    eight = tmp_path / "eight.tif"  # values in 0..255: fine; stack1's 16-bit values are not
    tifffile.imwrite(eight, np.clip(tifffile.imread(d / "stack0.tif") // 8, 0, 255).astype(np.uint8))
    (tmp_path / "p").mkdir()
    for name in ("eight", "stack1"):
        (tmp_path / "p" / f"{name}.csv").write_text((d / "prompts" / "stack0.csv").read_text())
    out = tmp_path / "labels"
    code, err = _run(["segment", eight, d / "stack1.tif", "--points", tmp_path / "p", "--normalize", "none",
                      "--out", out], capsys)
    assert code == 2 and err.startswith("napari-sam: error: stack1.tif: --normalize none") and "0..255" in err, err
    assert not out.exists(), "eight.tif was not written either"


@needs_embedded
def test_a_folder_of_embedding_caches_serves_each_image(stacks, tmp_path, capsys):
    d, _ = stacks
    for name in ("stack0", "stack1"):
        assert main(["embed", str(d / f"{name}.tif"), "--out", str(tmp_path / "caches" / f"{name}.zarr")]) == 0
    capsys.readouterr()
    args = ["segment", d / "stack0.tif", d / "stack1.tif", "--points", d / "prompts", "--out"]
    code, err = _run(args + [tmp_path / "cached", "--embeddings", tmp_path / "caches"], capsys)
    assert code == 0, err
    code, err = _run(args + [tmp_path / "plain"], capsys)
    assert code == 0, err
    for name in ("stack0", "stack1"):
        a, b = tifffile.imread(tmp_path / "cached" / f"{name}.tif"), tifffile.imread(tmp_path / "plain" / f"{name}.tif")
        # the caches hold fp16 embeddings (test_cli: nearly the same masks as fresh fp32 ones)
        assert np.count_nonzero(a != b) <= 0.02 * np.count_nonzero(a | b), name
        assert json.loads((tmp_path / "cached" / f"{name}.prompts.json").read_text())["input_scale"] == 2.0


@needs_embedded
def test_a_glob_that_matched_one_image_still_writes_into_the_folder(stacks, tmp_path, capsys):
    d, truth = stacks
    out = tmp_path / "labels"
    out.mkdir()
    code, err = _run(["segment", d / "stack1.tif", "--points", d / "prompts", "--out", out], capsys)
    assert code == 0, err
    assert "[1/1] stack1.tif: wrote" in err
    lab = tifffile.imread(out / "stack1.tif")
    assert set(np.unique(lab)) == {0, *range(1, len(truth["stack1"][1]) + 1)}


def test_outputs_that_would_lose_a_record_or_an_input_are_refused(stacks, tmp_path, capsys, monkeypatch):
    d, _ = stacks
    monkeypatch.setattr("napari_sam.cli._load", lambda *a: pytest.fail("the model was loaded"))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.tif", "a.ome.tif", "A.tif"):
        (data / name).write_bytes((d / "stack0.tif").read_bytes())
    pts, folder = d / "prompts" / "stack0.csv", d / "prompts"
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    for argv, message in [
        # a.tif and a.ome.tif are both the image a (as their records and caches are named): both a.tif
        ([data / "a.tif", data / "a.ome.tif", "--points", pts, "--out", tmp_path / "o"],
         r"a.tif and \S*a.ome.tif would both write a.tif \(outputs are named after the image without its suffix: "
         r"a.tif is a, a.ome.tif is a\): rename one of them, or segment them in separate runs with different --out "
         "folders; nothing was written"),
        # on a macOS or Windows disk A.tif would replace a.tif
        ([data / "a.tif", data / "A.tif", "--points", pts, "--out", tmp_path / "o"], "A.tif would both write A.tif"),
        # --out the images' own folder: even --overwrite does not replace an input
        ([data / "a.tif", "--points", pts, "--out", data, "--overwrite"],
         "a.tif: --out .*a.tif would replace the input image"),
        # a folder of prompt tables writes IMAGE-NAME.tif into --out: not into a folder named res.tif
        ([d / "stack0.tif", "--points", folder, "--out", tmp_path / "res.tif"],
         "--out .*res.tif names a TIFF, but with a folder of prompt tables --out is a folder"),
    ]:
        code, err = _run(["segment", *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert pytest.importorskip("re").search(message, err), err
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_tables_and_caches_in_folders_are_found_by_the_image_name_without_its_suffix(stacks, tmp_path, capsys,
                                                                                     monkeypatch):
    """a.ome.tif is the image a (core.lazy.image_stem): its table is a.csv and its cache a.zarr; one named the
    earlier way (Path.stem: a.ome.csv) is pointed at, not read."""
    d, _ = stacks
    monkeypatch.setattr("napari_sam.cli._load", lambda *a: pytest.fail("the model was loaded"))
    image = tmp_path / "a.ome.tif"
    image.write_bytes((d / "stack0.tif").read_bytes())
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "a.ome.csv").write_text((d / "prompts" / "stack0.csv").read_text())
    out = tmp_path / "labels"
    code, err = _run(["segment", image, "--points", tmp_path / "tables", "--out", out], capsys)
    assert code == 2 and "a.ome.tif: --points folder" in err, err
    assert "has no a.csv for this image (a.ome.csv is there: files for a.ome.tif are now named a.csv; rename it)" in err
    (tmp_path / "tables" / "a.ome.csv").rename(tmp_path / "tables" / "a.csv")
    (tmp_path / "caches" / "a.ome.zarr").mkdir(parents=True)
    code, err = _run(["segment", image, "--points", tmp_path / "tables", "--out", out, "--embeddings",
                      tmp_path / "caches"], capsys)
    assert code == 2 and "a.ome.tif: no embedding cache" in err, err
    assert "a.zarr (a.ome.zarr is there: files for a.ome.tif are now named a.zarr; rename it)" in err, err
    assert not out.exists()


@needs_embedded
def test_a_batch_names_the_labels_as_their_record_is_named(stacks, tmp_path, capsys):
    """``segment a.ome.tif --points FOLDER --out FOLDER`` writes a.tif beside a.prompts.json (not a.ome.tif)."""
    d, truth = stacks
    image = tmp_path / "data" / "a.ome.tif"
    image.parent.mkdir()
    image.write_bytes((d / "stack1.tif").read_bytes())
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "a.csv").write_text((d / "prompts" / "stack1.csv").read_text())
    out = tmp_path / "labels"
    code, err = _run(["segment", image, "--points", tmp_path / "tables", "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.prompts.json", "a.tif"]
    assert "[1/1] a.ome.tif: wrote " in err and str(out / "a.tif") in err, err
    assert json.loads((out / "a.prompts.json").read_text())["image"] == str(image.resolve())
    assert set(np.unique(tifffile.imread(out / "a.tif"))) == {0, *range(1, len(truth["stack1"][1]) + 1)}

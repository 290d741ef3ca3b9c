"""`napari-sam segment` with inputs and outputs a user gets wrong or unusual (found by a bug hunt): each
refusal exits 2 with one line, before the model loads, and writes nothing; what is written is written whole."""

import json

import numpy as np
import pytest
import tifffile

from napari_sam.synthetic import interior_point

from ._cli_helpers import _objects_on, _run, _write
from .conftest import needs_embedded

# --- refusals found by a bug hunt: each exits 2 with one line, before the model loads, and writes nothing ---


def _refused(argv, capsys, tmp_path, message, monkeypatch=None):
    if monkeypatch is not None:  # refused before the model loads
        monkeypatch.setattr("napari_sam.cli._load", lambda *a: pytest.fail("the model was loaded"))
    code, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("napari-sam: error:"), err
    assert pytest.importorskip("re").search(message, err), err
    return err


MORE_AXES = [  # a table with more coordinate axes than the image is refused, not cut to fit (or fewer: said why)
    ("two.tif", "--points", "y,x\n30,30\n",  # a 2-channel (y, x, 2) image is read as a stack of 128 slices
     r"lacks the columns z,y,x .*: \S*two.tif was read as a 3D image \(128, 128, 2\) \(its last axis has 2: channels\?"),
    ("slice.tif", "--points", "z,y,x\n0,40,40\n", r"p.csv has columns z,y,x but \S*slice.tif was read as a 2D image "
                                                  r"\(128, 128\): give the columns y,x"),
    ("slice.tif", "--points", "index,axis-0,axis-1,axis-2\n0,0,40,40\n", "has columns axis-0,axis-1,axis-2 but "),
    ("stack.tif", "--points", "index,axis-0,axis-1,axis-2,axis-3\n0,0,6,40,40\n",
     r"has columns axis-0,axis-1,axis-2,axis-3 but \S*stack.tif was read as a 3D image \(12, 128, 128\)"),
    ("slice.tif", "--boxes", "z,y0,x0,y1,x1\n0,10,10,30,30\n", "has columns z,y0,x0,y1,x1 but .* a 2D image"),
    ("rgb3.tif", "--points", "z,y,x\n1,40,40\n",  # an 8-bit 3-slice stack saved as planar RGB
     r"was read as a 2D RGB image \(128, 128, 3\): .* if it is a stack of 3 slices"),
]


@pytest.mark.parametrize("image,option,table,message", MORE_AXES)
def test_a_table_with_more_axes_than_the_image_is_refused(stack_files, tmp_path, capsys, monkeypatch, image, option,
                                                          table, message):
    d, st = stack_files
    tifffile.imwrite(d / "rgb3.tif", st.image[:3].astype(np.uint8), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(d / "two.tif", np.stack([st.image[6], st.image[7]], -1))
    out = tmp_path / "o.tif"
    _refused(["segment", d / image, option, _write(tmp_path / "p.csv", table), "--out", out], capsys, tmp_path,
             message, monkeypatch)
    assert not out.exists()


@pytest.mark.parametrize("oid", ["nan", "inf", "1.7", "5000000000", "0", "-2"])
def test_object_ids_that_are_not_uint32_labels_are_refused(stack_files, tmp_path, capsys, monkeypatch, oid):
    d, _ = stack_files
    _write(tmp_path / "p.csv", f"z,y,x,object\n6,40,40,1\n6,50,50,{oid}\n")
    _refused(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--out", tmp_path / "o.tif"], capsys,
             tmp_path, f"p.csv, line 3: object id '{oid}' is not a whole number from 1 to 4294967295", monkeypatch)
    assert not (tmp_path / "o.tif").exists()


def test_propagate_outside_the_z_range_is_refused_before_the_model_loads(stack_files, tmp_path, capsys, monkeypatch):
    d, _ = stack_files
    _write(tmp_path / "p.csv", "z,y,x\n6,40,40\n")
    _refused(["segment", d / "stack.tif", "--points", tmp_path / "p.csv", "--propagate", "--z-range", ":3", "--out",
              tmp_path / "o.tif"], capsys, tmp_path,
             "--propagate: object 1 is prompted on slice 6, outside z_range 0:3", monkeypatch)
    assert not (tmp_path / "o.tif").exists()


def test_excel_csv_with_a_byte_order_mark_is_read_and_a_repeated_column_refused(stack_files, tmp_path, capsys,
                                                                                monkeypatch):
    from napari_sam.io import read_prompts

    d, _ = stack_files
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfz,y,x,object\r\n6,40,41,3\r\n")
    assert read_prompts(tmp_path / "bom.csv", None, (12, 128, 128)) == {3: {6: {"points": [(40.0, 41.0)],
                                                                                 "labels": [1], "box": None}}}
    _write(tmp_path / "dup.csv", "z,y,x,z\n6,40,40,2\n")
    _refused(["segment", d / "stack.tif", "--points", tmp_path / "dup.csv", "--out", tmp_path / "o.tif"], capsys,
             tmp_path, "dup.csv: the header names column 'z' more than once", monkeypatch)


def test_outputs_that_cannot_or_must_not_be_written_are_refused(stack_files, tmp_path, capsys, monkeypatch):
    d, _ = stack_files
    _write(tmp_path / "p.csv", "y,x\n40,40\n")
    image = tmp_path / "img.tif"
    image.write_bytes((d / "slice.tif").read_bytes())
    before = image.read_bytes()
    _write(tmp_path / "a_file", "")
    for out, message in [
        (image, "--out .*img.tif would replace the input image .*img.tif: choose another --out"),
        (tmp_path / "lab.png", "lab.png: the labels are written as a TIFF; give a name ending in .tif or .tiff"),
        (tmp_path / "a_file" / "o.tif", "a_file is a file, not a folder; choose another --out"),
        (tmp_path / "nowhere" / "o.tif", "folder .*nowhere does not exist"),
    ]:
        _refused(["segment", image, "--points", tmp_path / "p.csv", "--out", out, "--overwrite"], capsys, tmp_path,
                 message, monkeypatch)
    assert image.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "img.tif", "p.csv"]


def test_the_record_is_named_after_the_whole_image_name():
    from napari_sam.io import sidecar_path

    for name, record in [("2024.01.15_s1.tif", "2024.01.15_s1.prompts.json"), ("res.v2.tiff", "res.v2.prompts.json"),
                         ("a.ome.tif", "a.prompts.json"), ("b.OME.TIFF", "b.prompts.json"),
                         ("c.tif", "c.prompts.json")]:
        assert sidecar_path(f"/x/{name}").name == record


def test_labels_and_record_are_written_as_a_pair_with_the_usual_file_mode(tmp_path):
    import os

    from napari_sam.io import InputError, write_labels_atomic

    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    old = os.umask(0o027)
    try:
        write_labels_atomic(tmp_path / "a.tif", labels, {"k": 1})
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.tif": 0o640, "a.prompts.json": 0o640}
    (tmp_path / "a.tif").chmod(0o664)
    write_labels_atomic(tmp_path / "a.tif", labels + 1, {"k": 2})  # --overwrite: the file keeps its mode
    assert (tmp_path / "a.tif").stat().st_mode & 0o777 == 0o664 and tifffile.imread(tmp_path / "a.tif")[0, 0] == 1

    # the record cannot replace its target: the labels stay as they were, no temporary file is left
    (tmp_path / "b.tif").write_bytes(b"precious")
    (tmp_path / "b.prompts.json").mkdir()
    with pytest.raises(InputError, match=r"cannot write \S*b.prompts.json: .*nothing was written"):
        write_labels_atomic(tmp_path / "b.tif", labels, {"k": 3})
    assert (tmp_path / "b.tif").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.prompts.json", "a.tif", "b.prompts.json", "b.tif"]


def _one_click(st, path) -> int:
    """A y,x table with one click in an object of slice 6 (the 2D image ``slice.tif``); the object's id."""
    oid = _objects_on(st.labels, 6, 1)[0]
    r, c = interior_point(st.labels[6] == oid)
    _write(path, f"y,x\n{r},{c}\n")
    return oid


@needs_embedded
def test_files_with_dots_zarr_and_npy_images_and_write_errors(stack_files, tmp_path, capsys, monkeypatch):
    import zarr

    d, st = stack_files
    _one_click(st, tmp_path / "p.csv")
    np.save(tmp_path / "slice.npy", st.image[6])
    z = zarr.open_array(str(tmp_path / "slice.zarr"), mode="w", shape=st.image[6].shape, dtype=st.image.dtype)
    z[:] = st.image[6]
    outs = {}
    for image, name in [(d / "slice.tif", "2024.01.15_s1.tif"), (tmp_path / "slice.npy", "2024.01.15_s2.tif"),
                        (tmp_path / "slice.zarr", "2024.01.15_s3.tif")]:
        code, err = _run(["segment", image, "--points", tmp_path / "p.csv", "--out", tmp_path / name], capsys)
        assert code == 0, err
        outs[name] = tifffile.imread(tmp_path / name)
        rec = json.loads((tmp_path / name.replace(".tif", ".prompts.json")).read_text())
        assert rec["image"] == str(image.resolve())
    a, b, c3 = outs.values()
    assert a.any() and np.array_equal(a, b) and np.array_equal(a, c3), "the same image as a TIFF, .npy and .zarr"

    # a write that fails after the work: one line, exit 2, the earlier labels and record untouched, no temporary files
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    code, err = _run(["segment", d / "slice.tif", "--points", tmp_path / "p.csv", "--out",
                      tmp_path / "2024.01.15_s1.tif", "--overwrite"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot write" in err and "2024.01.15_s1.tif: No space left on device; nothing was written" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@needs_embedded
def test_segment_reads_a_cache_embedded_with_another_normalisation(stack_files, tmp_path, capsys, monkeypatch):
    from napari_sam.core.predictor import SlicePredictor

    d, st = stack_files
    oid = _one_click(st, tmp_path / "p.csv")
    code, err = _run(["embed", d / "slice.tif", "--out", tmp_path / "e.zarr", "--normalize", "minmax"], capsys)
    assert code == 0, err
    code, err = _run(["segment", d / "slice.tif", "--points", tmp_path / "p.csv", "--out", tmp_path / "x.tif",
                      "--embeddings", tmp_path / "e.zarr"], capsys)
    assert code == 2 and "intensity normalisation" in err and not (tmp_path / "x.tif").exists(), err
    calls = []
    embed = SlicePredictor.embed
    monkeypatch.setattr(SlicePredictor, "embed", lambda self, *a, **k: calls.append(1) or embed(self, *a, **k))
    code, err = _run(["segment", d / "slice.tif", "--points", tmp_path / "p.csv", "--out", tmp_path / "o.tif",
                      "--embeddings", tmp_path / "e.zarr", "--normalize", "minmax"], capsys)
    assert code == 0 and calls == [], err
    got, gt = tifffile.imread(tmp_path / "o.tif") == 1, st.labels[6] == oid
    assert (gt & got).sum() / (gt | got).sum() >= 0.7
    assert json.loads((tmp_path / "o.prompts.json").read_text())["normalize"] == "minmax"


@needs_embedded
def test_an_object_that_got_no_pixels_is_named(stack_files, tmp_path, capsys):
    """Two objects clicked at the same place: SAM gives both the same mask, and every pixel goes to one. The
    run says which object came out empty instead of a bare object count."""
    d, st = stack_files
    oid = _objects_on(st.labels, 6, 1)[0]
    r, c = interior_point(st.labels[6] == oid)
    _write(tmp_path / "p.csv", f"y,x,object\n{r},{c},4\n{r},{c},5\n")
    code, err = _run(["segment", d / "slice.tif", "--points", tmp_path / "p.csv", "--out", tmp_path / "o.tif"], capsys)
    assert code == 0, err
    assert "(1 of 2 objects" in err and "no pixels for object 5 (SAM found nothing there, or another" in err, err
    assert set(np.unique(tifffile.imread(tmp_path / "o.tif"))) == {0, 4}


def test_propagate_refuses_two_objects_on_one_click_before_the_model_loads(stack_files, tmp_path, capsys,
                                                                           monkeypatch):
    """Two objects given the same click split one nucleus between them (propagation refuses it); the CLI's
    up-front check, which vets every image before anything runs, let it through to the run."""
    import napari_sam.core.models as models_mod

    d, _ = stack_files
    pts = _write(tmp_path / "p.csv", "z,y,x,positive,object\n6,40,50,1,1\n6,40,50,1,2\n")
    loads = []
    monkeypatch.setattr(models_mod, "load_model", lambda *a, **k: loads.append(a) or 1 / 0)
    code, err = _run(["segment", d / "stack.tif", "--points", pts, "--propagate", "--out", tmp_path / "l.tif"], capsys)
    assert code == 2 and not (tmp_path / "l.tif").exists() and loads == []
    assert "--propagate: objects 1 and 2 have a positive click at (row=40, col=50) on slice 6" in err, err


# --- what a prompt table holds beyond what napari-sam reads is refused, not passed over ---

UNREAD = [  # (image, option, table, message): each ran with a column or a cell dropped
    pytest.param("stack.tif", "--points", "t,z,y,x\n5,6,40,40\n5,3,40,40\n",
                 r"p.csv: column 't' puts every row on time point 5, but \S*stack.tif is read as one \(z, y, x\) "
                 r"stack, with no time points: if \S*stack.tif is time point 5, delete the 't' column", id="t-shared"),
    pytest.param("stack.tif", "--points", "t,z,y,x\n0,6,40,40\n2,6,40,40\n1,6,40,40\n",
                 r"column 't' has 3 time points \(0, 1, 2\), but .*: save each time point as its own stack",
                 id="t-several"),
    pytest.param("slice.tif", "--points", "t,y,x\n0,40,40\n",
                 r"\S*slice.tif is read as one 2D \(y, x\) image, with no time points", id="t-2d"),
    pytest.param("stack.tif", "--boxes", "time,z,y0,x0,y1,x1\n0,6,10,10,30,30\n",
                 "column 'time' puts every row on time point 0", id="time-boxes"),
    pytest.param("stack.tif", "--points", "index,axis-0,axis-1,axis-2,axis-3\n0,2,6,40,40\n",  # napari, a 4D layer
                 r"axis-0 is 2 on every row: if the image is that time point or slice, delete axis-0 and rename "
                 r"axis-1,axis-2,axis-3 to z,y,x", id="napari-4d"),
    pytest.param("stack.tif", "--points", "z,y,x,postive\n6,40,40,0\n",  # every point would have been positive
                 r"p.csv: napari-sam does not read column 'postive' \(did you mean 'positive' for 'postive'\?\); a "
                 r"points table has z,y,x \(or napari's axis-0,axis-1,axis-2\), positive, object \(and napari's "
                 r"index, ignored\): rename or delete it", id="postive"),
    pytest.param("stack.tif", "--points", "z,y,x,obj\n6,40,40,4\n",
                 r"column 'obj' \(did you mean 'object' for 'obj'\?\)", id="obj"),
    pytest.param("slice.tif", "--points", "y,x,label,note\n40,40,4,nucleus\n",
                 "does not read columns 'label', 'note'; a points table has y,x .*: rename or delete them",
                 id="label-note"),
    pytest.param("stack.tif", "--boxes", "z,y0,x0,y1,x1,positive\n6,10,10,30,30,0\n",
                 r"does not read column 'positive' \(a box is always a positive prompt: to mark what to leave out, "
                 r"give negative points in --points\); a boxes table has z,y0,x0,y1,x1, object", id="box-positive"),
    pytest.param("stack.tif", "--points", "z,y,x\n6,40,40,0\n",  # a 'positive' cell without its header
                 r"p.csv, line 2: cell 4 \('0'\) is beyond the header's columns: name its column in the header "
                 r"\(z,y,x\), or delete the cell", id="cell-beyond-header"),
    pytest.param("stack.tif", "--points", "z,y,x,\n6,40,40,\n6,50,50,2\n",
                 r"line 3: cell 4 \('2'\) is under a column without a name", id="unnamed-column"),
]


@pytest.mark.parametrize("image,option,table,message", UNREAD)
def test_a_time_column_an_unknown_column_or_an_unnamed_cell_is_refused(stack_files, tmp_path, capsys, monkeypatch,
                                                                     image, option, table, message):
    d, _ = stack_files
    out = tmp_path / "o.tif"
    _refused(["segment", d / image, option, _write(tmp_path / "p.csv", table), "--out", out], capsys, tmp_path,
             message, monkeypatch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_napari_exports_and_empty_trailing_columns_are_read(tmp_path):
    from napari_sam.io import read_prompts

    write = pytest.importorskip("napari_builtins.io._write")
    # napari's own export of the widget's prompt layer: index, axis-N, and its 'positive' feature
    write.napari_write_points(str(tmp_path / "p.csv"), np.array([[6.0, 40, 40], [6, 50, 50]]),
                              {"properties": {"positive": np.array([True, False])}})
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "index,axis-0,axis-1,axis-2,positive"
    assert read_prompts(tmp_path / "p.csv", None, (12, 128, 128)) == {
        1: {6: {"points": [(40.0, 40.0), (50.0, 50.0)], "labels": [1, 0], "box": None}}}
    # a spreadsheet's empty trailing column; a box table with a row number
    _write(tmp_path / "q.csv", "z,y,x,object,\n6,40,40,7,\n\n3,20,20,8\n")
    _write(tmp_path / "b.csv", "index,z,y0,x0,y1,x1,object\n0,6,10,10,30,30,9\n")
    got = read_prompts(tmp_path / "q.csv", tmp_path / "b.csv", (12, 128, 128))
    assert sorted(got) == [7, 8, 9] and got[8] == {3: {"points": [(20.0, 20.0)], "labels": [1], "box": None}}
    assert got[9][6]["box"].tolist() == [10, 10, 30, 30]

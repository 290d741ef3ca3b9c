"""`napari-sam segment --masks`: objects drawn or corrected by hand as prompts, as a user runs it."""

import json
import re

import numpy as np
import pytest
import tifffile

from ._cli_helpers import _run, _write
from .conftest import needs_embedded


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _middle_slices(gt, ids):
    """Each object's mask on its middle slice only, as an annotator's sparse labels."""
    sparse = np.zeros_like(gt, dtype=np.uint16)
    for i in ids:
        zs = np.flatnonzero((gt == i).any((1, 2)))
        zm = (zs[0] + zs[-1]) // 2
        sparse[zm][gt[zm] == i] = i
    return sparse


def _big(gt, n=4, min_area=300):
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    return [int(i) for i in ids[counts >= min_area][:n]]


@needs_embedded
def test_masks_on_one_slice_each_are_propagated_through_the_stack_and_kept_as_drawn(stack_files, tmp_path, capsys):
    d, st = stack_files
    gt = st.labels
    ids = _big(gt)
    sparse = _middle_slices(gt, ids)
    tifffile.imwrite(tmp_path / "sparse.tif", sparse)
    out = tmp_path / "dense.tif"
    code, err = _run(["segment", d / "stack.tif", "--masks", tmp_path / "sparse.tif", "--propagate", "--out", out], capsys)
    assert code == 0, err
    assert f"({len(ids)} of {len(ids)} objects" in err, err
    labels = tifffile.imread(out)
    assert set(np.unique(labels)) == {0, *ids}, "the objects keep the ids they were drawn with"
    np.testing.assert_array_equal(labels[sparse > 0], sparse[sparse > 0])  # the drawn slices as drawn
    for i in ids:  # 3D IoU measured (session 15): 0.86, 0.85, 0.87, 0.74
        assert (labels == i).any((1, 2)).sum() >= 3, f"object {i} was carried to other slices"
        assert _iou(labels == i, gt == i) >= 0.7, f"object {i}: 3D IoU {_iou(labels == i, gt == i):.2f}"
    rec = json.loads(out.with_name("dense.prompts.json").read_text())
    z = int(np.flatnonzero((sparse == ids[0]).any((1, 2)))[0])
    assert rec["mode"] == "propagate"
    assert rec["prompts"][str(ids[0])][str(z)]["mask"]["pixels"] == int((sparse[z] == ids[0]).sum())


@needs_embedded
def test_masks_and_points_together_number_the_points_above_the_labels(stack_files, tmp_path, capsys):
    d, st = stack_files
    gt = st.labels
    a, b = _big(gt, 2)
    sparse = _middle_slices(gt, [a])
    tifffile.imwrite(tmp_path / "one.tif", sparse)
    zb = int(np.flatnonzero((gt == b).any((1, 2))).mean())
    from napari_sam.synthetic import interior_point

    r, c = interior_point(gt[zb] == b)
    _write(tmp_path / "p.csv", f"z,y,x\n{zb},{r},{c}\n")  # no object id: the next one above the labels'
    out = tmp_path / "o.tif"
    code, err = _run(["segment", d / "stack.tif", "--masks", tmp_path / "one.tif", "--points", tmp_path / "p.csv",
                      "--propagate", "--out", out], capsys)
    assert code == 0, err
    labels = tifffile.imread(out)
    assert set(np.unique(labels)) == {0, a, a + 1}
    assert _iou(labels == a, gt == a) >= 0.7 and _iou(labels == a + 1, gt == b) >= 0.6  # measured 0.86, 0.84


BAD = [
    ("shape", "has shape \\(12, 64, 128\\), the image \\(12, 128, 128\\)"),
    ("fraction", "holds fractional values \\(float32\\): labels are whole numbers"),
    ("negative", "has negative labels \\(e.g. -3 on z=2\\)"),
    ("empty", "holds no objects \\(every pixel is 0\\)"),
    ("png", "give the labels as a TIFF \\(.tif, .tiff\\) or a .npy file"),
    ("no-mode", "--masks are kept as they are on their slices; they segment the other slices with --propagate"),
    ("two-slices", "--every-slice: .*object 5"),
    ("same-file", "would replace the --masks labels"),
]


@pytest.mark.parametrize("case,message", BAD)
def test_bad_masks_exit_2_with_the_reason_and_write_nothing(stack_files, tmp_path, capsys, case, message):
    d, st = stack_files
    good = np.zeros(st.labels.shape, np.uint16)
    good[6, 40:60, 40:60] = 5
    files = {
        "shape": np.zeros((12, 64, 128), np.uint16),
        "fraction": good.astype(np.float32) / 2,
        "negative": np.where(np.arange(12)[:, None, None] == 2, -3, good).astype(np.int16),
        "empty": np.zeros_like(good),
    }
    path = tmp_path / f"{case}.tif"
    extra, out = ["--propagate"], tmp_path / "out.tif"
    if case in files:
        tifffile.imwrite(path, files[case])
    elif case == "png":
        path = _write(tmp_path / "m.png", "not labels")
    else:
        g = good.copy()
        if case == "two-slices":
            g[8, 40:60, 40:60] = 5
            extra = ["--every-slice"]
        tifffile.imwrite(path, g)
        if case == "no-mode":
            extra = []
        if case == "same-file":
            out, extra = path, ["--propagate", "--overwrite"]
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    code, err = _run(["segment", d / "stack.tif", "--masks", path, *extra, "--out", out], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("napari-sam: error:"), err
    assert re.search(message, err), err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before, "nothing written, nothing changed"


def test_a_batch_reads_each_images_masks_from_a_folder_and_names_the_missing_one(stack_files, tmp_path, capsys):
    d, st = stack_files
    masks = tmp_path / "masks"
    masks.mkdir()
    good = np.zeros(st.labels.shape, np.uint16)
    good[6, 40:60, 40:60] = 5
    tifffile.imwrite(masks / "stack.tif", good)
    tifffile.imwrite(tmp_path / "other.tif", st.image)
    code, err = _run(["segment", d / "stack.tif", tmp_path / "other.tif", "--masks", masks, "--propagate",
                      "--out", tmp_path / "out"], capsys)
    assert code == 2 and "other.tif: --masks folder" in err and "has no other.tif for this image" in err, err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_read_all_merges_masks_and_tables_and_a_negative_point_may_go_with_a_mask(tmp_path):
    from napari_sam._mask_prompts import read_all

    m = np.zeros((4, 20, 20), np.uint8)
    m[1, 2:6, 2:6] = 7
    m[2, 10:14, 10:14] = 3
    np.save(tmp_path / "m.npy", m)
    _write(tmp_path / "p.csv", "z,y,x,positive\n1,4,5,0\n3,15,15,1\n")
    prompts = read_all(tmp_path / "p.csv", None, tmp_path / "m.npy", (4, 20, 20))
    assert sorted(prompts) == [3, 7, 8], "the unnumbered click gets 8, above the labels' 7"
    assert prompts[7][1]["labels"] == [0] and prompts[7][1]["mask"].sum() == 16, "the negative point joins the mask"
    assert prompts[3][2]["mask"][10:14, 10:14].all() and prompts[3][2]["points"] == []
    assert prompts[8][3]["points"] == [(15.0, 15.0)] and "mask" not in prompts[8][3]
    # ImageJ's (z, 1, y, x) is read as (z, y, x)
    tifffile.imwrite(tmp_path / "ij.tif", m[:, None])
    assert sorted(read_all(None, None, tmp_path / "ij.tif", (4, 20, 20))) == [3, 7]

"""The Labels TIFF writer (with its prompts sidecar) and the sample-data contribution."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sam._writer import prompts_sidecar, write_labels


def _record(label, z, point):
    return {
        "label": label,
        "plane": {"axes": [0], "index": [z]},
        "points": [[z, *point]],
        "point_labels": [1],
        "box": None,
        "mask_prompt": False,
        "sam_output": 1,
        "predicted_iou": 0.9,
    }


@pytest.fixture
def labels():
    a = np.zeros((4, 32, 40), np.uint32)
    a[1, 5:10, 5:12] = 1
    a[2, 20:30, 30:38] = 7
    return a


def test_writes_values_voxel_size_and_the_prompts_of_present_objects(tmp_path, labels):
    attributes = {
        "name": "cells",
        "scale": (2.0, 0.5, 0.25),
        "translate": (0.0, 0.0, 0.0),
        "metadata": {"napari_sam": {"objects": [_record(1, 1, [7, 8]), _record(7, 2, [25, 33]), _record(3, 0, [1, 1])]}},
    }
    out = write_labels(str(tmp_path / "cells.tif"), labels, attributes)
    tif, side = tmp_path / "cells.tif", tmp_path / "cells.prompts.json"
    assert out == [str(tif), str(side)]
    with tifffile.TiffFile(tif) as f:
        back = f.asarray()
        assert f.is_imagej and f.imagej_metadata["spacing"] == 2.0
        xres = f.pages[0].tags["XResolution"].value
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint8  # the smallest type that holds the labels
    assert xres[0] / xres[1] == pytest.approx(4.0)  # pixels per unit = 1 / 0.25
    doc = json.loads(side.read_text())
    assert [o["label"] for o in doc["objects"]] == [1, 7], "label 3 is not in the data (undone): not saved"
    assert doc["labels_file"] == "cells.tif" and doc["objects"][0]["points"] == [[1, 7, 8]]


def test_an_undone_commit_whose_id_went_to_the_next_object_is_not_saved(tmp_path):
    """Commit A as label 1, undo, commit B: B gets label 1 again. Only B's record describes label 1."""
    a = np.zeros((3, 20, 20), np.uint8)
    a[1, 10:16, 10:16] = 1  # B
    rec = lambda pt: {"label": 1, "plane": {"axes": [0], "index": [1]}, "points": [[1, *pt]],  # noqa: E731
                      "point_labels": [1], "box": None}
    undone, kept = rec((3, 3)), rec((12, 12))
    target = tmp_path / "l.tif"
    write_labels(str(target), a, {"metadata": {"napari_sam": {"objects": [undone, kept]}}})
    assert json.loads(prompts_sidecar(target).read_text())["objects"] == [kept]


def test_saving_labels_without_records_keeps_an_earlier_record_of_objects_still_there(tmp_path):
    """Labels opened from a file carry no records: saving them over the file kept nothing of the record beside
    it (the only one of how its objects were made). Now the objects still there keep theirs; a record of
    napari-sam segment (prompts per object) is left as it is."""
    a = np.zeros((20, 20), np.uint8)
    a[2:6, 2:6] = 1
    obj = lambda label, pt: {"label": label, "plane": {"axes": [], "index": []}, "points": [pt],  # noqa: E731
                             "point_labels": [1], "box": None}
    target = tmp_path / "2024.01.15_s1.tif"
    side = tmp_path / "2024.01.15_s1.prompts.json"
    side.write_text(json.dumps({"napari_sam_version": "0", "objects": [obj(1, [3, 3]), obj(2, [12, 12])]}))
    assert write_labels(str(target), a, {}) == [str(target), str(side)]
    assert [o["label"] for o in json.loads(side.read_text())["objects"]] == [1], "label 2 was erased"
    cli = {"napari_sam_version": "0", "model": {"name": "embedded"}, "prompts": {"1": {"0": {}}}}
    side.write_text(json.dumps(cli))
    write_labels(str(target), a, {})
    assert json.loads(side.read_text()) == cli


def test_large_ids_overwrite_and_missing_suffix(tmp_path, labels):
    labels[0, 0, 0] = 70000
    target = tmp_path / "big.tiff"
    target.write_bytes(b"old content")
    prompts_sidecar(target).write_text(json.dumps({"napari_sam_version": "0", "objects": []}))
    assert write_labels(str(target), labels, {"scale": (1, 1, 1)}) == [str(target)]
    np.testing.assert_array_equal(tifffile.imread(target), labels)  # uint32, values intact
    assert not prompts_sidecar(target).exists(), "a sidecar of the file's earlier content is removed"
    out = write_labels(str(tmp_path / "noext"), labels[0], {})
    assert out == [str(tmp_path / "noext.tif")]
    np.testing.assert_array_equal(tifffile.imread(out[0]), labels[0])


def test_sample_data_is_the_seeded_nuclei_stack_with_its_voxel_size():
    from napari_sam._sample_data import nuclei_stack

    (img, ikw, itype), (lab, lkw, ltype) = nuclei_stack()
    assert (itype, ltype) == ("image", "labels")
    assert img.shape == lab.shape == (24, 256, 256) and lab.max() > 20
    assert ikw["scale"][0] > ikw["scale"][1] == ikw["scale"][2] > 0
    assert lkw["scale"] == ikw["scale"] and lkw["visible"] is False

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


def test_objects_committed_into_labels_opened_from_a_file_keep_the_earlier_record(tmp_path):
    """Yesterday's labels opened again, one more object committed, saved over the file: the record beside it
    was replaced by today's commit alone, losing how every earlier object was made. Now the earlier records of
    objects still there stay (one record per label and slice: today's, where both describe one); a
    napari-sam segment record keeps what it says beside today's objects."""
    a = np.zeros((3, 20, 20), np.uint8)
    a[1, 2:6, 2:6] = 1
    a[1, 10:14, 10:14] = 2
    target = tmp_path / "s1.tif"
    side = prompts_sidecar(target)
    yesterday = [_record(1, 1, [3, 3]), _record(2, 1, [12, 12]), _record(3, 2, [5, 5])]  # 3 since erased
    side.write_text(json.dumps({"napari_sam_version": "0", "objects": yesterday}))
    a[2, 15:19, 15:19] = 4
    today = [_record(4, 2, [16, 16]), _record(2, 1, [11, 11])]  # a new object; label 2 refined
    assert write_labels(str(target), a, {"metadata": {"napari_sam": {"objects": today}}}) == [str(target), str(side)]
    doc = json.loads(side.read_text())
    assert [(o["label"], o["points"]) for o in doc["objects"]] == [(1, [[1, 3, 3]]), (4, [[2, 16, 16]]),
                                                                   (2, [[1, 11, 11]])]
    assert doc["labels_file"] == "s1.tif"
    write_labels(str(target), a, {"metadata": {"napari_sam": {"objects": today}}})  # saved again: no duplicates
    assert [o["label"] for o in json.loads(side.read_text())["objects"]] == [1, 4, 2]

    cli = {"napari_sam_version": "0", "model": "embedded", "prompts": {"1": {"1": {"points": [[3, 3]]}}}}
    side.write_text(json.dumps(cli))
    write_labels(str(target), a, {"metadata": {"napari_sam": {"objects": today[:1]}}})
    doc = json.loads(side.read_text())
    assert doc["prompts"] == cli["prompts"] and doc["model"] == "embedded"
    assert [o["label"] for o in doc["objects"]] == [4]


def test_a_missing_folder_is_named_and_nothing_is_written(tmp_path):
    """napari's console (viewer.layers.save) with a folder that does not exist: the error named a temporary
    '.part' file the user never asked for."""
    a = np.ones((4, 4), np.uint8)
    with pytest.raises(OSError, match=r"cannot save l\.tif: .*missing does not exist; create the folder"):
        write_labels(str(tmp_path / "missing" / "l.tif"), a, {})
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(OSError, match=r"afile is a file, not a folder"):
        write_labels(str(tmp_path / "afile" / "l.tif"), a, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert (tmp_path / "afile").read_text() == "keep"


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


def test_negative_and_large_ids_are_saved_as_they_are(tmp_path):
    """An int64 layer with a negative id and one past int32: every value was cast to int32 (3e9 became
    -1294967296)."""
    a = np.zeros((6, 6), np.int64)
    a[0, 0], a[1, 1], a[2, 2] = -1, 3_000_000_000, 7
    out = write_labels(str(tmp_path / "l.tif"), a, {})
    np.testing.assert_array_equal(tifffile.imread(out[0]), a)
    small = np.array([[-2, 0], [5, 40000]], np.int64)
    back = tifffile.imread(write_labels(str(tmp_path / "s.tif"), small, {})[0])
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, small)


def test_sample_data_is_the_seeded_nuclei_stack_with_its_voxel_size():
    from napari_sam._sample_data import nuclei_stack

    (img, ikw, itype), (lab, lkw, ltype) = nuclei_stack()
    assert (itype, ltype) == ("image", "labels")
    assert img.shape == lab.shape == (24, 256, 256) and lab.max() > 20
    assert ikw["scale"][0] > ikw["scale"][1] == ikw["scale"][2] > 0
    assert lkw["scale"] == ikw["scale"] and lkw["visible"] is False

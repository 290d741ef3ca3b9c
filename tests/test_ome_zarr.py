"""OME-Zarr images (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3), as ome-zarr-py, bioformats2raw and ngff-zarr
write them: read by their axes and their full-resolution dataset, one slice at a time.

Before, ``core.lazy`` took a group's array "0" and ignored its metadata: a (t, c, z, y, x) image of shape
(1, 1, 32, 256, 256) was refused as "expected a 2D or 3D image", and one with 2 channels or several time
points was refused without a word of why. The metadata is written here by hand (no OME library needed).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from napari_sam.core.lazy import open_stack
from napari_sam.io import image_header, read_image
from napari_sam.synthetic import make_stack

from ._cli_helpers import _click_each, _run, _write
from .conftest import needs_embedded

zarr = pytest.importorskip("zarr")

TCZYX = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
         {"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
         {"name": "x", "type": "space", "unit": "micrometer"}]
FORMATS = [2, 3]  # zarr v2 with OME-NGFF 0.4, zarr v3 with 0.5


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 60000, shape, dtype=np.uint16)


def write_ome(path, data, axes, fmt, paths=("0",), group=None):
    """``data`` as an OME-Zarr image at ``path`` (zarr_format ``fmt``: 2 -> NGFF 0.4, 3 -> 0.5), one chunk per
    plane, under ``paths[0]``; every further path gets a 2x downsampled copy. ``axes``: the metadata's axes
    (dicts, or 0.3's plain names), None to leave them out. group: write into this group instead of a new one."""
    g = group if group is not None else zarr.open_group(str(path), mode="w", zarr_format=fmt)
    datasets = []
    for k, name in enumerate(paths):
        level = data[..., :: 2**k, :: 2**k]
        a = g.create_array(name, shape=level.shape, dtype=level.dtype,
                           chunks=(1,) * (level.ndim - 2) + level.shape[-2:])
        a[...] = level
        datasets.append({"path": name, "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * (level.ndim - 2) + [2.0**k, 2.0**k]}]})
    ms = {"name": "image", "datasets": datasets}
    if axes is not None:
        ms["axes"] = axes
    if fmt == 2:
        g.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return g


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_tczyx_image_with_one_time_point_and_channel_is_a_zyx_stack(tmp_path, fmt):
    src = _pixels((1, 1, 6, 24, 20))
    write_ome(tmp_path / "a.zarr", src, TCZYX, fmt)
    lazy = open_stack(tmp_path / "a.zarr")
    assert lazy.shape == (6, 24, 20) and not lazy.was_2d and not lazy.rgb and lazy.kind == "zarr"
    for z in (0, 3, -1):
        assert np.array_equal(lazy.data[z], src[0, 0, z]), z
    assert np.array_equal(lazy.data[2, 5:9, ::3], src[0, 0, 2, 5:9, ::3])
    assert np.array_equal(lazy.data[...], src[0, 0]) and np.array_equal(lazy.data[1:4], src[0, 0, 1:4])
    vol = read_image(tmp_path / "a.zarr")  # napari_sam.io, as `napari-sam segment` reads an image
    assert vol.data.shape == (6, 24, 20) and not vol.is_2d and np.array_equal(vol.data, src[0, 0])
    assert image_header(tmp_path / "a.zarr") == ((6, 24, 20), False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_slice_read_reads_only_its_own_chunk(tmp_path, fmt):
    """Every chunk but slice 4's is damaged: slice 4 reads, pixel-equal; any other slice fails: nothing but the
    slice asked for is read (no whole-array read to drop the singleton axes)."""
    src = _pixels((1, 1, 8, 16, 16), seed=1)
    write_ome(tmp_path / "a.zarr", src, TCZYX, fmt)
    chunks = {}
    for f in (tmp_path / "a.zarr" / "0").rglob("*"):
        key = f.relative_to(tmp_path / "a.zarr" / "0").as_posix()
        if f.is_file() and not key.endswith((".zarray", ".zattrs", "zarr.json")):
            chunks[int(re.split(r"[./]", key.removeprefix("c/"))[2])] = f
    if sorted(chunks) != list(range(8)):
        pytest.skip(f"not zarr's default chunk keys: {sorted(chunks)}")
    for z, f in chunks.items():
        if z != 4:
            f.write_bytes(b"damaged" * 20)
    lazy = open_stack(tmp_path / "a.zarr")
    assert np.array_equal(lazy.data[4], src[0, 0, 4])
    with pytest.raises((RuntimeError, ValueError, OSError)):  # the codec's error for the damaged chunk
        lazy.data[5]


REFUSED = [  # (name, shape, axes, message fragments; PATH is the store's path)
    ("two_channels", (1, 2, 4, 16, 16), TCZYX,
     ["has 2 channels (its axes, as the file gives them, are TCZYX, shape (1, 2, 4, 16, 16))",
      "napari-sam segments one channel", "tifffile.imwrite('channel0.tif', zarr.open(PATH)['0'][0, 0])",
      "or pass that array to napari_sam.propagate"]),
    ("three_times", (3, 1, 4, 16, 16), TCZYX,
     ["is a time series of 3 stacks (its axes, as the file gives them, are TCZYX, shape (3, 1, 4, 16, 16))",
      "tifffile.imwrite('t0.tif', zarr.open(PATH)['0'][0, 0], imagej=True, metadata={'axes': 'ZYX'})",
      "with its own prompt table, or pass that array to napari_sam.propagate"]),
    ("czyx", (2, 4, 16, 16), TCZYX[1:],
     ["has 2 channels (its axes, as the file gives them, are CZYX", "zarr.open(PATH)['0'][0])"]),
    # five planes named channels: a TIFF's guessed CYX would be a z-stack, OME-Zarr says channels
    ("five_channels_2d", (5, 16, 16), ["c", "y", "x"],
     ["has 5 channels (its axes, as the file gives them, are CYX", "zarr.open(PATH)['0'][0]), or pass that "
      "array to napari_sam.segment"]),
    ("unknown_axis", (2, 3, 16, 16), [{"name": "angle", "type": "angle"}, *TCZYX[2:]],
     ["has 4 axes of more than one element (its axes, as the file gives them, are QZYX, shape (2, 3, 16, 16); "
      "Q is 'angle')", "tifffile.imwrite('stack0.tif', zarr.open(PATH)['0'][0])"]),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,shape,axes,fragments", REFUSED, ids=[r[0] for r in REFUSED])
def test_channels_time_and_unknown_axes_are_refused_with_what_to_do(tmp_path, capsys, monkeypatch, fmt, name,
                                                                     shape, axes, fragments):
    image = tmp_path / f"{name}.zarr"
    write_ome(image, _pixels(shape), axes, fmt)
    with pytest.raises(ValueError) as e:
        open_stack(image)
    for f in fragments:
        assert f.replace("PATH", repr(str(image))) in str(e.value), f"{f!r} not in {e.value}"
    assert "if these planes are z slices" not in str(e.value), "OME-Zarr's axes are not a guess"
    monkeypatch.setattr("napari_sam.cli._load", lambda *a: pytest.fail("the model was loaded"))
    points = _write(tmp_path / "p.csv", "z,y,x\n0,5,5\n")
    code, err = _run(["segment", image, "--points", points, "--out", tmp_path / "l.tif"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(e.value) in err, err
    assert not (tmp_path / "l.tif").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_time_points_without_z_are_read_as_slices_as_a_tyx_tiff_is(tmp_path, fmt):
    src = _pixels((5, 1, 1, 16, 12))
    write_ome(tmp_path / "t.zarr", src, TCZYX, fmt)  # bioformats2raw's shape for a 2D time series
    write_ome(tmp_path / "tyx.zarr", src[:, 0, 0], ["t", "y", "x"], fmt)  # 0.3's axes: plain names
    for name in ("t.zarr", "tyx.zarr"):
        lazy = open_stack(tmp_path / name)
        assert lazy.shape == (5, 16, 12) and not lazy.was_2d, name
        assert np.array_equal(lazy.data[3], src[3, 0, 0]), name
    tifffile.imwrite(tmp_path / "tyx.tif", src[:, 0, 0], imagej=True, metadata={"axes": "TYX"})
    assert open_stack(tmp_path / "tyx.tif").shape == (5, 16, 12), "as the TIFF path reads TYX"


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_plane_is_a_2d_image_and_the_first_dataset_is_full_resolution(tmp_path, fmt):
    src = _pixels((1, 1, 1, 16, 12))
    write_ome(tmp_path / "one.zarr", src, TCZYX, fmt)
    lazy = open_stack(tmp_path / "one.zarr")
    assert lazy.was_2d and lazy.shape == (1, 16, 12) and np.array_equal(lazy.data[0], src[0, 0, 0])
    vol = read_image(tmp_path / "one.zarr")
    assert vol.is_2d and vol.shape == (16, 12)
    # datasets name the full resolution "full"; "0" is the half-resolution level here
    stack = _pixels((1, 1, 4, 16, 12))
    write_ome(tmp_path / "levels.zarr", stack, TCZYX, fmt, paths=("full", "0"))
    lazy = open_stack(tmp_path / "levels.zarr")
    assert lazy.shape == (4, 16, 12) and np.array_equal(lazy.data[2], stack[0, 0, 2])
    # 0.1/0.2 give no axes: always (t, c, z, y, x)
    write_ome(tmp_path / "old.zarr", stack, None, fmt)
    assert open_stack(tmp_path / "old.zarr").shape == (4, 16, 12)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bioformats2raw_layout_reads_its_first_image(tmp_path, fmt):
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=fmt)
    if fmt == 2:
        root.attrs["bioformats2raw.layout"] = 3
    else:
        root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    src = _pixels((1, 1, 3, 16, 16))
    write_ome(None, src, TCZYX, fmt, group=root.create_group("0"))
    lazy = open_stack(tmp_path / "b2r.zarr")
    assert lazy.shape == (3, 16, 16) and np.array_equal(lazy.data[1], src[0, 0, 1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_that_does_not_fit_the_store_is_said(tmp_path, fmt):
    g = write_ome(tmp_path / "a.zarr", _pixels((1, 1, 3, 16, 16)), TCZYX[2:], fmt)
    with pytest.raises(ValueError, match=re.escape("metadata gives 3 axes (ZYX) for an array of shape "
                                                   "(1, 1, 3, 16, 16)") + ".*fix the axes in its .zattrs"):
        open_stack(tmp_path / "a.zarr")
    ms = {"axes": TCZYX, "datasets": [{"path": "s0"}]}
    if fmt == 2:
        g.attrs["multiscales"] = [ms]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    with pytest.raises(ValueError, match="names 's0' as the full-resolution array, but the store has no array"):
        open_stack(tmp_path / "a.zarr")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_group_without_ome_metadata_is_read_as_before(tmp_path, fmt):
    a, b = _pixels((3, 16, 16)), _pixels((2, 8, 8), seed=5)
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=fmt)
    g.create_array("1", shape=b.shape, dtype=b.dtype)[...] = b
    g.create_array("0", shape=a.shape, dtype=a.dtype)[...] = a
    g.attrs["note"] = "not OME"
    lazy = open_stack(tmp_path / "plain.zarr")
    assert lazy.shape == (3, 16, 16) and np.array_equal(lazy.data[2], a[2]), "array '0'"
    g = zarr.open_group(str(tmp_path / "named.zarr"), mode="w", zarr_format=fmt)
    g.create_array("b", shape=a.shape, dtype=a.dtype)[...] = a
    g.create_array("a", shape=b.shape, dtype=b.dtype)[...] = b
    assert open_stack(tmp_path / "named.zarr").shape == (2, 8, 8), "else the first array by name"
    four = zarr.open_group(str(tmp_path / "four.zarr"), mode="w", zarr_format=fmt)
    four.create_array("0", shape=(1, 1, 3, 8, 8), dtype="uint8")
    with pytest.raises(ValueError, match=re.escape("has shape (1, 1, 3, 8, 8): expected a 2D (y, x) or 3D")):
        open_stack(tmp_path / "four.zarr")  # without axes, nothing says what its axes are


@needs_embedded
def test_segment_an_ome_zarr_from_the_shell_writes_zyx_labels(tmp_path, capsys):
    st = make_stack((8, 128, 128), seed=900_520, radius_range=(10, 22), density=0.35)
    write_ome(tmp_path / "cells.zarr", st.image[None, None], TCZYX, 3)
    z = 4
    ids = _click_each(st.labels, z, tmp_path / "p.csv")
    assert ids
    out = tmp_path / "labels.tif"
    code, err = _run(["segment", tmp_path / "cells.zarr", "--points", tmp_path / "p.csv", "--out", out], capsys)
    assert code == 0, err
    lab = tifffile.imread(out)
    assert lab.shape == (8, 128, 128), "(z, y, x), not the file's (t, c, z, y, x)"
    assert set(np.unique(lab)) == {0} | {10 + k for k in range(len(ids))}
    assert not lab[np.arange(8) != z].any()
    for k, oid in enumerate(ids):
        gt, got = st.labels[z] == oid, lab[z] == 10 + k
        assert (gt & got).sum() / (gt | got).sum() > 0.6, oid


def test_an_ome_zarr_image_is_named_without_its_suffix():
    """Labels, records, tables and caches for a.ome.zarr are named a.*, as for a.ome.tif."""
    from napari_sam.core.lazy import image_stem

    assert image_stem("data/a.ome.zarr") == image_stem("data/a.ome.tif") == "a"
    assert image_stem("b.zarr") == "b" and image_stem(".ome.zarr") == ".ome"

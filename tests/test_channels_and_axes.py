"""Images that are not one (z, y, x) grayscale stack, as cell biologists have them: channels, time points,
colour, a thin stack. Each is segmented on the right channel and slice, or refused with what to do.

Found by a bug hunt: a TIFF whose own axes say channels (ImageJ/OME "CYX", a 2D image with a nuclei and
a membrane channel) was read as a z-stack, its channels segmented and propagated through as slices;
"ZCYX"/"TZYX" files were refused without a word of what to do; ``propagate(channel_axis=1)`` on a
(z, c, y, x) array (napari's way of counting) took each slice's rows for channels, and
``propagate(channel=...)`` failed with a TypeError naming an inner function.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_sam
from napari_sam.synthetic import interior_point, make_stack

from ._cli_helpers import _run, _write
from .conftest import needs_embedded

Z = 3


@pytest.fixture(scope="module")
def two_channels():
    """(nuclei, membrane) SyntheticStacks of (6, 64, 64); the nuclei's ground truth is used."""
    nuc = make_stack((6, 64, 64), seed=2, radius_range=(8, 14), density=0.3)
    mem = make_stack((6, 64, 64), seed=7, kind="cells", radius_range=(10, 20), density=0.5)
    return nuc, mem


def _largest(labels2d) -> int:
    ids, counts = np.unique(labels2d[labels2d > 0], return_counts=True)
    return int(ids[np.argmax(counts)])


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


REFUSED = [  # (name, array from (nuclei, membrane), tifffile keywords, message fragments)
    ("zcyx", lambda n, m: np.stack([n.image, m.image], 1), {"imagej": True, "metadata": {"axes": "ZCYX"}},
     ["has 2 channels (its axes, as the file gives them, are ZCYX, shape (6, 2, 64, 64))",
      "napari-sam segments one channel", "zcyx.tif')[:, 0])"]),
    ("cyx", lambda n, m: np.stack([n.image[Z], m.image[Z]]), {"imagej": True, "metadata": {"axes": "CYX"}},
     ["has 2 channels (its axes, as the file gives them, are CYX", "cyx.tif')[0]);",
      "if these planes are z slices, not channels, save them with the axes ZYX"]),
    ("tzyx", lambda n, m: np.stack([n.image, n.image]), {"imagej": True, "metadata": {"axes": "TZYX"}},
     ["is a time series of 2 stacks (its axes, as the file gives them, are TZYX",
      "tzyx.tif')[0], imagej=True, metadata={'axes': 'ZYX'}), with its own prompt table"]),
    ("ome_cyx", lambda n, m: np.stack([n.image[Z], m.image[Z]]), {"metadata": {"axes": "CYX"}},
     ["has 2 channels (its axes, as the file gives them, are CYX"]),
]


@pytest.mark.parametrize("name,make,kw,fragments", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_tiff_whose_axes_say_channels_or_time_is_refused_with_what_to_do(two_channels, tmp_path, capsys,
                                                                             monkeypatch, name, make, kw, fragments):
    from napari_sam.core.lazy import open_stack

    nuc, mem = two_channels
    image = tmp_path / f"{name}.tif"
    tifffile.imwrite(image, make(nuc, mem), **kw)
    r, c = interior_point(nuc.labels[Z] == _largest(nuc.labels[Z]))
    points = _write(tmp_path / "p.csv", f"z,y,x\n0,{r},{c}\n")
    monkeypatch.setattr("napari_sam.cli._load", lambda *a: pytest.fail("the model was loaded"))
    out = tmp_path / "labels.tif"
    for argv in (["segment", image, "--points", points, "--propagate", "--out", out],
                 ["embed", image, "--out", tmp_path / "e.zarr"]):
        code, err = _run(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        for f in fragments:
            assert f in err, f"{f!r} not in {err}"
    assert not out.exists() and not (tmp_path / "e.zarr").exists()
    with pytest.raises(ValueError, match="napari-sam segments one"):
        open_stack(image)


def test_stacks_whose_axes_say_z_or_colour_are_read_as_stacks(two_channels, tmp_path):
    from napari_sam.core.lazy import open_stack
    from napari_sam.io import read_image

    nuc, _ = two_channels
    rgb = np.repeat((nuc.image // max(1, nuc.image.max() // 255)).clip(0, 255).astype(np.uint8)[..., None], 3, -1)
    files = {  # tifffile names the axes of an RGB stack written with imagej=True and no axes "CYXS"
        "zyx.tif": (nuc.image[Z : Z + 2], {"imagej": True, "metadata": {"axes": "ZYX"}}, (2, 64, 64), False),
        "plain.tif": (nuc.image[Z : Z + 2], {}, (2, 64, 64), False),
        "rgb.tif": (rgb, {"imagej": True}, (6, 64, 64, 3), True),
        "tyx.tif": (nuc.image, {"imagej": True, "metadata": {"axes": "TYX"}}, (6, 64, 64), False),
        # a z-stack saved from Python without axes: tifffile names it CYX (imagej=True, or .ome.tif)
        "imagej_no_axes.tif": (nuc.image, {"imagej": True}, (6, 64, 64), False),
        "no_axes.ome.tif": (nuc.image, {}, (6, 64, 64), False),
    }
    for name, (a, kw, shape, is_rgb) in files.items():
        tifffile.imwrite(tmp_path / name, a, **kw)
        vol, lazy = read_image(tmp_path / name), open_stack(tmp_path / name)
        assert vol.data.shape == lazy.shape == shape and vol.rgb == lazy.rgb == is_rgb, name


@needs_embedded
def test_a_two_slice_stack_propagates_from_the_shell_onto_both_slices(two_channels, tmp_path, capsys):
    nuc, _ = two_channels
    tifffile.imwrite(tmp_path / "thin.tif", nuc.image[Z : Z + 2], imagej=True, metadata={"axes": "ZYX"})
    oid = _largest(nuc.labels[Z])
    r, c = interior_point(nuc.labels[Z] == oid)
    points = _write(tmp_path / "p.csv", f"z,y,x,object\n0,{r},{c},4\n")
    code, err = _run(["segment", tmp_path / "thin.tif", "--points", points, "--propagate", "--out",
                      tmp_path / "labels.tif"], capsys)
    assert code == 0, err
    out = tifffile.imread(tmp_path / "labels.tif")
    assert out.shape == (2, 64, 64) and set(np.unique(out)) == {0, 4}
    for k in range(2):
        assert _iou(out[k] == 4, nuc.labels[Z + k] == oid) >= 0.7, k


def test_propagate_counts_channel_axis_in_a_slice_and_takes_no_channel(two_channels, embedded_model):
    nuc, mem = two_channels
    zcyx = np.stack([nuc.image, mem.image], 1)
    oid = _largest(nuc.labels[Z])
    prompts = {1: {Z: {"points": [interior_point(nuc.labels[Z] == oid)]}}}
    with pytest.raises(ValueError, match=r"channel_axis=1 would take the middle axis of each slice \(stack\[z\], "
                                         r"shape \(2, 64, 64\)\), its rows or columns, for channels: .* it is 0 for "
                                         r"a \(z, c, y, x\) stack"):
        napari_sam.propagate(zcyx, prompts, model=embedded_model, channel_axis=1)
    with pytest.raises(ValueError, match=r"propagation takes no channel=: give the channel's own \(z, y, x\) stack, "
                                         r"e.g. stack\[:, 1\]"):
        napari_sam.propagate(zcyx, prompts, model=embedded_model, channel_axis=0, channel=0)
    out = napari_sam.propagate(zcyx[:, 0], prompts, model=embedded_model)  # the channel, as the message says
    assert out.shape == (6, 64, 64) and Z in np.nonzero(out.any((1, 2)))[0]
    assert _iou(out == 1, nuc.labels == oid) >= 0.7


def test_segment_takes_the_channel_asked_for(two_channels, embedded_model):
    nuc, mem = two_channels
    oid = _largest(nuc.labels[Z])
    gt = nuc.labels[Z] == oid
    point = [interior_point(gt)]
    yxc = np.stack([nuc.image[Z], mem.image[Z]], -1).astype(np.float32)
    nuclei = napari_sam.segment(yxc, points=point, channel_axis=-1, channel=0, model=embedded_model).best()[0]
    membrane = napari_sam.segment(yxc, points=point, channel_axis=-1, channel=1, model=embedded_model).best()[0]
    assert _iou(nuclei, gt) >= 0.7 and _iou(membrane, gt) < 0.5


@pytest.mark.parametrize("shape, kw, says", [
    ((64, 64), {"channel_axis": -1}, "channel_axis=-1, but the array of shape (64, 64) is one 2D grayscale slice: "
                                     "leave channel_axis out"),
    ((2, 64, 64), {}, "if axis 0 holds channels, pass channel_axis=0"),
    ((64, 64, 3), {}, "if axis -1 holds channels, pass channel_axis=-1"),
    ((12, 64, 64), {}, "of shape (12, 64, 64); for a z-stack pick a slice (stack[z]) or use propagate()"),
    ((2, 3, 64, 64), {"channel_axis": 0}, "takes one 2D slice with channels, got an array of shape (2, 3, 64, 64)"),
])
def test_segment_says_which_axis_to_name_for_an_array_that_is_not_one_slice(shape, kw, says):
    with pytest.raises(ValueError) as e:
        napari_sam.segment(np.zeros(shape, np.uint8), points=[[5, 5]], **kw)
    assert says in str(e.value)

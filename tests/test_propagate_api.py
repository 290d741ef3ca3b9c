"""napari_sam.propagate as a script calling it on many stacks uses it: what it is given
(ids, slice indices, prompts, labels) and what it guarantees (exact ids, the user's drawing kept).

The model tests run the real embedded model on a small synthetic stack (12, 128, 128).
"""

import numpy as np
import pytest

import napari_sam
from napari_sam.core.propagate import propagate_labels
from napari_sam.synthetic import interior_point, make_stack

Z = 6


@pytest.fixture(scope="module")
def stack():
    return make_stack((12, 128, 128), seed=960003, kind="nuclei", radius_range=(10, 22), density=0.3)


def _iou(a, b):
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def _click(gt, oid, z=Z):
    return interior_point(gt[z] == oid)


# ------------------------------------------------------ without a model --
def test_only_negative_points_are_refused():
    """A negative click alone gave an object of a few background pixels, silently."""
    prompts = {1: {2: {"points": [[5, 5]], "labels": [0]}}}
    with pytest.raises(ValueError, match="object 1 on slice 2 has only negative points .* add a positive point"):
        propagate_labels(np.zeros((8, 32, 32)), prompts, model=None)
    with pytest.raises(ValueError, match="object 1 has only negative points"):
        propagate_labels(np.zeros((8, 32, 32)), {1: prompts[1][2]}, model=None, through_z=True)


@pytest.mark.parametrize("through_z", [False, True])
def test_two_objects_given_the_same_click_are_refused(through_z):
    """Two ids clicked on one pixel (a duplicated table row) split one nucleus in halves, and both
    stopped after their prompted slice: silently two half objects on one slice."""
    prompts = {3: {2: {"points": [[10.2, 12]]}}, 7: {2: {"points": [[9.8, 12], [20, 20]], "labels": [1, 0]}}}
    with pytest.raises(ValueError, match=r"objects 3 and 7 have a positive click at \(row=10, col=12\)"):
        propagate_labels(np.zeros((8, 32, 32)), prompts, model=None, through_z=through_z)
    boxes = {1: {2: {"box": [1, 1, 9, 9]}}, 2: {2: {"box": [1, 1, 9, 9]}}}
    with pytest.raises(ValueError, match=r"objects 1 and 2 have the box \(1, 1, 9, 9\)"):
        propagate_labels(np.zeros((8, 32, 32)), boxes, model=None, through_z=through_z)


@pytest.mark.parametrize(
    ("dtype", "oid", "wider"),
    [(np.uint16, 70000, "uint32"), (np.uint8, 300, "uint16"), (bool, 2, "uint16"), (np.int32, 2**31, "uint32"),
     (np.float32, 2**24 + 1, "uint32")],
)
def test_an_id_the_given_labels_cannot_hold_is_refused(dtype, oid, wider):
    """An OverflowError from deep inside the run (uint16 labels, id 70000), or the id silently changed
    (bool labels: id 2 became True; float32: 2**24 + 1 became 2**24)."""
    labels = np.zeros((8, 32, 32), dtype)
    with pytest.raises(ValueError, match=f"object id {oid} does not fit the labels' dtype .*astype\\(np.{wider}\\)"):
        propagate_labels(np.zeros((8, 32, 32)), {oid: {2: {"points": [[5, 5]]}}}, model=None, labels=labels)
    assert not labels.any()


def test_prompt_messages():
    base = np.zeros((8, 32, 32))
    with pytest.raises(ValueError, match=r"object 1 on slice 2: a box is 4 numbers \(row0, col0, row1, col1\), got 3"):
        propagate_labels(base, {1: {2: {"box": [1, 2, 3]}}}, model=None)
    with pytest.raises(ValueError, match="object 1 on slice 2: the mask is empty"):
        propagate_labels(base, {1: {2: {"mask": np.zeros((32, 32), bool)}}}, model=None)
    with pytest.raises(ValueError, match=r"at most 2\*\*64 - 1"):
        propagate_labels(base, {2**64: {2: {"points": [[5, 5]]}}}, model=None)


# --------------------------------------------------------- with a model --
def test_an_id_beyond_uint32_is_kept_exactly(embedded_model, stack):
    """Ids of 2**32 and more raised an OverflowError from the label canvas."""
    gt, oid = stack.labels, 2**40 + 3
    a = int(np.unique(gt[Z])[1])
    out = napari_sam.propagate(stack.image, {oid: {Z: {"points": [_click(gt, a)]}}}, model=embedded_model,
                               z_range=(4, 9))
    assert out.dtype == np.uint64 and set(np.unique(out).tolist()) == {0, oid}
    assert _iou(out[4:9] == oid, gt[4:9] == a) > 0.7


def test_every_slice_takes_a_float_slice_index(embedded_model, stack):
    """{object: {6.0: prompt}} (z read from a table of floats) is taken by propagation; with
    through_z=True it was refused as "unknown prompt keys [6.0]"."""
    gt = stack.labels
    a = int(np.unique(gt[Z])[1])
    p = {"points": [_click(gt, a)]}
    kw = dict(model=embedded_model, through_z=True, z_range=(3, 10), input_scale=2.0)
    got = napari_sam.propagate(stack.image, {a: {np.float32(Z): p}}, **kw)
    np.testing.assert_array_equal(got, napari_sam.propagate(stack.image, {a: {Z: p}}, **kw))
    assert _iou(got[3:10] == a, gt[3:10] == a) > 0.6


def test_every_slice_with_a_mask_alone_follows_the_object(embedded_model, stack):
    """Prompts on every slice with a drawn mask: SAM returns little of a mask alone, and each slice got a
    1-pixel object or nothing (3D IoU 0.00); now the mask goes with its box, as segment() does, and on the
    slice it was drawn on it is kept as drawn."""
    gt = stack.labels
    a = int(np.unique(gt[Z])[1])
    drawn = gt[Z] == a
    out = napari_sam.propagate(stack.image, {a: {Z: {"mask": drawn}}}, model=embedded_model, through_z=True,
                               input_scale=2.0)
    np.testing.assert_array_equal(out[Z] == a, drawn)
    assert _iou(out == a, gt == a) > 0.7


MANY = """
import resource, sys
import numpy as np
import napari_sam
from napari_sam.synthetic import interior_point, make_stack

s = make_stack((12, 256, 256), seed=5, kind="nuclei", radius_range=(6, 12), density=0.4)
prompts = {}
for i in np.unique(s.labels)[1:]:
    zs = np.flatnonzero((s.labels == i).any((1, 2)))
    z = int((zs[0] + zs[-1]) // 2)
    prompts[int(i)] = {z: {"points": [interior_point(s.labels[z] == i)]}}
model = napari_sam.load_model("embedded", device="cpu")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = napari_sam.propagate(s.image, prompts, model=model, input_scale=2.0)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
found = len(set(np.unique(out).tolist()) & set(prompts))
print(len(prompts), found, round(grew))
"""


def test_many_objects_at_once_keep_memory_bounded(embedded_model):
    """207 nuclei on a 12 x 256 x 256 stack: the run's peak memory grew by 0.92 GB (1.3 GB of RSS kept by
    the allocator): every object's dense prompt was made at the whole embedding's size, 129 of them in one
    decoder call sized by their small windows, and each object's low-res logits were a view keeping its
    whole call's logits alive. Measured in a fresh process, freed memory returned at once."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))  # free() returns big blocks: live memory
    run = subprocess.run([sys.executable, "-c", MANY], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    n, found, grew = map(int, run.stdout.split()[-3:])
    assert n >= 200 and found == n
    assert grew < 520, f"the run's peak memory grew by {grew} MB"


def test_an_objects_logits_are_its_own(embedded_model, stack):
    """What a propagation track keeps of an object (``Decoded.low_res``) must not be a view into the
    decoder call's logits of all objects (it kept them all alive: RSS grew through the run)."""
    from napari_sam.core.batch_decode import decode_objects
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.prompts import ObjectPrompt

    gt = stack.labels
    pred = SlicePredictor(embedded_model, input_scale=2.0)
    pred.set_image(stack.image[Z])
    ids = [int(i) for i in np.unique(gt[Z]) if i]
    got = decode_objects(pred, [ObjectPrompt(points=[_click(gt, i)]) for i in ids], multimask=True)
    for d in got:
        assert d.low_res.base is None or d.low_res.base.nbytes == d.low_res.nbytes
    full = np.zeros((len(got),) + gt.shape[1:], bool)
    for k, d in enumerate(got):
        full[k, d.r0 : d.r0 + d.mask.shape[0], d.c0 : d.c0 + d.mask.shape[1]] = d.mask
    assert np.median([_iou(f, gt[Z] == i) for f, i in zip(full, ids)]) > 0.7


def test_channel_axis_of_a_zcyx_stack_and_of_a_grayscale_one(embedded_model, stack):
    """channel_axis is the channels' axis in a slice; a (z, c, y, x) stack with channel_axis=0 was
    measured as if its last axis were the channels ("point outside the slice of 2x128 pixels"), and a
    grayscale (z, y, x) stack with channel_axis=-1 failed deep inside the stop rule ("not enough values
    to unpack")."""
    gt = stack.labels
    a = int(np.unique(gt[Z])[1])
    prompts = {a: {Z: {"points": [_click(gt, a)]}}}
    zcyx = np.stack([stack.image, stack.image // 2], 1)
    out = napari_sam.propagate(zcyx, prompts, model=embedded_model, channel_axis=0, z_range=(3, 10),
                               input_scale=2.0)
    assert out.shape == gt.shape and _iou(out[3:10] == a, gt[3:10] == a) > 0.7
    with pytest.raises(ValueError, match=r"channel_axis=-1 is for a stack of colour or multichannel slices.*"
                                         r"\(12, 128, 128\): leave channel_axis out"):
        napari_sam.propagate(stack.image, prompts, model=embedded_model, channel_axis=-1)

"""The synthetic microscopy generator: reproducible, labelled as it looks, and its variety options."""

import numpy as np
import pytest

from napari_sam.synthetic import make_image, make_stack

SHAPE = (12, 128, 128)


def _object_brightness(st, z):
    """Median intensity above the background of each object on slice z, by object id."""
    img, lab = st.image[z].astype(np.float64), st.labels[z]
    bg = np.median(img[lab == 0])
    return {int(i): float(np.median(img[lab == i]) - bg) for i in np.unique(lab[lab > 0]) if (lab == i).sum() >= 30}


def test_same_seed_same_stack_and_labels_are_sequential():
    a, b = make_stack(SHAPE, seed=3), make_stack(SHAPE, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, make_stack(SHAPE, seed=4).image)
    ids = np.unique(a.labels[a.labels > 0])
    assert np.array_equal(ids, np.arange(1, a.meta["n_objects"] + 1))


def test_objects_are_brighter_than_the_background_and_mostly_end_inside_the_stack():
    st = make_stack((24, 160, 160), seed=11, kind="nuclei")
    img, lab = st.image.astype(np.float64), st.labels
    assert np.median(img[lab > 0]) > 2 * np.median(img[lab == 0])
    zs = [np.flatnonzero((lab == i).any((1, 2))) for i in range(1, lab.max() + 1)]
    inside = [z[0] > 0 and z[-1] < lab.shape[0] - 1 for z in zs if len(z)]
    assert np.mean(inside) >= 0.5


def test_dtypes_and_2d_images():
    assert make_stack(SHAPE, seed=1, dtype="uint8").image.dtype == np.uint8
    im = make_image((96, 80), seed=2)
    assert im.image.shape == im.labels.shape == (96, 80) and im.image.dtype == np.uint16


@pytest.mark.parametrize("kw, text", [({"kind": "bacteria"}, "kind must be 'nuclei' or 'cells'"),
                                      ({"dtype": "float32"}, "dtype must be 'uint8' or 'uint16'")])
def test_bad_arguments_say_what_is_allowed(kw, text):
    with pytest.raises(ValueError, match=text):
        make_stack(SHAPE, seed=0, **kw)


def test_variety_options_off_leave_the_stack_unchanged_and_never_move_labels():
    base = make_stack(SHAPE, seed=5)
    off = make_stack(SHAPE, seed=5, bright_fraction=0.0, dome=0.0, brightness_spread=0.0)
    assert np.array_equal(base.image, off.image)
    on = make_stack(SHAPE, seed=5, bright_fraction=0.5, dome=0.8, brightness_spread=0.3)
    assert np.array_equal(base.labels, on.labels)  # only the light changes, never the ground truth
    assert not np.array_equal(base.image, on.image)


def test_bright_fraction_makes_a_few_nuclei_several_times_brighter():
    z = 12
    base = _object_brightness(make_stack((24, 256, 256), seed=21), z)
    bright = _object_brightness(make_stack((24, 256, 256), seed=21, bright_fraction=0.3), z)
    ratios = np.array([bright[i] / base[i] for i in base if base[i] > 0 and i in bright])
    assert len(ratios) >= 5
    assert ratios.max() >= 2.5
    assert 0.05 <= np.mean(ratios > 2.5) <= 0.6  # some nuclei, not all

"""The training script's pieces: augmentation keeps labels on their objects,
corrective points land in the error, and a checkpoint it writes loads and
runs through the same code path as the shipped one."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.synthetic import make_image
from napari_sam.train import main
from napari_sam.train_data import SIZE, magnify_crop
from napari_sam.train_recipe import corrective_point


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("scale", [1.3, 2.0, 2.2])
def test_magnified_crop_keeps_each_label_on_its_object(scale):
    lab = np.zeros((SIZE, SIZE), np.uint16)
    img = np.full((SIZE, SIZE), 20, np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for k, (r, c, rad) in enumerate([(60, 70, 9), (128, 130, 5), (200, 190, 14), (90, 200, 3)], start=1):
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= rad**2
        lab[disc], img[disc] = k, 220
    rng = np.random.default_rng(1)
    seen = 0
    for _ in range(6):  # random offsets
        im, lb = magnify_crop(img, lab, scale, rng)
        assert im.shape == lb.shape == (SIZE, SIZE) and lb.dtype == lab.dtype
        comps, _ = ndi.label(im > 120)
        for k in np.unique(lb[lb > 0]):
            obj = lb == k
            if obj.sum() < 30 or obj[[0, -1]].any() or obj[:, [0, -1]].any():
                continue  # cut by the crop
            seen += 1
            blob = comps == np.bincount(comps[obj]).argmax()  # the bright disc under the label
            assert _iou(obj, blob) >= 0.9, (scale, k, _iou(obj, blob))
    assert seen >= 4


def test_corrective_point_lands_in_the_larger_error():
    rng = np.random.default_rng(0)
    gt = np.zeros((64, 64), bool)
    gt[10:40, 10:40] = True
    too_small = gt.copy()
    too_small[10:40, 25:40] = False  # misses the right half: a positive point there
    p, lab = corrective_point(gt, too_small, rng)
    assert lab == 1 and gt[int(p[0]), int(p[1])] and not too_small[int(p[0]), int(p[1])]
    too_big = gt.copy()
    too_big[40:60, 10:40] = True  # spills below: a negative point there
    p, lab = corrective_point(gt, too_big, rng)
    assert lab == 0 and too_big[int(p[0]), int(p[1])] and not gt[int(p[0]), int(p[1])]


def test_a_checkpoint_it_writes_loads_like_the_shipped_one(tmp_path):
    from napari_sam.core.models import load_model
    from napari_sam.core.predictor import SlicePredictor

    out = tmp_path / "tiny.pt"
    main(["--out", str(out), "--steps", "2", "--stacks", "2", "--batch", "2", "--threads", "1", "--warmup", "1",
          "--max-scale", "2.0", "--save-every", "0", "--data-cache", str(tmp_path / "data.npz")])
    import torch

    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert ck["training"]["args"]["max_scale"] == 2.0, "the checkpoint records how it was trained"
    model = load_model(out)
    import hashlib

    assert model.arch == "embedded" and model.native_resolution
    assert model.checksum == hashlib.sha256(out.read_bytes()).hexdigest()
    st = make_image((128, 128), seed=5, radius_range=(10, 20), density=0.3)
    pred = SlicePredictor(model)
    pred.set_image(st.image)
    res = pred.predict(points=np.array([[64.0, 64.0]]), point_labels=[1])
    assert res.masks.shape == (1, 3, 128, 128) and np.isfinite(res.scores).all()

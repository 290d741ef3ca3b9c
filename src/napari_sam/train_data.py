"""Training data for the embedded model (``napari_sam.train``): slices of
synthetic stacks from the training seeds only (``TRAIN_SEED0 + i``;
evaluation uses seeds >= ``EVAL_SEED0``), cached once, and the magnified
crops the recipe draws from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TRAIN_SEED0 = 100_000
EVAL_SEED0 = 900_000
SIZE = 256


def _gen_one(i: int, variety: float = 0.0):
    from napari_sam.core.image import to_sam_rgb
    from napari_sam.synthetic import make_stack

    rng = np.random.default_rng(TRAIN_SEED0 + i)
    kind = "cells" if rng.random() < 0.2 else "nuclei"
    nz = int(rng.integers(10, 22))
    dtype = "uint8" if rng.random() < 0.3 else "uint16"
    extra = {}
    if variety and np.random.default_rng([TRAIN_SEED0 + i, 2]).random() < variety:
        extra = dict(bright_fraction=0.08, dome=0.8, brightness_spread=0.3)
    st = make_stack((nz, SIZE, SIZE), seed=TRAIN_SEED0 + i, kind=kind, dtype=dtype, **extra)
    imgs, labs = [], []
    zs = rng.permutation(nz)
    for z in zs:
        lab = st.labels[z]
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        if (counts >= 10).sum() == 0:
            continue
        imgs.append(to_sam_rgb(st.image[z])[..., 0].round().astype(np.uint8))
        labs.append(lab.astype(np.uint16))
        if len(imgs) == 4:
            break
    return imgs, labs


def make_dataset(n_stacks: int, cache: Path, workers: int = 2, variety: float = 0.0):
    """Generate (or load from ``cache``) the training slices; ``variety``: share of stacks drawn with
    the generator's variety options (bright outliers, domed nuclei, wider brightness spread), cached
    next to ``cache`` under its own name."""
    from functools import partial

    if variety:  # another data set: another cache file
        cache = cache.with_name(f"{cache.stem}-variety{variety:g}{cache.suffix}")
    if cache.exists():
        d = np.load(cache)
        return d["images"], d["labels"]
    from concurrent.futures import ProcessPoolExecutor

    imgs, labs = [], []
    with ProcessPoolExecutor(workers) as ex:
        for a, b in ex.map(partial(_gen_one, variety=variety), range(n_stacks), chunksize=8):
            imgs += a
            labs += b
    images, labels = np.stack(imgs), np.stack(labs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, labels=labels)
    return images, labels


def magnify_crop(im: np.ndarray, lb: np.ndarray, scale: float, rng):
    """Magnify a training slice by ``scale`` (the predictor's resize for the
    image, nearest neighbour for the labels) and cut a SIZE x SIZE crop at a
    random offset: the model sees objects at the sizes ``input_scale`` gives
    them at inference, and every crop position equally."""
    if scale <= 1.0:
        return im, lb
    from segment_anything.utils.transforms import ResizeLongestSide

    n = int(round(im.shape[0] * scale))
    big = ResizeLongestSide(n).apply_image(np.repeat(im[..., None], 3, -1))[..., 0]
    idx = np.minimum(((np.arange(n) + 0.5) * im.shape[0] / n).astype(int), im.shape[0] - 1)  # pixel centres, as the resize
    big_lb = lb[idx][:, idx]
    r0, c0 = rng.integers(0, n - SIZE + 1, 2)
    return big[r0 : r0 + SIZE, c0 : c0 + SIZE], big_lb[r0 : r0 + SIZE, c0 : c0 + SIZE]

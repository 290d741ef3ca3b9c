"""micro-sam's z-propagation (``segment_mask_in_volume``) run on our model, for ``eval_propagation.py --micro-sam``.

micro-sam's 3D annotator segments an object on one slice and then calls
``micro_sam.multi_dimensional_segmentation.segment_mask_in_volume``: each
next slice is prompted from the previous slice's mask (its widget's defaults:
``projection="single_point"``, the deepest point of the previous mask;
``iou_threshold=0.5``, stop when the new mask overlaps the previous one less;
``box_extension=0.05``), one object at a time. Here that function runs
unchanged; its ``SamPredictor`` is an adapter over our ``SlicePredictor`` on
the same cached embeddings, so both methods use the same model and the same
decoding of a prompt. The seed slice's mask is our predictor's shown answer
to the seed point (what a user would commit before pressing micro-sam's
"Segment volume").

micro-sam is not a dependency of napari-sam. Its propagation needs only a few
of its requirements; without pulling napari/torch versions in, e.g.::

    pip install --no-deps --target /tmp/msdeps micro_sam python-elf bioimage-cpp torch-em kornia kornia-rs \\
        scikit-learn joblib threadpoolctl narwhals
    PYTHONPATH=/tmp/msdeps python benchmarks/eval_propagation.py --micro-sam

(measured with micro_sam 1.8.14.)
"""

from __future__ import annotations

import numpy as np

# micro-sam's 3D annotator defaults (sam_annotator/_widgets.py, SegmentNDWidget)
PROJECTION = "single_point"
IOU_THRESHOLD = 0.5
BOX_EXTENSION = 0.05


def micro_sam_version() -> str:
    try:
        import micro_sam
    except ImportError as e:
        raise SystemExit(
            f"--micro-sam needs micro_sam importable ({e}); see benchmarks/micro_sam_baseline.py for an install "
            "that does not touch this environment") from e
    return getattr(micro_sam, "__version__", "?")


class _Predictor:
    """The part of segment-anything's ``SamPredictor`` that micro-sam's propagation calls, over our predictor.

    micro-sam sets ``features`` to slice ``i`` of its embeddings array (``util.set_precomputed``); here that
    array holds slice indices, and ``predict`` decodes on our embedding of that slice. Prompts arrive in
    SAM's (x, y) convention at the slice's own size; a mask prompt arrives as micro-sam's 256 x 256 logits in
    SAM's 1024 canvas and is turned back into the full-size mask it was made from, which our predictor
    resizes for its own decoder.
    """

    def __init__(self, predictor, embeddings):
        import torch

        self.predictor = predictor
        self.embeddings = embeddings
        self.device = torch.device("cpu")
        self.features = None
        self.original_size = self.input_size = None
        self.is_image_set = True

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):
        z = int(np.asarray(self.features.cpu()).ravel()[0])
        self.predictor.set_embedding(self.embeddings[z])
        h, w = self.embeddings[z].original_size
        pts = None if point_coords is None else np.asarray(point_coords, np.float64)[:, ::-1]
        bx = None if box is None else np.asarray(box, np.float64).ravel()[[1, 0, 3, 2]]
        mask = None
        if mask_input is not None:
            from skimage.transform import resize

            long = max(h, w)
            hh, ww = round(h * 256 / long), round(w * 256 / long)
            mask = resize(np.asarray(mask_input)[0, :hh, :ww] > 0, (h, w), order=0, anti_aliasing=False)
        pred = self.predictor.predict(pts, point_labels, bx, mask, multimask=multimask_output)
        return pred.masks[0], pred.scores[0], pred.low_res_logits[0]


def run_micro_sam(predictor, image, seeds, cache=None) -> tuple[np.ndarray, np.ndarray]:
    """(labels painted in id order, earlier objects' pixels kept; one object's own volume per seed).

    The painted labels are what micro-sam's annotator commits with its default "objects"/"pixels"
    preservation; the second array scores every object as if alone (micro-sam's best case)."""
    from micro_sam.multi_dimensional_segmentation import segment_mask_in_volume

    from napari_sam.core.cache import embed_cached

    embs = [embed_cached(predictor, cache, image[z]) for z in range(image.shape[0])]
    ms_pred = _Predictor(predictor, embs)
    image_embeddings = {"features": np.arange(len(embs)).reshape(-1, 1, 1, 1, 1),
                        "input_size": embs[0].input_size, "original_size": embs[0].original_size}
    labels = np.zeros(image.shape, np.uint16)
    alone = {}
    for i, (z, pt) in seeds.items():
        predictor.set_embedding(embs[z])
        seg = np.zeros(image.shape, np.uint8)
        seg[z] = predictor.predict(pt[None]).best()[0]
        seg, _ = segment_mask_in_volume(seg, ms_pred, image_embeddings, np.array([z]), stop_lower=False,
                                        stop_upper=False, iou_threshold=IOU_THRESHOLD, projection=PROJECTION,
                                        box_extension=BOX_EXTENSION)
        m = seg > 0
        alone[i] = m
        labels[m & (labels == 0)] = i
    return labels, alone

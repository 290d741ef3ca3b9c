"""Accuracy on a real fluorescence image with hand-drawn masks, per object,
side by side with the classical baseline, at several magnifications.

    python benchmarks/eval_real.py [--model embedded] [--input-scales 1.0,1.5,2.0] [--json out.json]

The image: ``img2d.tif`` / ``mask2d.tif`` of StarDist's test data, a 512x512
crop of the 2018 Kaggle Data Science Bowl (Caicedo et al., Nature Methods 16,
2019): fluorescent nuclei, some touching, some mitotic and much brighter,
with 125 hand-annotated masks (median radius ~12 px). It ships inside the
``stardist`` wheel (BSD-3; the images are BBBC038, CC0), which is fetched once
from PyPI and verified by its SHA-256 (3 MB; nothing is installed). The
generator never saw it; nothing was trained on it. It is one image: figures
on it say how the model carries over to real nuclei, not a held-out score.

Each annotated object with >= 20 px is one sample: one positive point at an
interior location (depth >= half the object's deepest point, as in
``eval_embedded.py``), and its bounding box.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from eval_embedded import add_experiment_options, apply_experiment_options, evaluate_images, summarise  # noqa: E402

WHEEL_URL = (
    "https://files.pythonhosted.org/packages/4a/41/1552e918b9c79d46f878f65fb7fd1594ade491cfa7782c2732ccd4a70209/"
    "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
)
WHEEL_SHA256 = "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023"
SEED = 123


def stardist_files(*names: str) -> list[np.ndarray]:
    """Images in StarDist's wheel (``img2d.tif``, ``mask2d.tif``, ...): the wheel is fetched once and
    verified, then opened once for all of ``names``."""
    import pooch
    import tifffile

    from napari_sam.core.models import cache_dir

    whl = pooch.retrieve(WHEEL_URL, known_hash=f"sha256:{WHEEL_SHA256}", path=cache_dir() / "data", progressbar=False)
    with zipfile.ZipFile(whl) as z:
        return [tifffile.imread(io.BytesIO(z.read(f"stardist/data/images/{n}"))) for n in names]


def dsb_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(image uint16 (512, 512), labels) of the DSB 2018 crop in StarDist's wheel."""
    img, lab = stardist_files("img2d.tif", "mask2d.tif")
    return img, lab


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--input-scales", default="1.0,1.5,2.0",
                    help="comma-separated magnifications before the embedded model's encoder")
    add_experiment_options(ap)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import napari_sam

    img, lab = dsb_nuclei()
    model = napari_sam.load_model(args.model, device="cpu")
    apply_experiment_options(model, args)
    scales = [float(s) for s in args.input_scales.split(",")] if model.native_resolution else [None]
    results = {}
    for s in scales:
        t = time.time()
        rows = evaluate_images(model, [("dsb2018", img, lab, np.random.default_rng(SEED))], s, args.rank)
        results[str(s)] = {"summary": summarise(rows), "rows": rows, "seconds": time.time() - t}
    first = next(iter(results.values()))["summary"]
    print(f"model {args.model} sha256={model.checksum[:12]} encoder {model.precision}  DSB 2018 crop (StarDist test image): "
          f"{first['n_objects']} annotated nuclei")
    cols = list(results)
    print(f"{'median / p10':28s} " + " ".join(f"{'x' + c:>13s}" for c in cols))
    for k in ("point_top", "point_top_refined", "point_best3", "two_points", "box", "box_refined",
              "classical_point", "classical_box", "bf1_point", "bf1_box"):
        vals = [results[c]["summary"][k] for c in cols]
        print(f"{k:28s} " + " ".join(f"{v['median']:6.3f}/{v['p10']:6.3f}" for v in vals))
    print(f"{'shown first = best of 3':28s} " + " ".join(f"{results[c]['summary']['rank_ok']:13.1%}" for c in cols))
    print(f"{'predicted-IoU ranking alone':28s} " + " ".join(f"{results[c]['summary']['iou_rank_ok']:13.1%}" for c in cols))
    print(f"{'masks in >1 piece (raw)':28s} "
          + " ".join(f"{results[c]['summary']['fragmented_point']:13.1%}" for c in cols))
    print("candidates (area = median of candidate area / hand-drawn area; dim = the darker half of the nuclei):")
    for c in cols:
        rows = results[c]["rows"]
        b = np.array([r["brightness"] for r in rows])
        dim = b < np.median(b)
        top = np.array([r["area_ratios"][r["top_index"]] for r in rows])
        best = np.bincount([r["best_index"] for r in rows], minlength=3)
        per = [f"{np.median([r['area_ratios'][k] for r in rows]):.2f}" for k in range(3)]
        print(f"  x{c}: shown-first area {np.median(top):.2f} (dim {np.median(top[dim]):.2f}, bright "
              f"{np.median(top[~dim]):.2f}); candidates 1/2/3 area {' / '.join(per)}, best for {' / '.join(map(str, best))}"
              f", shown first {' / '.join(map(str, np.bincount([r['top_index'] for r in rows], minlength=3)))}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

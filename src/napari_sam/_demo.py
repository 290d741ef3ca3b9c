"""``napari-sam demo``: the main job with nothing to prepare.

Makes a synthetic nuclei z-stack (with ground truth), places one positive
point inside every nucleus on the slice where it is largest, segments and
propagates them through z with the embedded model, writes stack.tif,
points.csv, labels.tif (+ labels.prompts.json) and overlay.png, reports the
IoU against the ground truth, and opens napari with the widget when a display
exists.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

DEMO_FILES = ("stack.tif", "points.csv", "labels.tif", "labels.prompts.json", "overlay.png")


def _free_folder(out: Path) -> Path:
    """``out``, or ``out-2``, ``out-3``... if ``out`` already holds demo results or is a file (never clobber)."""
    from .io import InputError

    out = out.resolve()  # "." and "/" have no name to number
    if out.is_file():
        raise InputError(f"--out {out} is a file: give a folder for the demo's results")
    cand, n = out, 1
    while cand.is_file() or cand.exists() and any((cand / f).exists() for f in DEMO_FILES):
        n += 1
        cand = out.with_name(f"{out.name}-{n}")
    cand.mkdir(parents=True, exist_ok=True)
    return cand


def demo_prompts(labels: np.ndarray, min_area: int = 40) -> dict[int, dict[int, dict]]:
    """One interior point per object, on the slice where the object is largest."""
    from .synthetic import interior_point

    prompts = {}
    for oid in np.unique(labels[labels > 0]):
        areas = (labels == oid).sum((1, 2))
        z = int(np.argmax(areas))
        if areas[z] < min_area:
            continue
        p = interior_point(labels[z] == oid)
        prompts[int(oid)] = {z: {"points": [tuple(p)], "labels": [1], "box": None}}
    return prompts


def run_demo(out: Path, *, viewer: bool = True, device: str = "auto", seed: int = 3) -> int:
    import tifffile

    from .cli import _load
    from .io import write_labels_atomic
    from .synthetic import make_stack

    t0 = time.time()
    model = _load("embedded", device)  # first: an unusable --device is refused before any folder is made
    out = _free_folder(Path(out))
    st = make_stack((24, 256, 256), seed=seed, kind="nuclei", radius_range=(8, 30), density=0.3)
    prompts = demo_prompts(st.labels)
    int8 = " (int8 encoder)" if getattr(model, "int8_encoder", None) is not None else ""
    print(f"model: {model.name} on {model.device}{int8}; {len(prompts)} nuclei prompted with one click each",
          file=sys.stderr)
    try:
        from .core.propagate import propagate_labels

        labels = propagate_labels(st.image, prompts, model=model)
        mode = "propagated through z"
    except ImportError:
        from ._cli_slices import segment_prompted_slices

        labels = segment_prompted_slices(st.image, prompts, model)
        mode = "on the prompted slices"
    labels = labels.astype(np.uint16)
    tifffile.imwrite(out / "stack.tif", st.image, imagej=True, resolution=(1 / st.voxel_size[2], 1 / st.voxel_size[1]),
                     metadata={"spacing": st.voxel_size[0], "unit": "um", "axes": "ZYX"})
    with open(out / "points.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["z", "y", "x", "positive", "object"])
        for oid, zs in prompts.items():
            for z, s in zs.items():
                for (y, x), lab in zip(s["points"], s["labels"]):
                    w.writerow([z, f"{y:.1f}", f"{x:.1f}", lab, oid])
    record = {"model": model.name, "model_sha256": model.checksum, "mode": mode, "prompts": prompts, "seed": seed}
    write_labels_atomic(out / "labels.tif", labels, record)
    ious = _object_ious(labels, st.labels, prompts, mode)
    _overlay(st.image, labels, prompts, out / "overlay.png")
    print(
        f"segmented {len(prompts)} nuclei {mode} in {time.time() - t0:.1f}s; "
        f"IoU vs ground truth: median {np.median(ious):.3f}, mean {np.mean(ious):.3f}",
        file=sys.stderr,
    )
    print(f"wrote {', '.join(DEMO_FILES)} to {out}", file=sys.stderr)
    if viewer and _has_display():
        _open_viewer(st, labels, prompts)
    return 0


def _object_ious(labels, gt, prompts, mode):
    ious = []
    for oid, zs in prompts.items():
        if mode.startswith("propagated"):
            a, b = labels == oid, gt == oid
        else:
            z = next(iter(zs))
            a, b = labels[z] == oid, gt[z] == oid
        ious.append(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))
    return np.array(ious)


def _overlay(image, labels, prompts, path):
    """Three slices side by side, outlines of the result in colour, prompts as crosses."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    from .core.image import to_sam_rgb

    nz = image.shape[0]
    tiles = []
    rng = np.random.default_rng(0)
    colours = rng.integers(80, 256, (int(labels.max()) + 1, 3)).astype(np.uint8)
    for z in (nz // 4, nz // 2, 3 * nz // 4):
        rgb = to_sam_rgb(image[z]).astype(np.uint8)
        b = find_boundaries(labels[z], mode="inner")
        rgb[b] = colours[labels[z][b]]
        for zs in prompts.values():
            for pz, s in zs.items():
                if pz == z:
                    for y, x in s["points"]:
                        r, c = int(round(y)), int(round(x))
                        rgb[max(r - 3, 0) : r + 4, c : c + 1] = (255, 255, 0)
                        rgb[r : r + 1, max(c - 3, 0) : c + 4] = (255, 255, 0)
        tiles.append(rgb)
    imsave(path, np.concatenate(tiles, 1), check_contrast=False)


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32"))


def _open_viewer(st, labels, prompts):
    try:
        import napari

        v = napari.Viewer(title="napari-sam demo")
    except Exception as e:  # no Qt binding, no usable display
        print(f"(not opening napari: {e}; install a Qt binding, e.g. pip install 'napari-sam[qt]')", file=sys.stderr)
        return
    v.add_image(st.image, name="nuclei", scale=st.voxel_size)
    v.add_labels(labels, name="napari-sam result", scale=st.voxel_size)
    try:
        v.window.add_plugin_dock_widget("napari-sam", "SAM segmentation")
    except Exception as e:  # the viewer is still useful without the dock
        print(f"(could not open the SAM widget: {e})", file=sys.stderr)
    napari.run()

"""Correct, then propagate again, in the real widget on the sample stack; save a screenshot.

    xvfb-run -a python scripts/screenshot_redo.py [--out docs/screenshot-redo.png]

On the middle slice it clicks six nuclei, commits them and propagates them all; then, for the one followed
worst, on the slice of its true extent where the mask is furthest from the ground truth (or missing), it paints the nucleus as the ground truth has it (as
a user fixes a slice with the brush) and presses Propagate object again: the slices the first run wrote are
redone from the two slices the user made. The window is saved on the corrected slice, with the status line
saying what was redone, and the 3D IoU before and after is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from screenshot_widget import ROOT, middle_slice, save_and_close, wait


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot-redo.png"))
    args = ap.parse_args()
    from napari_sam.synthetic import interior_point

    viewer, widget, z, truth, border, big = middle_slice("embedded")
    widget._ui.precompute.setChecked(False)
    gt3 = np.asarray(viewer.layers["nuclei ground truth"].data)
    points = viewer.layers["nuclei SAM points"]
    for obj in big[:6]:  # click and commit six nuclei, then propagate them all
        points.add([[z, *interior_point(truth == obj)]])
        wait(lambda: not widget.busy and "candidate" in widget._ui.status.text())
        widget._on_commit()
    labels = viewer.layers["nuclei SAM labels"]
    widget._ui.propagate_all.click()
    wait(lambda: not widget.propagating)
    first = np.array(labels.data, copy=True)
    ours = {obj: int(np.bincount(first[z][truth == obj]).argmax()) for obj in big[:6]}
    obj = min(ours, key=lambda g: iou(first == ours[g], gt3 == g))  # the one the run followed worst
    oid = ours[obj]
    labels.selected_label = oid
    zs = [k for k in np.flatnonzero((gt3 == obj).any((1, 2))) if k != z and (gt3[k] == obj).sum() >= 20]
    worst = min(zs, key=lambda k: iou(first[k] == oid, gt3[k] == obj))
    print(f"label {oid}: 3D IoU {iou(first == oid, gt3 == obj):.3f} after the first run; worst slice z={worst} "
          f"(IoU {iou(first[worst] == oid, gt3[worst] == obj):.3f})")
    viewer.dims.current_step = (worst, 0, 0)
    old = np.nonzero(first[worst] == oid)
    new = np.nonzero((gt3[worst] == obj) & ((first[worst] == 0) | (first[worst] == oid)))
    with labels.block_history():  # the user's brush and eraser on that slice
        labels.data_setitem((np.full(len(old[0]), worst), *old), 0)
        labels.data_setitem((np.full(len(new[0]), worst), *new), oid)
    widget._ui.propagate_object.click()
    wait(lambda: not widget.propagating)
    after = np.asarray(labels.data)
    print(f"label {oid}: 3D IoU {iou(after == oid, gt3 == obj):.3f} after correcting z={worst} and propagating again")
    viewer.layers.selection.active = labels
    save_and_close(viewer, widget, Path(args.out))


if __name__ == "__main__":
    main()

"""Find all objects in the stack, in the real widget on the sample stack; save a screenshot.

    xvfb-run -a python scripts/screenshot_find_stack.py [--out docs/screenshot-find-stack.png]

No click: objects are found on the middle slice and every 4th slice up and down from it and carried through
z. The share of the true objects (>= 200 voxels) matched at 3D IoU >= 0.5 and their median 3D IoU are
printed, and the window is saved six slices below the middle, where many objects are not on the middle slice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from screenshot_redo import iou
from screenshot_widget import ROOT, middle_slice, wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot-find-stack.png"))
    args = ap.parse_args()
    out = Path(args.out)

    viewer, widget, z, _, _, _ = middle_slice("embedded")
    widget._ui.precompute.setChecked(False)
    gt = np.asarray(viewer.layers["nuclei ground truth"].data)
    viewer.layers["nuclei ground truth"].visible = False
    widget._ui.find_stack.click()
    wait(lambda: not widget.propagating, timeout=900)
    lab = np.asarray(viewer.layers["nuclei SAM labels"].data)
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    best = [max((iou(lab == k, gt == i) for k in np.unique(lab[gt == i]) if k), default=0.0)
            for i in ids[counts >= 200]]
    print(f"{len(np.unique(lab)) - 1} objects; true objects of >= 200 voxels matched (3D IoU >= 0.5): "
          f"{np.mean(np.array(best) >= 0.5):.1%} of {len(best)}, median 3D IoU {np.median(best):.3f}")
    viewer.dims.current_step = (z - 6, 0, 0)
    viewer.reset_view()
    wait(lambda: True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"saved {out}: {widget._ui.status.text()}")
    widget.close()
    viewer.close()


if __name__ == "__main__":
    main()

"""Find all objects on this slice, then Propagate all on this slice, in the real widget on the sample stack;
save a screenshot of each.

    xvfb-run -a python scripts/screenshot_find.py [--out docs/screenshot-find.png]

No click: the middle slice's objects are found and committed, the recall against the slice's ground truth
is printed, and the window saved (``--out``); then they are propagated through z and the window saved again,
two slices further (``--out`` with ``-propagated`` before its suffix), with the median 3D IoU printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from screenshot_redo import iou
from screenshot_widget import ROOT, middle_slice, wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot-find.png"))
    args = ap.parse_args()
    out = Path(args.out)

    viewer, widget, z, truth, border, big = middle_slice("embedded")
    widget._ui.precompute.setChecked(False)
    gt3 = np.asarray(viewer.layers["nuclei ground truth"].data)
    viewer.layers["nuclei ground truth"].visible = False
    widget._ui.find.click()
    wait(lambda: widget._finding is None)
    labels = viewer.layers["nuclei SAM labels"]
    found = np.asarray(labels.data[z])
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    best = [max((iou(found == k, truth == i) for k in np.unique(found[truth == i]) if k), default=0.0)
            for i in ids[counts >= 80]]
    print(f"z={z}: {len(np.unique(found)) - 1} found; true objects of >= 80 px found (IoU >= 0.5): "
          f"{np.mean(np.array(best) >= 0.5):.1%} of {len(best)}, median IoU {np.median(best):.3f}")
    viewer.reset_view()
    viewer.screenshot(str(out), canvas_only=False)
    print(f"saved {out}: {widget._ui.status.text()}")

    widget._ui.propagate_all.click()
    wait(lambda: not widget.propagating, timeout=600)
    lab3 = np.asarray(labels.data)
    ious = []
    for k in np.unique(found[found > 0]):
        under, n = np.unique(gt3[z][found == k], return_counts=True)
        if under[np.argmax(n)]:
            ious.append(iou(lab3 == k, gt3 == under[np.argmax(n)]))
    print(f"propagated: median 3D IoU {np.median(ious):.3f} over {len(ious)} found objects on a true one")
    viewer.dims.current_step = (z + 2, 0, 0)
    wait(lambda: True)
    second = out.with_name(out.stem + "-propagated" + out.suffix)
    viewer.screenshot(str(second), canvas_only=False)
    print(f"saved {second}: {widget._ui.status.text()}")
    widget.close()
    viewer.close()


if __name__ == "__main__":
    main()

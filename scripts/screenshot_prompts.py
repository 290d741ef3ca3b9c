"""The SAM widget's prompt shapes and candidate choice on the sample stack, saved as a screenshot.

    xvfb-run -a python scripts/screenshot_prompts.py [--scene shapes|candidates] [--out PNG]

shapes (docs/screenshot-shapes.png): on the middle slice, an ellipse around one nucleus, a rectangle
around another and a rectangle reaching beyond the image's edge around a nucleus cut by it: three
objects in the preview. candidates: one click on a nucleus, K pressed: the second candidate shown
and chosen in the list.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from screenshot_widget import ROOT, middle_slice, save_and_close, wait


def _rect(z, r0, c0, r1, c1) -> np.ndarray:
    return np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", choices=("shapes", "candidates"), default="shapes")
    ap.add_argument("--model", default="embedded", help="registry name or checkpoint path")
    ap.add_argument("--out", default=None, help="default: docs/screenshot-<scene>.png")
    args = ap.parse_args()

    from napari_sam.synthetic import interior_point

    viewer, widget, z, truth, border, big = middle_slice(args.model)
    h, w = truth.shape

    def around(i, m=3):
        rr, cc = np.nonzero(truth == i)
        return rr.min() - m, cc.min() - m, rr.max() + m, cc.max() + m

    boxes = viewer.layers["nuclei SAM boxes"]
    if args.scene == "shapes":
        boxes.add_ellipses(_rect(z, *around(big[0], 4)))
        boxes.add_rectangles(_rect(z, *around(big[1])))
        cut = max((i for i in border if i), key=lambda i: int((truth == i).sum()))
        r0, c0, r1, c1 = around(cut)
        r0, c0 = (r0 - 25 if r0 < 0 else r0), (c0 - 25 if c0 < 0 else c0)
        r1, c1 = (r1 + 25 if r1 >= h else r1), (c1 + 25 if c1 >= w else c1)
        boxes.add_rectangles(_rect(z, r0, c0, r1, c1))
        wait(lambda: not widget.busy and "candidate" in widget._ui.status.text())
        viewer.layers.selection.active = boxes
        boxes.mode = "select"
        boxes.selected_data = set()
    else:
        viewer.layers["nuclei SAM points"].add([[z, *interior_point(truth == big[1])]])
        wait(lambda: not widget.busy and "candidate" in widget._ui.status.text())
        widget._on_next_candidate()
        viewer.layers.selection.active = viewer.layers["nuclei SAM points"]

    save_and_close(viewer, widget, Path(args.out or ROOT / "docs" / f"screenshot-{args.scene}.png"))


if __name__ == "__main__":
    main()

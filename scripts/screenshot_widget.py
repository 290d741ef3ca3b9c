"""Open napari with the SAM widget on the sample stack, segment as a user would, save a screenshot.

    xvfb-run -a python scripts/screenshot_widget.py [--model embedded] [--out docs/screenshot-widget.png]

Goes through the real plugin entry points (File > Open Sample, Plugins >
napari-sam > SAM segmentation) when napari-sam is installed. On the middle
slice it clicks one nucleus and commits it, clicks a second one and adds a
negative point on its neighbour and commits, draws a box around a third and
leaves that preview on screen with its candidates listed, then saves the window.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def wait(condition, timeout: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    app, t0 = QApplication.instance(), time.time()
    while not condition():
        if time.time() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def open_widget(viewer, model: str):
    try:
        viewer.open_sample("napari-sam", "nuclei")
        _, widget = viewer.window.add_plugin_dock_widget("napari-sam", "SAM segmentation")
        if model != "embedded":
            widget.load_model(model)
    except Exception as e:  # not installed as a plugin: use the modules directly
        print(f"plugin entry points unavailable ({e}); adding the layers and widget directly", file=sys.stderr)
        from napari_sam._qt.widget import SamWidget
        from napari_sam._sample_data import nuclei_stack

        for data, kwargs, kind in nuclei_stack():
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        widget = SamWidget(viewer, model=model)
        viewer.window.add_dock_widget(widget, name="SAM segmentation", area="right")
    return widget


def middle_slice(model: str):
    """A viewer with the sample stack and the widget on ``model``, at the middle slice; returns (viewer,
    widget, z, the slice's ground truth, the ids touching its border, the other ids largest first)."""
    import napari

    viewer = napari.Viewer(title="napari-sam")
    viewer.window._qt_window.resize(1500, 950)
    widget = open_widget(viewer, model)
    wait(lambda: widget.model is not None and not widget.busy)
    z = viewer.layers["nuclei"].data.shape[0] // 2
    viewer.dims.current_step = (z, 0, 0)
    truth = np.asarray(viewer.layers["nuclei ground truth"].data[z])
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    border = set(np.unique(np.concatenate([truth[0], truth[-1], truth[:, 0], truth[:, -1]])).tolist())
    big = [int(i) for c, i in sorted(zip(counts, ids), reverse=True) if i not in border]
    return viewer, widget, z, truth, border, big


def save_and_close(viewer, widget, out: Path) -> None:
    """The whole window, reset to the image, saved as ``out``; then the widget and viewer closed."""
    viewer.reset_view()
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"saved {out}: {widget._ui.status.text()}")
    widget.close()
    viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", help="registry name or checkpoint path")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot-widget.png"))
    args = ap.parse_args()

    from scipy import ndimage as ndi

    from napari_sam.synthetic import interior_point

    viewer, widget, z, truth, border, big = middle_slice(args.model)
    points = viewer.layers["nuclei SAM points"]
    boxes = viewer.layers["nuclei SAM boxes"]

    # 1. one click, commit
    first = big[0]
    points.add([[z, *interior_point(truth == first)]])
    wait(lambda: not widget.busy and "candidate" in widget._ui.status.text())
    widget._on_commit()

    # 2. a click on a nucleus with a touching neighbour, a negative point on the neighbour, commit
    for a in big[1:]:
        ring = ndi.binary_dilation(truth == a, iterations=2) & (truth != a) & (truth > 0)
        if ring.any():
            b = int(np.bincount(truth[ring]).argmax())
            points.add([[z, *interior_point(truth == a)]])
            widget._on_toggle_polarity()
            points.add([[z, *interior_point(truth == b)]])
            widget._on_toggle_polarity()
            wait(lambda: not widget.busy and "candidate" in widget._ui.status.text())
            widget._on_commit()
            break

    # 3. a box around a nucleus not segmented yet, left as a preview with its candidates
    labelled = np.asarray(viewer.layers["nuclei SAM labels"].data[z]) > 0
    third = next(i for i in big[1:] if not labelled[truth == i].any())
    rr, cc = np.nonzero(truth == third)
    r0, c0, r1, c1 = rr.min() - 3, cc.min() - 3, rr.max() + 3, cc.max() + 3
    boxes.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float))
    points.add([[z, *interior_point(truth == third)]])
    wait(lambda: not widget.busy and "candidate" in widget._ui.status.text())
    viewer.layers.selection.active = points

    save_and_close(viewer, widget, Path(args.out))


if __name__ == "__main__":
    main()

"""Sample data (File > Open Sample > napari-sam): a synthetic fluorescent-nuclei z-stack.

Seeded, so everyone gets the same stack. The ground-truth labels come along
as a hidden layer to compare against; the widget never writes into them
unless chosen explicitly.
"""

from __future__ import annotations

SHAPE = (24, 256, 256)
SEED = 2


def _axes_kwargs() -> dict:
    """Units and axis names, on napari versions whose layers accept them (0.6+)."""
    import inspect

    from napari.layers import Image

    params = inspect.signature(Image).parameters
    kw = {}
    if "units" in params:
        kw["units"] = ("um", "um", "um")
    if "axis_labels" in params:
        kw["axis_labels"] = ("z", "y", "x")
    return kw


def nuclei_stack() -> list[tuple]:
    """[(image, kwargs, "image"), (labels, kwargs, "labels")] with the generator's voxel size as scale (µm)."""
    from napari_sam.synthetic import make_stack

    st = make_stack(SHAPE, seed=SEED, radius_range=(10.0, 30.0), density=0.35)
    common = {"scale": st.voxel_size, **_axes_kwargs()}
    image = {
        "name": "nuclei",
        "colormap": "gray",
        "metadata": {"napari_sam_synthetic": dict(st.meta, shape=SHAPE)},
        **common,
    }
    labels = {"name": "nuclei ground truth", "visible": False, "opacity": 0.4, **common}
    return [(st.image, image, "image"), (st.labels, labels, "labels")]

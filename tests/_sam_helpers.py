"""Small SAM models for tests: nothing is downloaded."""

import torch


def distinctive(module, seed=0, scale=0.02):
    """Random init leaves rel_pos and some biases at zero: make every weight count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def save_tiny_vit(path, embed_dim=64):
    """A randomly initialised small ViT SAM (2 blocks) saved as an official-format state dict."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    sam = _build_sam(encoder_embed_dim=embed_dim, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])
    torch.save(sam.state_dict(), path)
    return path


def save_mobile_sam(path, seed=0):
    """A randomly initialised MobileSAM (TinyViT-5M encoder) saved as MobileSAM's state dict layout."""
    from napari_sam.core.mobile_sam import build_mobile_sam

    torch.manual_seed(seed)
    sam = distinctive(build_mobile_sam("5m"), seed=seed)
    torch.save(sam.state_dict(), path)
    return sam, path


def save_sam2(path, arch="sam2.1_hiera_tiny", seed=0):
    """A randomly initialised SAM 2 model saved as Meta's checkpoints are: {"model": state dict}."""
    from napari_sam.core.sam2_model import build_sam2_model

    torch.manual_seed(seed)
    sam = distinctive(build_sam2_model(arch), seed=seed)
    torch.save({"model": sam.state_dict()}, path)
    return sam, path


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def predictor_pair(path, official_for):
    """(loaded model, our SlicePredictor, ``official_for(sam)``), both set to one image:
    a (260, 380, 3) uint8 image of dim noise with one bright rectangle (rows 90-170, cols 120-230)."""
    import numpy as np

    from napari_sam.core.models import load_model
    from napari_sam.core.predictor import SlicePredictor

    img = (np.random.default_rng(3).random((260, 380, 3)) * 60).astype(np.uint8)
    img[90:170, 120:230] = (230, 210, 190)
    loaded = load_model(path, device="cpu")
    ours = SlicePredictor(loaded, normalize="none")
    ours.set_image(img, channel_axis=-1)
    official = official_for(loaded.sam)
    official.set_image(img)
    return loaded, ours, official


def click_and_commit_in_widget(make_napari_viewer, qtbot, checkpoint):
    """Dock the widget with ``checkpoint``, click (100, 120) on slice 1 of a synthetic stack, keep the
    preview, press C. Returns (slice 1 as the official predictors take it: normalised as the widget does,
    uint8 RGB; preview (H, W) bool; labels after the commit)."""
    import numpy as np
    from napari.utils._proxies import PublicOnlyProxy

    from napari_sam._qt.widget import SamWidget
    from napari_sam.synthetic import make_stack

    st = make_stack((3, 200, 240), seed=4, radius_range=(12, 25), density=0.3)
    viewer = make_napari_viewer()
    viewer.add_image(st.image, name="cells")
    widget = SamWidget(PublicOnlyProxy(viewer), model=str(checkpoint))
    viewer.window.add_dock_widget(widget, name="SAM")
    qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
    viewer.dims.current_step = (1, 0, 0)
    viewer.layers["cells SAM points"].add([[1, 100, 120]])
    qtbot.waitUntil(lambda: not widget.busy and "candidate" in widget._ui.status.text(), timeout=60000)
    preview = np.asarray(viewer.layers["SAM preview"].data).reshape(200, 240) > 0
    viewer.window._qt_viewer._key_map_handler.press_key("C")
    labels = np.asarray(viewer.layers["cells SAM labels"].data).copy()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    viewer.window.remove_dock_widget(widget)
    from napari_sam.core.image import to_sam_rgb

    return np.clip(np.rint(to_sam_rgb(st.image[1])), 0, 255).astype(np.uint8), preview, labels

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

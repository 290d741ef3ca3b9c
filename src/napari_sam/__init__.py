"""Segment Anything (SAM) for microscopy in napari, from Python and from the shell.

Importing this package is cheap: torch, segment_anything and napari load only
when a function that needs them is first used.

Public API (loaded on first access)::

    import napari_sam
    model = napari_sam.load_model("embedded")        # or "vit_b", a path, ...
    result = napari_sam.segment(image2d, points=[[40, 52]], model=model)
    found = napari_sam.find_objects(image2d)           # every object, no click: found.labels
    labels3d = napari_sam.find_in_stack(stack).labels   # every object of a z-stack, no click
    napari_sam.propagate(...)                         # through a z-stack
    napari_sam.synthetic                              # seeded synthetic microscopy
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_LAZY = {
    "load_model": ("napari_sam.core.models", "load_model"),
    "segment": ("napari_sam.api", "segment"),
    "find_objects": ("napari_sam.api", "find_objects"),
    "find_in_stack": ("napari_sam.api", "find_in_stack"),
    "propagate": ("napari_sam.api", "propagate"),
    "synthetic": ("napari_sam.synthetic", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'napari_sam' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})

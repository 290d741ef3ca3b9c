"""The widget's keyboard shortcuts: one table, bound on the viewer, unbound on close.

The keys are chosen to be free in napari's own Points, Shapes, Labels and
Image layer keymaps (so they work whichever of these layers is selected),
except C, which an Image layer uses for auto-contrast: commit with C while a
prompt or labels layer is selected (the widget keeps the points layer selected).
"""

from __future__ import annotations

import weakref

# (key, what it does, widget method)
SHORTCUTS: list[tuple[str, str, str]] = [
    ("N", "toggle positive / negative for new points (in select mode: flip the selected points)", "_on_toggle_polarity"),
    ("K", "next candidate mask", "_on_next_candidate"),
    ("Shift-K", "previous candidate mask", "_on_previous_candidate"),
    ("C", "commit the preview into the labels layer", "_on_commit"),
    ("Shift-C", "clear this slice's prompts", "_on_clear"),
]


def shortcuts_text() -> str:
    """Plain-text list of the shortcuts (the widget's tooltip)."""
    lines = ["Keyboard shortcuts (in the viewer):"]
    lines += [f"  {key:<8} {what}" for key, what, _ in SHORTCUTS]
    lines.append("  Ctrl-Z / Shift-Ctrl-Z   undo / redo a commit (labels layer selected)")
    return "\n".join(lines)


class KeyBindings:
    """Bind :data:`SHORTCUTS` on a viewer; ``unbind`` restores what was there before."""

    def __init__(self, viewer, widget):
        self._viewer = viewer
        self._widget = weakref.ref(widget)  # the viewer's keymap must not keep the widget alive
        self._bound: dict[str, tuple[object, object]] = {}  # key -> (our callback, previous)

    def _callback(self, method: str):
        ref = self._widget

        def on_key(viewer, _method=method):
            w = ref()
            if w is not None:
                getattr(w, _method)()

        on_key.__name__ = method.lstrip("_")
        on_key.__doc__ = next(what for _, what, m in SHORTCUTS if m == method)
        return on_key

    def bind(self) -> None:
        for key, _, method in SHORTCUTS:
            cb = self._callback(method)
            previous = self._viewer.bind_key(key, cb, overwrite=True)
            self._bound[key] = (cb, previous)

    def unbind(self) -> None:
        from app_model.types import KeyBinding

        keymap = self._viewer.keymap
        for key, (cb, previous) in self._bound.items():
            if keymap.get(KeyBinding.from_str(key)) is cb:
                self._viewer.bind_key(key, None)
                if previous is not None:
                    self._viewer.bind_key(key, previous, overwrite=True)
        self._bound.clear()

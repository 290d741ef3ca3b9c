"""The widget's keyboard shortcuts: one table, bound on the viewer and on the widget's layers, unbound on close.

napari looks a key up in the selected layer's keymaps (its own, then its
class's) before the viewer's. The keys are free in napari's Points, Shapes
and Labels keymaps, so binding them on the viewer is enough there; an Image
layer's C is auto-contrast, so C is also bound on the image the widget works
on (only that one, while the widget has it: napari's C is back afterwards,
and the layer controls' auto-contrast "once" button still works). In general a
key is bound on one of the widget's layers when that layer's own keymap takes it.

Ctrl-Z (undo the widget's last commit or propagation) is bound on the
widget's layers only, but not on its labels layer, whose own Ctrl-Z (napari's
undo) stays as it is.

napari's keymaps only see keys while the canvas has the focus: after a click
on a candidate's line or a button of the widget the focus is in the dock, so the
same keys are also Qt shortcuts of the widget and its children (a text field
of the widget, such as the magnification, keeps its typing).
"""

from __future__ import annotations

import weakref

# (key, what it does, widget method)
SHORTCUTS: list[tuple[str, str, str]] = [
    ("N", "toggle positive / negative for new points (in select mode: flip the selected points)", "_on_toggle_polarity"),
    ("K", "next candidate mask (of the current object, with several)", "_on_next_candidate"),
    ("Shift-K", "previous candidate mask (of the current object)", "_on_previous_candidate"),
    ("C", "commit the preview into the labels layer", "_on_commit"),
    ("Shift-C", "clear this slice's prompts", "_on_clear"),
]
UNDO = ("Control-Z", "undo the widget's last commit or propagation", "_on_undo_commit")


def shortcuts_text() -> str:
    """Plain-text list of the shortcuts (the widget's tooltip)."""
    lines = ["Keyboard shortcuts (in the viewer):"]
    lines += [f"  {key:<8} {what}" for key, what, _ in SHORTCUTS]
    lines.append("  Ctrl-Z   undo the last commit or propagation (image, points or boxes layer selected;")
    lines.append("           with the labels layer selected it is napari's undo, Shift-Ctrl-Z redoes)")
    return "\n".join(lines)


def _key(key: str):
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)


def _taken(layer, key: str) -> bool:
    """True when ``layer``'s own keymap (or its class's) binds ``key``: napari would look there before the viewer."""
    kb = _key(key)
    return kb in layer.keymap or any(kb in cls.__dict__.get("class_keymap", {}) for cls in layer.__class__.__mro__)


def _restore(provider, bound: dict) -> None:
    """Unbind our callbacks from ``provider`` (viewer or layer) and put back what they replaced."""
    keymap = provider.keymap
    for key, (cb, previous) in bound.items():
        if keymap.get(_key(key)) is cb:
            provider.bind_key(key, None)
            if previous is not None:
                provider.bind_key(key, previous, overwrite=True)


class KeyBindings:
    """Bind :data:`SHORTCUTS` on a viewer and the widget's layers; ``unbind`` restores what was there before."""

    def __init__(self, viewer, widget):
        self._viewer = viewer
        self._widget = weakref.ref(widget)  # the keymaps must not keep the widget alive
        self._bound: dict[str, tuple[object, object]] = {}  # key -> (our callback, previous)
        self._layers: dict[object, tuple[bool, dict]] = {}  # layer -> (is the target, {key: (callback, previous)})
        self._dock: list = []  # QShortcuts on the widget

    def _callback(self, method: str):
        ref = self._widget

        def on_key(viewer_or_layer, _method=method):
            w = ref()
            if w is not None:
                getattr(w, _method)()

        on_key.__name__ = method.lstrip("_")
        on_key.__doc__ = next(what for _, what, m in [*SHORTCUTS, UNDO] if m == method)
        return on_key

    def _bind(self, provider, table) -> dict:
        bound = {}
        for key, _, method in table:
            cb = self._callback(method)
            bound[key] = (cb, provider.bind_key(key, cb, overwrite=True))
        return bound

    def bind(self) -> None:
        self._bound = self._bind(self._viewer, SHORTCUTS)
        self._bind_dock()

    def _bind_dock(self) -> None:
        """The shortcuts while the keyboard focus is in the widget (a candidate's line clicked, a button)."""
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QKeySequence, QShortcut

        widget = self._widget()
        for key, _, method in SHORTCUTS:
            shortcut = QShortcut(QKeySequence(key.replace("-", "+")), widget)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(getattr(widget, method))
            self._dock.append(shortcut)

    def follow(self, layers, target=None) -> None:
        """Bind on exactly ``layers`` and ``target`` (the labels layer: no Ctrl-Z); release any other layer."""
        want = {ly: False for ly in layers if ly is not None}
        if target is not None:
            want[target] = True
        for layer in [ly for ly, (t, _) in self._layers.items() if want.get(ly) is not t]:
            _restore(layer, self._layers.pop(layer)[1])
        for layer, is_target in want.items():
            if layer not in self._layers:
                table = [s for s in SHORTCUTS if _taken(layer, s[0])] + ([] if is_target else [UNDO])
                self._layers[layer] = (is_target, self._bind(layer, table))

    def unbind(self) -> None:
        self.follow([])
        _restore(self._viewer, self._bound)
        self._bound.clear()
        for shortcut in self._dock:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self._dock.clear()

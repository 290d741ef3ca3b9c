"""What the image encoder gives for one slice, and what the mask decoder gives for its objects."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class Embedding:
    """One slice's image embedding and the geometry needed to use it.

    features: torch tensor (1, C, h, w) on the model's device.
    original_size: (H, W) of the slice. input_size: (h, w) after resizing,
    before padding. padded_size: (Hp, Wp) the encoder saw.
    high_res: SAM 2 only: its finer feature maps, (1, C_i, h_i, w_i) each.
    """

    features: "object"
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    gray: np.ndarray | None = None  # normalised slice (H, W) uint8, for boundary refinement
    high_res: tuple = ()

    @property
    def tensors(self) -> tuple:
        """All feature maps: ``features`` first, then ``high_res``."""
        return (self.features, *self.high_res)

    def with_tensors(self, convert) -> Embedding:
        """A copy with ``convert`` (tensor -> tensor) applied to every feature map."""
        return replace(self, features=convert(self.features), high_res=tuple(convert(t) for t in self.high_res))

    @property
    def nbytes(self) -> int:
        extra = 0 if self.gray is None else self.gray.nbytes
        return sum(int(t.element_size() * t.nelement()) for t in self.tensors) + extra


@dataclass
class Prediction:
    """SAM's answer for n objects with c candidates each.

    masks: (n, c, H, W) bool at the slice's full size.
    scores: (n, c) float, SAM's predicted IoU.
    low_res_logits: (n, c, h, w) float, to feed back as a mask prompt.
    keys: (n, c) float, what the candidates are ranked by (``SlicePredictor``'s
        ``rank``; ``core.choose``); the scores when not given.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    keys: np.ndarray | None = None

    def best_index(self) -> np.ndarray:
        """(n,) int: each object's first candidate by its ranking key."""
        return (self.scores if self.keys is None else self.keys).argmax(1)

    def best(self) -> np.ndarray:
        """(n, H, W) bool: each object's first candidate by its ranking key."""
        idx = self.best_index()
        return self.masks[np.arange(len(idx)), idx]

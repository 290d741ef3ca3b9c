"""SAM's answer for the current slice: what was asked, the candidates, and how to show them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from napari_sam.core.objects import Candidates

from ._plane import Plane


@dataclass
class Result:
    """Candidates for ``objects`` on ``plane``, valid while ``token`` is the widget's current one.

    token: (image id, image version, plane key, prompt version, model version).
    """

    token: tuple
    plane: Plane
    objects: list
    candidates: list[Candidates]
    notes: list[str] = field(default_factory=list)
    asked: tuple = ()  # ``prompt_key`` of the objects as gathered (before SAM's loop added a mask to them)

    @property
    def n_ranks(self) -> int:
        return max(len(c) for c in self.candidates)

    def label_image(self, rank: int) -> np.ndarray:
        """(H, W) uint8/uint16: object i's candidate at ``rank`` as label i + 1."""
        dtype = np.uint8 if len(self.candidates) < 255 else np.uint16
        out = np.zeros(self.plane.shape, dtype)
        for i, c in enumerate(self.candidates):
            m = c.pick(rank)[0]
            out[m & (out == 0)] = i + 1
        return out

    def rank_texts(self) -> list[str]:
        """One line per candidate rank, for the candidate list."""
        lines = []
        for r in range(self.n_ranks):
            picks = [c.pick(r) for c in self.candidates]
            if len(picks) == 1:
                _, score, token = picks[0]
                what = "single-mask answer" if token == 0 else f"multimask answer {token}"
                lines.append(f"{r + 1}.  predicted IoU {score:.2f}   ({what})")
            else:
                mean = float(np.mean([p[1] for p in picks]))
                lines.append(f"{r + 1}.  mean predicted IoU {mean:.2f}   ({len(picks)} objects)")
        return lines

    def summary(self, rank: int) -> str:
        n = len(self.candidates)
        picks = [c.pick(rank) for c in self.candidates]
        px = sum(int(p[0].sum()) for p in picks)
        objs = "1 object" if n == 1 else f"{n} objects"
        text = (
            f"{self.plane.label}: {objs}, candidate {min(rank, self.n_ranks - 1) + 1}/{self.n_ranks} "
            f"(predicted IoU {np.mean([p[1] for p in picks]):.2f}, {px} px). C commits, K shows the next candidate."
        )
        if self.notes:
            text += " Note: " + "; ".join(self.notes) + "."
        return text


def prompt_key(objects: list) -> tuple:
    """What ``objects`` (``core.prompts.ObjectPrompt``) ask SAM: their points, point labels, boxes and masks,
    to tell a new request from the same one made again."""

    def key(a):
        if a is None:
            return None
        a = np.ascontiguousarray(a)
        return a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).digest()

    return tuple((key(o.points), key(o.labels), key(o.box), key(o.mask)) for o in objects)

"""SAM's answer for the current slice: what was asked, the candidates, and how to show them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from napari_sam.core.objects import Candidates

from ._choice import Choice
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
    choice: Choice | None = None  # the candidate chosen for each object, and the one K steps (``_choice``)

    @property
    def n_ranks(self) -> int:
        """How many candidates the current object has (the lines of the candidate list)."""
        return len(self.candidates[self.choice.current])

    def picks(self) -> list[tuple[np.ndarray, float, int]]:
        """(mask, score, token) of each object's chosen candidate: what the preview shows and C commits."""
        return [c.pick(r) for c, r in zip(self.candidates, self.choice.ranks)]

    def label_image(self) -> np.ndarray:
        """(H, W) uint8/uint16: object i's chosen candidate as label i + 1 (where two overlap, the first
        object's, as a commit writes them)."""
        dtype = np.uint8 if len(self.candidates) < 255 else np.uint16
        out = np.zeros(self.plane.shape, dtype)
        for i, (m, _, _) in enumerate(self.picks()):
            out[m & (out == 0)] = i + 1
        return out

    def rank_texts(self) -> list[str]:
        """The current object's candidates, one line each, for the candidate list (labelled with the
        object when there are several)."""
        cur = self.choice.current
        obj = f"object {cur + 1}:  " if len(self.candidates) > 1 else ""
        lines = []
        for r in range(self.n_ranks):
            _, score, token = self.candidates[cur].pick(r)
            what = "single-mask answer" if token == 0 else f"multimask answer {token}"
            lines.append(f"{obj}{r + 1}.  predicted IoU {score:.2f}   ({what})")
        return lines

    def summary(self) -> str:
        n, picks, cur = len(self.candidates), self.picks(), self.choice.current
        px = sum(int(p[0].sum()) for p in picks)
        shown = f"candidate {self.choice.rank + 1}/{self.n_ranks}"
        if n == 1:
            text = (f"{self.plane.label}: 1 object, {shown} (predicted IoU {picks[0][1]:.2f}, {px} px). "
                    "C commits, K shows the next candidate.")
        else:
            text = (f"{self.plane.label}: {n} objects. K steps object {cur + 1} (orange in the preview): {shown} "
                    f"(predicted IoU {picks[cur][1]:.2f}, {int(picks[cur][0].sum())} px); to step another object, "
                    f"select its box or point (select mode). C commits the {n} objects as shown ({px} px).")
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

"""What a propagation run reached, for the status line (from its progress records and its ``Changes``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Outcome:
    """What a propagation run reached, for the status line.

    ends: {(id, "up"/"down"): (z, reason)} from the progress records' ``ended``.
    """

    ids: list[int]
    zname: str = "z"
    bounds: tuple | None = None  # (first, last) slice the run could reach, when not the whole stack
    ends: dict = field(default_factory=dict)
    absent: dict = field(default_factory=dict)  # {id: [(z, reason)]}: slices left empty by prompts on every slice

    def record(self, progress) -> None:
        for oid, direction, reason, z in progress.ended:
            if direction == "absent":  # prompts on every slice: a slice the object is not on
                self.absent.setdefault(int(oid), []).append((int(z), reason))
            else:
                self.ends[(int(oid), direction)] = (int(z), reason)

    def _stops(self, oid: int, zs: np.ndarray, nz: int) -> list[tuple[str, int | None, str]]:
        """[(direction, z it stopped at or None, why)] for the directions where it ended."""
        out = []
        lo, hi = self.bounds or (0, nz - 1)
        zs = zs[(zs >= lo) & (zs <= hi)]  # where it already was outside the slices set says nothing of the run
        top, bottom = (zs[-1], zs[0]) if len(zs) else (None, None)
        for direction, edge, end, whole, which in (("up", top, hi, hi == nz - 1, "last"),
                                                   ("down", bottom, lo, lo == 0, "first")):
            if (oid, direction) in self.ends:
                out.append((direction, *self.ends[(oid, direction)]))
            elif edge == end:
                out.append((direction, None, "reached the stack's end" if whole else
                            f"reached the {which} slice set ({self.zname}={end})"))
        return out

    def object_text(self, oid: int, ch, new_slices: dict) -> str:
        """Where ``oid`` is (``ch``: the run's ``Changes``), on how many slices it got new pixels
        (``new_slices``: {id: count}), where and why it stopped."""
        zs = np.asarray(sorted(ch.present.get(oid, ())), int)
        if not len(zs):
            return f"label {oid}: nowhere"
        zn = self.zname
        parts = [f"{d}: stopped at {zn}={z} ({why})" if z is not None else f"{d}: {why}"
                 for d, z, why in self._stops(oid, zs, ch.nz)]
        if (oid, "prompted") in self.ends:
            z, why = self.ends[(oid, "prompted")]
            parts.append(f"{zn}={z}: {why}")
        if oid in self.absent:
            gone = sorted(self.absent[oid])
            parts.append(f"left out of {len(gone)} slice(s) where it is not, e.g. {zn}={gone[0][0]} ({gone[0][1]})")
        return f"label {oid}: {self._extent(zs)}, {len(zs)} slice(s), {new_slices.get(oid, 0)} with new pixels" + (
            f"; {'; '.join(parts)}" if parts else "")

    def short_text(self, oid: int, ch) -> str:
        """One short line: where ``oid`` is and where it stopped."""
        zs = np.asarray(sorted(ch.present.get(oid, ())), int)
        if not len(zs):
            return f"label {oid}: nowhere"
        stops = [f"{self.zname}={z} {d}" if z is not None else f"stack end {d}"
                 for d, z, _ in self._stops(oid, zs, ch.nz)]
        return f"label {oid}: {self._extent(zs)} ({len(zs)} slices)" + (
            f"; stopped at {', '.join(stops)}" if stops else "")

    def _extent(self, zs: np.ndarray) -> str:
        zn = self.zname
        return f"{zn}={zs[0]}–{zs[-1]}" if zs[-1] > zs[0] else f"{zn}={zs[0]}"

    def text(self, ch, written: tuple, *, show: int = 4, short: bool = False) -> str:
        """One line per object (the first ``show``). ``written``: (z, rows, cols, ids) of the pixels written."""
        z, _, _, ids = written
        pairs = np.unique(np.stack([np.asarray(ids, np.int64), np.asarray(z, np.int64)]), axis=1) if len(z) else \
            np.zeros((2, 0), np.int64)
        new_slices = dict(zip(*np.unique(pairs[0], return_counts=True)))
        new_slices = {int(k): int(v) for k, v in new_slices.items()}
        lines = [self.short_text(o, ch) if short else self.object_text(o, ch, new_slices) for o in self.ids[:show]]
        if len(self.ids) > show:
            lines.append(f"… and {len(self.ids) - show} more object(s)")
        return "\n".join(lines)

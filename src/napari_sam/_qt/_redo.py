"""Propagating again after a correction: the slices an earlier propagation wrote are redone.

The widget's propagation keeps every object's masks already in the labels
layer as prompts, so a second run after fixing one slice would change
nothing beyond it: the earlier run's slices would all be prompts too. Here
the widget remembers what its own propagations wrote (a fingerprint of each
object's mask on each slice it wrote, :class:`Propagated`), and a later run
of the same object redoes those slices, as long as they are still exactly
what a propagation wrote: a slice committed, refined or painted by hand is
kept as it is and becomes a prompt, and so is the current slice. Only the
object's own pixels are cleared; other objects never change.

Pure numpy over array-likes: testable without Qt.
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np


def fingerprint(mask: np.ndarray) -> bytes:
    """A digest of a (rows, cols) bool mask: equal masks, equal digests."""
    mask = np.asarray(mask, bool)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(mask.shape, np.int64).tobytes())
    h.update(np.packbits(mask).tobytes())
    return h.digest()


class Propagated:
    """What the widget's propagations wrote, per labels layer: {(id, plane, z): {fingerprint, ...}}.

    ``plane``: the slice's other hidden axes and the z axis (``where``), so a (t, z) stack's time points
    are told apart. Every mask a run left is kept (not only the last): undoing a later run brings an
    earlier run's mask back, and it is still known as propagated.
    """

    def __init__(self):
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def where(view) -> tuple:
        """The key of ``view``'s slices (a ``StackView``): its z axis and the other hidden axes' indices."""
        return (view.z_axis, tuple((a, i) for a, i in view.plane.fixed if a != view.z_axis))

    def known(self, layer, ids, view) -> dict:
        """{(id, z): frozenset of fingerprints} of ``ids`` on ``view``'s slices: a snapshot for a worker."""
        book, here, ids = self._layers.get(layer, {}), self.where(view), set(ids)
        return {(oid, z): frozenset(f) for (oid, w, z), f in book.items() if w == here and oid in ids}

    def add(self, layer, view, oid: int, z: int, mask: np.ndarray) -> None:
        """Remember that a propagation left ``mask`` as object ``oid`` on slice ``z`` of ``view``."""
        self.remember(layer, view, {(int(oid), int(z)): fingerprint(mask)})

    def remember(self, layer, view, digests: dict) -> None:
        """Remember what a run wrote into ``layer`` (seen through ``view``, a ``StackView``): ``digests``,
        {(id, z): fingerprint} of its objects' masks on the slices it wrote or redid (``Changes.digests``,
        computed in the worker). A slice the user painted while it ran then matches none and is the user's."""
        book, here = self._layers.setdefault(layer, {}), self.where(view)
        for (oid, z), f in digests.items():
            book.setdefault((oid, here, z), set()).add(f)


def unchanged(known: dict, oid: int, z: int, mask: np.ndarray) -> bool:
    """``mask`` (object ``oid`` on slice ``z``) is still exactly what a propagation wrote (``known``:
    ``Propagated.known``)."""
    return fingerprint(mask) in known.get((oid, z), ())


class Redoing:
    """The labels (z, rows, cols) as a run should see them: objects' slices that an earlier propagation wrote,
    unchanged since, read as background, so that they are redone rather than kept as prompts.

    labels: a ``StackView`` of the labels layer. known: ``Propagated.known`` for the run's objects. keep: the
    current slice, never redone (the run starts from it). After the slices are read, ``redone`` is
    {z: [id, ...]} of what was found (each slice's first read decides).
    """

    def __init__(self, labels, known: dict, keep: int):
        self.labels, self.known, self.keep = labels, known, int(keep)
        self.shape, self.dtype = labels.shape, labels.dtype
        self.redone: dict[int, list[int]] = {}
        self._ids = {oid for oid, _ in known}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        z = int(z)
        sl = np.array(self.labels[z], copy=True)
        if z not in self.redone:
            self.redone[z] = [] if z == self.keep else self._stale(z, sl)
        for oid in self.redone[z]:
            sl[sl == oid] = 0
        return sl

    def _stale(self, z: int, sl: np.ndarray) -> list[int]:
        here = self._ids & set(np.unique(sl[sl > 0]).tolist()) if self._ids else ()
        return sorted(oid for oid in here if unchanged(self.known, oid, z, sl == oid))

    def __array__(self, dtype=None, copy=None):
        vol = np.stack([self[z] for z in range(self.shape[0])])
        return vol if dtype is None else vol.astype(dtype, copy=False)


def to_write(labels, ch, known: dict) -> tuple[np.ndarray, ...]:
    """(z, rows, cols, values) to write into the labels layer, seen through ``labels`` (a ``StackView``), for a
    run's ``Changes``: its new pixels (over what was background when it started, its redone slices' objects
    included) where the layer is still background, and on its redone slices (``ch.redone``, {z: [id, ...]}) the
    objects' old pixels too, each given its new value or cleared (0). ``known``: the run's
    ``Propagated.known``; a redone object's slice that is no longer what a propagation wrote (the user painted
    it meanwhile) is left alone. Pixels that would keep their value are not listed."""
    parts = []
    for z in sorted(set(ch.pixels) | set(ch.redone)):
        r, c, v = ch.pixels.get(z, (np.zeros(0, np.intp),) * 3)
        if not ch.redone.get(z):  # the usual case: only background is written, read pixel by pixel
            zs = np.full(len(r), z, np.intp)
            keep = np.asarray(labels.data[labels.full_index(zs, r, c)]) == 0
            parts.append((zs[keep], r[keep], c[keep], np.asarray(v)[keep]))
            continue
        cur = labels[z]
        old = np.zeros(cur.shape, bool)
        for oid in ch.redone[z]:
            m = cur == oid
            if unchanged(known, oid, z, m):
                old |= m
        new = np.zeros(cur.shape, cur.dtype)
        new[r, c] = v
        target = np.where(((cur == 0) | old) & (new != 0), new, np.where(old, 0, cur))
        rr, cc = np.nonzero(target != cur)
        parts.append((np.full(len(rr), z, np.intp), rr, cc, target[rr, cc]))
    if not parts:
        return tuple(np.zeros(0, np.intp) for _ in range(4))
    return tuple(np.concatenate(a) for a in zip(*parts))


def redone_text(redone: dict, zname: str = "z") -> str:
    """The status line's account of ``Changes.redone`` ({z: [id, ...]}): '' when nothing was redone."""
    per: dict[int, list[int]] = {}
    for z, ids in redone.items():
        for oid in ids:
            per.setdefault(int(oid), []).append(int(z))
    if not per:
        return ""
    each = "; ".join(f"label {oid} on {len(zs)} slice(s), {zname}={min(zs)}–{max(zs)}" if len(zs) > 1 else
                     f"label {oid} on {zname}={zs[0]}" for oid, zs in sorted(per.items()))
    return f"Redone, as an earlier propagation wrote them and they were not changed since: {each}."

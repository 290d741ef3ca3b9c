"""What the widget's precompute workers run: plain generators over core objects (no Qt).

Several threads use one SAM model: the click path (``_session.encode_slice``),
a propagation, the background precompute and the whole-stack run. Forward
passes of the image encoder are stateless, so running two at once would be
correct, but on a CPU they only slow each other down, and the slice the user
clicked on must not wait behind a far one. So every encoder call goes through
one :class:`EncoderGate` (one encoder call at a time; clicks and propagation,
the work the user waits for, before precompute), and
a :class:`GatedPredictor` looks in the memory cache again once it holds the
gate, so a slice the other thread has just embedded is not embedded twice.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from napari_sam.core.cache import cache_key, slice_signature
from napari_sam.core.precompute import PrecomputeProgress, disk_cache_for, precompute

from ._session import reported


class Stopped(Exception):
    """The run was stopped (raised at its next encoder call)."""


class EncoderGate:
    """One encoder call at a time across threads; foreground calls (a click, a propagation) go first."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = False
        self._foreground_waiting = 0

    @contextmanager
    def hold(self, foreground: bool = False):
        with self._cond:
            self._foreground_waiting += foreground
            try:
                while self._busy or (not foreground and self._foreground_waiting):
                    self._cond.wait()
            finally:
                self._foreground_waiting -= foreground
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class GatedPredictor:
    """A ``SlicePredictor`` whose ``embed`` goes through ``gate`` (every other attribute is the predictor's).

    cache: the memory cache looked in once the gate is held (and, with
    ``remember``, filled). stop: a ``threading.Event``; once set, the next
    ``embed`` raises :class:`Stopped` instead of running the encoder.
    """

    def __init__(self, predictor, gate: EncoderGate, cache=None, *, foreground=False, remember=True, stop=None):
        self._inner, self._gate, self._cache = predictor, gate, cache
        self._foreground, self._remember, self._stop = foreground, remember, stop

    def __getattr__(self, name):
        return getattr(self.__dict__["_inner"], name)

    def embed(self, slice2d, *, channel_axis=None, channel=None):
        a = np.asarray(slice2d)
        key = cache_key(self._inner, slice_signature(a), channel_axis, channel) if self._cache is not None else None
        with self._gate.hold(self._foreground):
            if self._stop is not None and self._stop.is_set():
                raise Stopped("stopped")
            if key is not None and key in self._cache:
                emb = self._cache.get(key, self._inner.model.device)
                if emb is not None:
                    return emb
            emb = self._inner.embed(a, channel_axis=channel_axis, channel=channel)
            if key is not None and self._remember:
                self._cache.put(key, emb)
            return emb


class SharedDisk:
    """A ``DiskCache`` used from several threads (one lock), seen from ``outer`` on its leading axes.

    ``SharedDisk(d).at((t,))`` is time point t of a (t, z, y, x) cache: its
    ``get``/``put`` take z. ``SharedDisk(d).at((0,), 0)`` is channel 0 of a (z, c, y, x) cache: its
    ``get``/``put`` take z, the first leading axis.
    """

    def __init__(self, disk, lock=None, outer: tuple = (), pos: int | None = None):
        self.disk, self._lock, self.outer, self._pos = disk, lock or threading.Lock(), tuple(outer), pos

    def at(self, outer, pos: int | None = None) -> SharedDisk:
        """Seen from ``outer`` on the leading axes; the index ``get``/``put`` take goes after them, or at
        ``pos`` among them (a z that is not the last leading axis, as in a (z, 1, y, x) stack)."""
        return SharedDisk(self.disk, self._lock, tuple(outer), pos)

    def _full(self, index) -> tuple:
        index = index if isinstance(index, tuple) else (index,)
        if self._pos is None:
            return (*self.outer, *index)
        return (*self.outer[: self._pos], *index, *self.outer[self._pos :])

    def get(self, index, signature, device=None):
        with self._lock:
            return self.disk.get(self._full(index), signature, device)

    def put(self, index, signature, emb) -> None:
        with self._lock:
            self.disk.put(self._full(index), signature, emb)

    def try_put(self, index, signature, emb) -> bool:
        with self._lock:
            return self.disk.try_put(self._full(index), signature, emb)

    def done(self) -> list:
        with self._lock:
            return self.disk.done()


class SubStack:
    """``data[outer]`` read lazily, one slice at a time (``data`` may be zarr or dask)."""

    def __init__(self, data, outer: tuple):
        self._data, self._outer = data, tuple(outer)
        self.shape = tuple(data.shape[len(self._outer):])
        self.dtype = data.dtype

    def __getitem__(self, z):
        return self._data[(*self._outer, z)]


def stack_location(fixed, axes, ndim: int) -> tuple[tuple, int] | None:
    """(outer indices, z) of a plane that shows an image's last two axes; else None.

    fixed, axes: a ``_plane.Plane``'s. ndim: the image's spatial dimensions.
    A 2D image, or a view along another axis, has no stack to precompute.
    """
    if ndim < 3 or tuple(axes) != (ndim - 2, ndim - 1):
        return None
    idx = tuple(int(i) for _, i in sorted(fixed))
    return idx[:-1], idx[-1]


@reported
def background(predictor, data, outer: tuple, z: int, cache, channel_axis):
    """The slices of ``data[outer]`` nearest ``z`` first, into the memory ``cache``.

    Yields ``PrecomputeProgress``: first a "start" marker (done 0), then one
    per slice. Send a z to re-centre. Stops when the memory budget is full.
    Returns the number of slices run through the encoder.
    """
    stack = SubStack(data, outer) if outer else data
    new = yield PrecomputeProgress(0, int(stack.shape[0]), z, "start", 0.0)
    gen = precompute(predictor, stack, start=z if new is None else int(new), cache=cache,
                     channel_axis=channel_axis, batch=1)
    return (yield from gen)


@dataclass
class Opened:
    """The disk cache a whole-stack run fills (its first yield): ``done`` of ``total`` slices already there."""

    disk: SharedDisk
    done: int
    total: int


@reported
def whole_stack(path, predictor, data, start: tuple, channel_axis, lock=None):
    """Every slice of ``data`` into the disk cache at ``path`` (started, or resumed if it matches).

    data: (*lead, y, x[, c]). start: a lead index; its stack (e.g. its time
    point) goes first, nearest slices first. Yields :class:`Opened`, then a
    ``PrecomputeProgress`` per slice with ``index`` a lead tuple and
    ``done``/``total`` over the whole image. Send a lead index to re-centre
    (used when it is in the stack being done). A cache made for another image,
    model or settings raises ``CacheMismatch`` (nothing is written).
    Returns (the ``SharedDisk``, slices encoded).
    """
    disk, encoded = disk_cache_for(path, predictor, data, start=tuple(start), channel_axis=channel_axis)
    shared = SharedDisk(disk, lock)
    lead = tuple(disk.lead)
    total = int(np.prod(lead))
    sent = yield Opened(shared, len(disk.done()), total)
    start = tuple(sent) if sent is not None else tuple(start)
    outers = [start[:-1]] + [o for o in np.ndindex(*lead[:-1]) if o != start[:-1]]
    done = 0
    for outer in outers:
        sub = SubStack(data, outer) if outer else data
        gen = precompute(predictor, sub, start=start[-1], disk=shared.at(outer), channel_axis=channel_axis)
        value = None
        while True:
            try:
                p = gen.send(value)
            except StopIteration as stop:
                encoded += int(stop.value or 0)
                break
            value = yield replace(p, done=done + p.done, total=total, index=(*outer, p.index))
            value = int(value[-1]) if value is not None and tuple(value[:-1]) == outer else None
        done += lead[-1]
    return shared, encoded

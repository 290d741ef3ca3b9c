"""The widget's precompute workers: at most one of each kind ("background", "stack").

Each runs a generator from ``_precompute_work`` in napari's ``thread_worker``.
A run is stopped by setting its ``stop`` event (the next encoder call raises)
and quitting its worker (at the next yield). Worker signals reach the widget
through a weak reference and only while the run is still the current one of
its kind, so a late signal from a stopped run, or one arriving after the
widget closed, does nothing.
"""

from __future__ import annotations

import threading
import weakref


class Run:
    """One precompute worker: what it is for, and how to stop or re-centre it."""

    def __init__(self, kind: str, key, worker, stop: threading.Event, where):
        self.kind, self.key, self.worker, self.stop = kind, key, worker, stop
        self.primed = False  # the worker has yielded once: send() is safe from then on
        self.sent = self.want = where  # where it is centred / where it should be
        self.shown = 0.0  # when its progress was last shown
        self.last = None  # the last PrecomputeProgress
        self.path = self.image = None  # whole stack: the cache folder, what it is for

    def halt(self) -> None:
        self.stop.set()
        self.worker.quit()

    def recentre(self, where) -> None:
        """Move the run's centre to ``where`` (sent once the worker has started its generator)."""
        self.want = where
        if self.primed and self.sent != where:
            self.worker.send(where)
            self.sent = where


class Runs:
    """The widget's current runs, by kind."""

    def __init__(self):
        self._runs: dict[str, Run] = {}

    def __bool__(self) -> bool:
        return bool(self._runs)

    def __contains__(self, kind) -> bool:
        return kind in self._runs

    def get(self, kind) -> Run | None:
        return self._runs.get(kind)

    def values(self) -> list:
        return list(self._runs.values())

    def start(self, owner, kind: str, key, where, func, *args, stop: threading.Event) -> Run:
        """Run generator ``func(*args)`` in a thread.

        Its signals call ``owner._on_precompute_step/_end/_error(run, ...)``.
        """
        from napari.qt.threading import create_worker
        from qtpy.QtCore import QThreadPool

        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        run = Run(kind, key, worker, stop, where)
        worker.yielded.connect(self._slot(owner, "_on_precompute_step", run))
        worker.returned.connect(self._slot(owner, "_on_precompute_end", run))
        worker.errored.connect(self._slot(owner, "_on_precompute_error", run))
        # a long-running worker: the pool may run one thread more meanwhile, so clicks never queue behind it
        pool = QThreadPool.globalInstance()
        pool.releaseThread()
        worker.finished.connect(pool.reserveThread)
        self._runs[kind] = run
        worker.start()
        return run

    def _slot(self, owner, method: str, run: Run):
        ref = weakref.ref(owner)

        def slot(*args):
            w = ref()
            if w is not None and not w._closed and self._runs.get(run.kind) is run:
                getattr(w, method)(run, *args)

        return slot

    def forget(self, run: Run) -> None:
        """``run`` has ended by itself."""
        if self._runs.get(run.kind) is run:
            del self._runs[run.kind]

    def halt(self, kind: str) -> Run | None:
        run = self._runs.pop(kind, None)
        if run is not None:
            run.halt()
        return run

    def halt_all(self) -> None:
        for kind in list(self._runs):
            self.halt(kind)

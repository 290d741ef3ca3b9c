"""Ctrl-C (SIGINT) and SIGTERM (``kill``, a job scheduler's time limit) in the CLI.

While a command runs, either signal raises :class:`Interrupted` where the work is, so that a file being
written is finished or taken away (``_labels_file.write_labels_atomic``, ``core.download``), and the
command says what was finished and how to go on instead of a traceback (or, for SIGTERM, nothing). The
exit status is a shell's for a command stopped by that signal: 130 (SIGINT), 143 (SIGTERM). A second
signal while the first is being handled is ignored: it would cut short the putting right.

``Interrupted`` is a ``BaseException``, as ``KeyboardInterrupt`` is, so that no ``except Exception`` in a
library takes it for an error of its own; it is not a ``KeyboardInterrupt``, which CPython may turn into
death by SIGINT at exit even once handled (when raised inside ``eval``, as during some imports).

This module imports the standard library only: ``cli.main`` sets it up before anything heavy loads.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. signum: the signal; exit_code: 128 + signum; name: what to call it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.name = "interrupted" if self.signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def as_interrupted(e: BaseException) -> Interrupted:
    """``e`` (an ``Interrupted`` or a ``KeyboardInterrupt`` raised without the handlers) as ``Interrupted``."""
    return e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)


@contextlib.contextmanager
def signals_interrupt():
    """SIGINT and SIGTERM raise :class:`Interrupted` in the block (the first one; later ones are ignored).
    A signal the process was started ignoring (``nohup``, a background job's SIGINT) stays ignored; off the
    main thread, where signal handlers cannot be set, the block runs as it is. Yields ``release()``, which
    gives the signals back to the handlers they had (for work that handles them itself: a napari viewer)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    first = []

    def handler(signum, frame):
        if not first:
            first.append(signum)
            raise Interrupted(signum)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old = {s: h for s, h in old.items() if h is not signal.SIG_IGN}

    def release():
        for s, h in old.items():
            signal.signal(s, h)

    for s in old:
        signal.signal(s, handler)
    try:
        yield release
    finally:
        release()

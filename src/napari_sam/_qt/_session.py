"""The widget's model, predictor and embedding cache, and the work it runs off the GUI thread.

Loading a model and encoding a slice are slow; both run in napari's
``thread_worker`` (``create_worker``). The functions run in the workers are
plain functions over core objects, so they can be tested without Qt.
Decoding prompts on a cached embedding is fast and runs on the GUI thread,
always with the *current* prompts, so a late result never applies to prompts
the user has changed since.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

from napari_sam.core.cache import EmbeddingCache, embed_cached

# Loaded models shared by every widget of this process: (name or path, device) -> LoadedModel.
_MODELS: OrderedDict = OrderedDict()
_MODELS_LOCK = threading.Lock()
_KEEP_MODELS = 2


def _llvm_loaded() -> bool:
    """True when an LLVM library is mapped into this process (Linux Mesa OpenGL drivers load one)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libLLVM" in line for line in f)
    except OSError:
        return False


def import_torch() -> None:
    """Import torch, torchvision and segment_anything on the calling (GUI) thread.

    Two native-library hazards are avoided here. Importing them first inside a
    worker thread is not safe. And torchvision makes torch import triton,
    whose bundled LLVM crashes the process (segfault) when Mesa's OpenGL
    driver has already loaded the system libLLVM, as in any napari viewer on
    Mesa (software rendering, AMD). Inference never needs triton (it serves
    torch.compile), so in that situation torch is told it is not installed,
    also when torch itself is already imported (by another plugin, say) but
    triton is not yet: until session 9 that case was left alone and crashed.
    """
    import sys

    if "triton" not in sys.modules and _llvm_loaded():
        sys.modules["triton"] = None  # `import triton` raises ImportError; torch copes
    import segment_anything  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    from segment_anything.utils.transforms import ResizeLongestSide  # noqa: F401


def load_model_cached(name_or_path: str, device: str):
    """``core.models.load_model``, remembering the last few models (runs in a worker). A download shows
    its progress in napari's activity dock."""
    from napari_sam.core.models import load_model, model_key, pending_download

    key = model_key(name_or_path, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    name, bar = pending_download(name_or_path), None
    if name is not None:
        from napari.utils import progress

        # a total of 1 until the server gives the size (pooch skips a bar whose total is 0: bool(bar) is False)
        bar = progress(total=1, desc=f"Downloading model {name}", unit="B", unit_scale=True)
    try:
        model = load_model(name_or_path, device=device, progress=bar if bar is not None else False)
    finally:
        if bar is not None:
            bar.close()
    with _MODELS_LOCK:
        _MODELS[key] = model
        while len(_MODELS) > _KEEP_MODELS:
            _MODELS.popitem(last=False)
    return model


def encode_slice(predictor, cache: EmbeddingCache, data, index: tuple, rgb: bool, disk=None, disk_index=None):
    """Read one slice of ``data`` (numpy, dask, zarr...) and embed it (runs in a worker).

    disk, disk_index: a disk cache of the stack and the slice's index in it (looked in before the encoder).
    """
    slice2d = np.asarray(data[index])
    return embed_cached(predictor, cache, slice2d, channel_axis=-1 if rgb else None, disk=disk, index=disk_index)


class WorkerError(Exception):
    """A RuntimeError (torch raises those: out of memory, bad shapes...) inside a generator run in a worker.

    napari's generator worker takes a RuntimeError for "the worker was
    deleted" and ends silently, without its ``errored`` or ``finished``
    signals; re-raised as this, it is reported like any other error.
    """


def reported(genfunc):
    """Decorate a generator function run in a worker: its RuntimeErrors become :class:`WorkerError`."""

    @functools.wraps(genfunc)
    def run(*args, **kwargs):
        try:
            return (yield from genfunc(*args, **kwargs))
        except RuntimeError as e:
            raise WorkerError(str(e)) from e

    return run


class Session:
    """The current model and everything derived from it.

    ``version`` changes whenever the model changes, so results computed with
    an older model are recognised and dropped.
    """

    def __init__(self, cache_bytes: int = 512 << 20):
        self.model = None
        self.predictor = None
        self.version = 0
        self.cache = EmbeddingCache(cache_bytes)
        self.embedding_key: tuple | None = None

    def set_model(self, model) -> None:
        from napari_sam.core.predictor import SlicePredictor

        self.model = model
        self.predictor = SlicePredictor(model)
        self.version += 1
        self.embedding_key = None

    def set_input_scale(self, scale: float) -> None:
        """Magnify slices by ``scale`` before the encoder (native models only): a new predictor,
        so every embedding is made again (the cache keys carry the scale; old ones are not reused)."""
        from napari_sam.core.predictor import SlicePredictor

        self.predictor = SlicePredictor(self.model, input_scale=scale)
        self.version += 1
        self.embedding_key = None

    def drop_model(self) -> None:
        self.model = self.predictor = None
        self.version += 1
        self.embedding_key = None

    def set_embedding(self, key: tuple, embedding) -> None:
        self.predictor.set_embedding(embedding)
        self.embedding_key = key


class Jobs:
    """Workers in flight, by purpose; a result is delivered only if its job is still wanted."""

    def __init__(self, on_busy: Callable[[str | None], None]):
        self._on_busy = on_busy
        self._running: dict[object, tuple[object, str]] = {}  # key -> (worker, description)

    def running(self, key) -> bool:
        return key in self._running

    def kinds(self) -> set:
        return {k[0] for k in self._running}

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def start(self, key, description: str, func, *args, on_result, on_error, on_yield=None, on_done=None) -> None:
        """Run ``func(*args)`` in a thread; ``key`` names the job (a tuple whose first item is its kind).

        on_yield(key, value): each value a generator ``func`` yields, while the job is wanted.
        on_done(key): once the worker has stopped, however it ended (returned, failed, cancelled).
        """
        from napari.qt.threading import create_worker

        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)

        def returned(value, key=key, worker=worker):
            if self._running.get(key, (None,))[0] is worker:
                self._finish(key)
                on_result(key, value)

        def errored(exc, key=key, worker=worker):
            if self._running.get(key, (None,))[0] is worker:
                self._finish(key)
                on_error(key, exc)

        def yielded(value, key=key, worker=worker):
            if self._running.get(key, (None,))[0] is worker:
                on_yield(key, value)

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        if on_yield is not None:
            worker.yielded.connect(yielded)
        if on_done is not None:
            worker.finished.connect(lambda key=key: on_done(key))
        self._running[key] = (worker, description)
        self._on_busy(description)
        worker.start()

    def _finish(self, key) -> None:
        self._running.pop(key, None)
        self._on_busy(next((d for _, d in self._running.values()), None))

    def close(self) -> None:
        """Forget every job without reporting (the widget is going away)."""
        for worker, _ in self._running.values():
            worker.quit()
        self._running.clear()

    def cancel(self, kind=None) -> list:
        """Forget the jobs (of one kind); their results will be dropped. Returns the keys."""
        keys = [k for k in self._running if kind is None or k[0] == kind]
        for k in keys:
            worker, _ = self._running.pop(k)
            worker.quit()
        self._on_busy(next((d for _, d in self._running.values()), None))
        return keys

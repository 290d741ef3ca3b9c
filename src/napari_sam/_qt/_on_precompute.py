"""Embeddings ahead of the user: neighbouring slices in the background, or the whole stack to disk.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`.

* **Background** (the "Precompute neighbouring slices" box): once a model and
  a z-stack are there, ``core.precompute`` runs in a ``thread_worker``,
  starting at the current slice and moving outward, into the memory cache
  that clicks read. Moving to another slice re-centres it (``worker.send``);
  a new image, model, time point or an edit of the image restarts it; it
  stops when the memory budget is full, on Stop, or when the widget closes.
* **Whole stack**: every slice into a zarr cache on disk (resumed if it
  exists and matches); clicks then read their slice from it.

None of this makes the widget ``busy``: it is work ahead of the user, not
work the user waits for. Every encoder call (clicks and propagation included)
goes through one ``EncoderGate``, so a click's slice never waits behind more
than the one slice being embedded (see ``_precompute_work``). The background
run pauses while a propagation runs (it would only slow it down, embedding the
same neighbourhood) and resumes after it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ._plane import PlaneError, current_plane, image_data, spatial_shape
from ._precompute_runs import Run, Runs
from ._precompute_work import EncoderGate, GatedPredictor, Opened, background, stack_location, whole_stack

SHOW_EVERY = 0.15  # seconds between progress updates on screen


class Precomputing:
    """Background and whole-stack precompute for the SAM widget."""

    def _init_precompute(self) -> None:
        self._gate = EncoderGate()
        self._pc_runs = Runs()
        self._pc_done_key = None  # a background run that ended (or was stopped): not restarted
        self._pc_disk = None  # (SharedDisk, image layer) that clicks read
        ui = self._ui
        ui.precompute.toggled.connect(self._on_precompute_toggled)
        ui.precompute_stack.clicked.connect(self._on_precompute_stack)
        ui.precompute_stop.clicked.connect(self._on_precompute_stop)
        self.destroyed.connect(lambda *_, runs=self._pc_runs: runs.halt_all())

    @property
    def precomputing(self) -> bool:
        """True while a background or whole-stack precompute runs."""
        return bool(self._pc_runs)

    # ---------------------------------------------------- used by clicks --
    def _foreground_predictor(self, predictor=None):
        """``predictor`` (default: the session's) through the encoder gate, ahead of precompute.

        For the encoder calls the user waits for: a click's slice, a propagation.
        """
        predictor = self._session.predictor if predictor is None else predictor
        return GatedPredictor(predictor, self._gate, self._session.cache, foreground=True)

    def _disk_for(self, plane) -> tuple:
        """(disk cache, index) holding ``plane`` of the current image for the current model, or (None, None)."""
        use, pred = self._disk_for_image(), self._session.predictor
        if use is None or pred is None:
            return None, None
        if not use[0].disk.serves(pred):  # another model, normalisation or magnification than now
            return None, None
        if not use[0].disk.fits(image_data(self._image)):  # the layer's data was replaced since
            return None, None
        loc = stack_location(plane.fixed, plane.axes, len(spatial_shape(self._image)))
        return (use[0], (*loc[0], loc[1])) if loc is not None else (None, None)

    # ------------------------------------------------------- background --
    def _location(self):
        if self._image is None:
            return None
        try:
            plane = current_plane(self._viewer, self._image)
        except PlaneError:
            return None
        return stack_location(plane.fixed, plane.axes, len(spatial_shape(self._image)))

    def _sync_precompute(self) -> None:
        """Start, re-centre or stop the background run to follow the image, model, slice and box."""
        if getattr(self, "_pc_runs", None) is None or self._closed:
            return
        loc = self._location()
        stack = self._pc_runs.get("stack")
        if stack is not None:
            if loc is not None:
                stack.recentre((*loc[0], loc[1]))
            return
        if self.propagating:  # it would take turns with the propagation at the encoder: resumed after it
            if self._halt("background") is not None:
                self._pc_say("Background precompute paused while the propagation runs.")
            return
        key = None
        if (loc is not None and self._ui.precompute.isChecked() and self._session.model is not None
                and self._disk_for_image() is None):
            key = (id(self._image), self._image_version, self._session.version, loc[0])
        run = self._pc_runs.get("background")
        if run is not None and run.key != key:
            self._halt("background")
            run = None
        if key is None:
            return
        if run is not None:
            run.recentre(loc[1])
        elif key != self._pc_done_key:
            stop = threading.Event()
            pred = GatedPredictor(self._session.predictor, self._gate, self._session.cache, stop=stop)
            self._pc_runs.start(self, "background", key, loc[1], background, pred, image_data(self._image),
                                loc[0], loc[1], self._session.cache, -1 if self._image.rgb else None, stop=stop)
            self._show_controls()

    def _disk_for_image(self):
        use = self._pc_disk
        # the image, whatever was chosen meanwhile: each slice is read only if its bytes are the ones stored
        return use if use is not None and use[1] is self._image else None

    def _on_precompute_toggled(self, on: bool) -> None:
        self._pc_done_key = None
        if not on and "background" in self._pc_runs:
            self._halt("background")
            self._pc_say("Background precompute is off.")
        self._sync_precompute()

    # ------------------------------------------------------- whole stack --
    def _on_precompute_stack(self) -> None:
        problem = self._stack_problem()
        if problem:
            self._pc_say(problem, error=True)
            return
        src = getattr(getattr(self._image, "source", None), "path", None)
        if src:
            from napari_sam.core.disk_cache import default_cache_path

            suggested = str(default_cache_path(src))
        else:
            suggested = str(Path.home() / f"{self._image.name}.embeddings.zarr")
        path, _ = QFileDialog.getSaveFileName(
            self, "Embedding cache (a .zarr folder; an existing one is resumed)", suggested,
            "Zarr store (*.zarr);;All files (*)", options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.precompute_stack(path)

    def _stack_problem(self) -> str:
        if self._session.model is None:
            return "Precompute whole stack: wait for the model to load (or choose one)."
        if self._image is None:
            return "Precompute whole stack: open an image first."
        if len(spatial_shape(self._image)) < 3:
            return (f"Precompute whole stack: {self._image.name!r} is a single 2D slice; "
                    "its embedding is computed at the first click.")
        return ""

    def precompute_stack(self, path) -> bool:
        """Fill the embedding cache at ``path`` (a .zarr folder) with every slice of the image, in the background.

        An existing cache made for this image and model is resumed; one made
        for another is refused with a message (and left as it is). Clicks read
        their slice from the cache. Returns False (with a message) when nothing started.
        """
        problem = self._stack_problem()
        if problem:
            self._pc_say(problem, error=True)
            return False
        path = Path(path)
        if path.exists() and not path.is_dir():
            self._pc_say(f"Precompute whole stack: {path} is a file; give a folder name ending in .zarr.", error=True)
            return False
        data = image_data(self._image)
        lead = tuple(spatial_shape(self._image)[:-2])
        loc = self._location()
        start = (*loc[0], loc[1]) if loc is not None else (0,) * len(lead)
        self._halt("background")
        self._halt("stack")
        stop = threading.Event()
        pred = GatedPredictor(self._session.predictor, self._gate, self._session.cache, remember=False, stop=stop)
        key = (str(path), id(self._image), self._image_version, self._session.version)
        run = self._pc_runs.start(self, "stack", key, start, whole_stack, path, pred, data, start,
                                  -1 if self._image.rgb else None, threading.Lock(), stop=stop)
        run.path, run.image = path, self._image
        self._show_controls()
        self._pc_say(f"Opening the embedding cache {path.name}…")
        return True

    # --------------------------------------------------------- workers --
    def _halt(self, kind: str) -> Run | None:
        run = self._pc_runs.halt(kind)
        if run is not None:
            self._show_controls()
        return run

    def _stop_precompute(self) -> None:
        """Stop every precompute (the widget is closing)."""
        self._pc_runs.halt_all()

    def _on_precompute_stop(self) -> None:
        for kind in ("background", "stack"):
            run = self._halt(kind)
            if run is None:
                continue
            if kind == "background":
                self._pc_done_key = run.key
            p = run.last
            got = f" ({p.done}/{p.total} slices done)" if p is not None else ""
            resume = "; run it again to resume" if kind == "stack" else ""
            what = f"Embedding cache {run.path.name}" if kind == "stack" else "Background precompute"
            self._pc_say(f"{what} stopped{got}{resume}.")

    def _on_precompute_step(self, run: Run, p) -> None:
        run.primed = True
        run.recentre(run.want)
        if isinstance(p, Opened):
            self._pc_disk = (p.disk, run.image)
            self._pc_say(
                f"Embedding cache {run.path.name}: {p.done}/{p.total} slices already there.")
            return
        if p.source == "start":
            return
        run.last = p
        now = time.monotonic()
        if now - run.shown >= SHOW_EVERY or p.done == p.total or p.stopped:
            run.shown = now
            self._show_progress(run, p)

    def _show_progress(self, run: Run, p) -> None:
        bar = self._ui.precompute_bar
        bar.setRange(0, max(p.total, 1))
        bar.setValue(p.done)
        if run.kind == "stack":
            text = f"Embedding cache {run.path.name}: {p.done}/{p.total} slices."
        else:
            text = f"Precomputed {p.done}/{p.total} slices, nearest first."
        if p.stopped:
            text = f"Precomputed {p.done}/{p.total} slices; stopped: {p.stopped}."
        self._pc_say(text)

    def _on_precompute_end(self, run: Run, value) -> None:
        self._pc_runs.forget(run)
        p = run.last
        if run.kind == "background":
            self._pc_done_key = run.key
            if p is not None:
                self._show_progress(run, p)
                if not p.stopped:
                    self._pc_say(f"Precomputed {p.done}/{p.total} slices ({value} encoded now): "
                                 "moving to them costs no encoder time.")
        else:
            disk, encoded = value
            n = len(disk.done())
            self._pc_say(
                f"Embedding cache {run.path.name}: {n} slices ({encoded} encoded now); clicks read it.")
        self._show_controls()
        self._sync_precompute()

    def _on_precompute_error(self, run: Run, exc) -> None:
        self._pc_runs.forget(run)
        self._show_controls()
        if run.kind == "background":
            self._pc_done_key = run.key
            self._pc_say(f"Background precompute failed: {exc}", error=True)
        elif isinstance(exc, OSError) and not isinstance(exc, FileExistsError):  # read-only, disk full...
            self._pc_say(f"Precompute whole stack: could not write to {run.path.name} ({exc.strerror or exc}); "
                         "the slices done are kept there: make room (or choose another file), then run it again "
                         "to resume.", error=True)
        else:
            self._pc_say(f"Precompute whole stack: {exc}", error=True)
        self._sync_precompute()

    def _pc_say(self, text: str, *, error: bool = False) -> None:
        """Show ``text`` under the precompute bar (an error also in the status line, and as a notification)."""
        self._ui.precompute_status.setText(text)
        self._ui.precompute_status.setStyleSheet("color: #ff6b6b;" if error else "")
        if error:
            self._say(text, error=True)

    def _show_controls(self) -> None:
        ui, running = self._ui, bool(self._pc_runs)
        ui.precompute_bar.setVisible(running)
        ui.precompute_stop.setVisible(running)
        ui.precompute_stack.setEnabled("stack" not in self._pc_runs)
        if running and not any(r.last for r in self._pc_runs.values()):
            ui.precompute_bar.setRange(0, 0)  # busy until the first slice is done

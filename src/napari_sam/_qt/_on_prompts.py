"""From the prompts on the current slice to SAM's candidates in the preview layer.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`. Every change (slice,
prompts, image, model) bumps a version; a result carries the versions it was
computed for (its token) and is only shown or committed while they are current.
The slow encoder runs in a worker; decoding runs on the GUI thread with the
prompts of *now*, so a late embedding never applies to stale prompts.
"""

from __future__ import annotations

import numpy as np

from napari_sam.core.magnify import LARGE_SCALE, median_radius, scale_for
from napari_sam.core.objects import group_prompts, predict_candidates

from . import _layers as L
from ._choice import Choice, object_keys
from ._commit import CommitError, check_target
from ._plane import (PlaneError, boxes_on_plane, current_plane, image_data, points_inside, points_on_plane,
                     spatial_shape)
from ._preview import Result, prompt_key
from ._session import encode_slice


class Prompting:
    """Prompt events, SAM runs and the preview for the SAM widget."""

    def _on_dims_change(self, event=None) -> None:
        key = None
        if self._image is not None:
            try:
                p = current_plane(self._viewer, self._image)
                key = (p.fixed, p.axes)
            except PlaneError:
                pass
        if key != self._plane_key:
            self._plane_key, self._last_commit = key, ""
            self._reset_result()
            self._schedule()

    def _on_image_data(self, event=None) -> None:
        self._image_version += 1
        self._reset_result()
        self._schedule()
        self._stop_stale_propagation()

    def _on_prompts_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "")) if event is not None else ""
        if action.endswith("ing"):  # adding / removing / changing: wait for the -ed event
            return
        self._prompt_version += 1
        self._schedule()

    def _on_labels_changed(self, event=None) -> None:
        if self._ui.refine.isChecked():
            self._on_prompts_changed()

    def _on_polarity_changed(self, positive: bool) -> None:
        if self._points is not None:
            L.set_new_point_polarity(self._points, positive)

    def _on_toggle_polarity(self) -> None:
        pts = self._points
        if pts is not None and str(pts.mode) == "select" and pts.selected_data:
            # in select mode, N flips the selected points instead
            feats = pts.features.copy()
            idx = sorted(pts.selected_data)
            feats.loc[idx, "positive"] = ~feats.loc[idx, "positive"].astype(bool)
            pts.features = feats
            pts.refresh_colors()
            self._on_prompts_changed()
            self._say(f"Flipped {len(idx)} selected point(s) between positive and negative.")
            return
        (self._ui.negative if self._ui.positive.isChecked() else self._ui.positive).setChecked(True)
        self._say(f"New points are {'positive' if self._ui.positive.isChecked() else 'negative'}.")

    def _schedule(self) -> None:
        """Something SAM depends on changed: run the preview soon, re-aim the background precompute."""
        if not self._closed:
            self._timer.start()
            self._sync_precompute()

    def _reset_result(self) -> None:
        self._result, self._pending_commit = None, None
        L.clear_preview(self._preview)
        self._ui.candidates.clear()

    def _token(self, plane=None):
        if self._image is None or plane is None:
            return None
        return (id(self._image), self._image_version, (plane.fixed, plane.axes), self._prompt_version, self._session.version)

    def _gather(self):
        """(plane, objects, notes) of the current slice; PlaneError/CommitError say what is wrong."""
        if self._image is None:
            raise PlaneError("no image layer: open an image first")
        image, v = self._image, self._viewer
        plane = current_plane(v, image)
        pts = lab = boxes = mask = None
        notes = []
        if self._points is not None:
            pts, lab, more = points_inside(*points_on_plane(self._points, image, plane)[1:], plane)
            notes += more
        if self._boxes is not None:
            _, boxes, more = boxes_on_plane(self._boxes, image, plane)
            notes += more
        if self._ui.refine.isChecked():
            mask = self._refine_mask(plane, notes)
        objects, more = group_prompts(pts, lab, boxes, mask)
        return plane, objects, notes + more

    def _refine_mask(self, plane, notes):
        """The selected label's mask on this slice as SAM's mask prompt (alone, the predictor adds its box:
        ``core.predictor.with_mask_box``)."""
        if self._labels is None:
            raise CommitError("refining needs a labels layer: choose one, or commit an object first")
        check_target(self._labels, spatial_shape(self._image))
        label = int(self._labels.selected_label)
        mask = self._labels.data[plane.index] == label
        if label == 0 or not mask.any():
            notes.append(f"label {label} is not on this slice, nothing to refine")
            return None
        return mask

    def _update_preview(self) -> None:
        self._timer.stop()
        if self._closed:
            return
        try:
            plane, objects, notes = self._gather()
        except (PlaneError, CommitError) as e:
            self._reset_result()
            self._say(str(e), error=isinstance(e, CommitError))
            return
        token = self._token(plane)
        if self._result is not None and self._result.token == token:
            return
        if not objects:
            self._reset_result()
            hint = "; ".join(notes) if notes else "click on an object, or draw a box around it."
            self._say(f"{self._last_commit} Next: {hint}" if self._last_commit else f"{plane.label}: {hint}")
            return
        self._last_commit = ""
        asked = prompt_key(objects)
        if self._same_request(token, asked):  # an event that left the prompts as they were (a box dragged and
            self._result.token, self._result.notes = token, notes  # put back): the candidate shown stays
            self._show_result()
            if self._pending_commit == token:
                self._commit_result()
            return
        if self._session.model is None:
            loading = "model" in self._jobs.kinds()
            self._say("Waiting for the model to load…" if loading else "No model is loaded: choose a model above.")
            return
        emb_key = token[:3] + token[4:]
        if self._session.embedding_key != emb_key:
            if token != self._cancelled:
                self._start_encode(emb_key, plane)
            return
        self._carry_mask(token, objects)
        try:
            cands = predict_candidates(self._session.predictor, objects)
        except ValueError as e:
            self._reset_result()
            self._say(str(e), error=True)
            return
        prev = self._result.choice if self._result is not None and self._same_context(token) else None
        self._result = Result(token, plane, objects, cands, notes, asked, Choice(object_keys(asked), cands, prev))
        self._show_result()
        if self._pending_commit == token:
            self._commit_result()

    def _same_request(self, token, asked) -> bool:
        """Whether the result shown answers the same prompts of the same image, slice and model: its token
        but for the prompts' version (``_token``: an edit that put them back still counts one up)."""
        return self._same_context(token) and self._result.asked == asked

    def _same_context(self, token) -> bool:
        """Whether the result shown is of the same image, slice and model as ``token`` (its prompts may differ)."""
        prev = self._result
        return prev is not None and _without_prompt_version(prev.token) == _without_prompt_version(token)

    def _carry_mask(self, token, objects) -> None:
        """SAM's interactive loop: a click added to the one object of the slice is
        decoded with the shown candidate's low-res logits as mask prompt (a
        corrective click then corrects that mask instead of starting over).
        Only when the previous result is of the same image, slice and model and
        its clicks are the first clicks of now."""
        prev = self._result
        if prev is None or len(objects) != 1 or len(prev.objects) != 1 or prev.token[:3] != token[:3] \
                or prev.token[4:] != token[4:]:
            return
        o, po = objects[0], prev.objects[0]
        n = len(po.points)
        refining = po.mask is not None and po.mask.dtype == bool  # a label being refined, not carried logits
        if o.box is not None or o.mask is not None or po.box is not None or refining \
                or not n or len(o.points) <= n or not np.array_equal(o.points[:n], po.points) \
                or not np.array_equal(o.labels[:n], po.labels):
            return
        shown = prev.candidates[0]
        if shown.low_res is not None:
            o.mask = shown.low_res[prev.choice.ranks[0]]

    def _start_encode(self, emb_key, plane) -> None:
        key = ("encode", *emb_key)
        if self._jobs.running(key):
            return
        self._jobs.cancel("encode")
        desc = f"Computing the embedding of {plane.label} (once per slice)…"
        self._say(desc)
        self._jobs.start(key, desc, encode_slice, self._foreground_predictor(), self._session.cache,
                         image_data(self._image), plane.index, self._image.rgb, *self._disk_for(plane),
                         on_result=self._on_encoded, on_error=self._on_job_error)

    def _on_encoded(self, key, embedding) -> None:
        if self._closed or self._image is None:
            return
        try:
            plane = current_plane(self._viewer, self._image)
        except PlaneError:
            return
        token = self._token(plane)
        if key[1:] == token[:3] + token[4:]:  # same image, slice and model as now: use it
            self._session.set_embedding(key[1:], embedding)
            self._update_preview()

    def _show_result(self) -> None:
        res, ui = self._result, self._ui
        current = res.choice.current + 1 if len(res.objects) > 1 else None
        self._preview = L.show_preview(self._viewer, self._preview, self._image, res.plane, res.label_image(), current)
        self._follow_keys()
        L.move_below(self._viewer, self._preview, [self._boxes, self._points])
        ui.candidates.blockSignals(True)
        ui.candidates.clear()
        ui.candidates.addItems(res.rank_texts())
        ui.candidates.setCurrentRow(res.choice.rank)
        ui.candidates.blockSignals(False)
        self._say(res.summary() + self._magnification_hint(res))
        self._selection_follows()

    def _magnification_hint(self, res) -> str:
        """A hint when the objects shown are large (cell bodies, big nuclei) and the slice is magnified
        (``core.magnify``: what ``input_scale="auto"`` does in the API and CLI)."""
        pred = self._session.predictor
        if pred is None or not pred.native:
            return ""
        r = median_radius(np.stack([p[0] for p in res.picks()]))
        if scale_for(r, pred.input_scale) == pred.input_scale:
            return ""
        return (f" These objects are large (radius {r:.0f} px): Magnification {LARGE_SCALE:g}× segments "
                f"them better, and faster.")


PROMPT_VERSION = 3  # where ``Prompting._token`` keeps the prompts' version


def _without_prompt_version(token: tuple) -> tuple:
    return token[:PROMPT_VERSION] + token[PROMPT_VERSION + 1 :]

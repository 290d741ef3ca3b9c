"""Prompts on every slice: this slice's points and boxes applied to every slice of the stack, as new labels.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`, run like a propagation
(``_on_propagate.Propagating._launch``: a generator worker, progress, Cancel,
background-only writing, one undo step); the computing is
``_propagate.run_every_slice``.
"""

from __future__ import annotations

from ._commit import CommitError, check_fits, next_id, object_record, record_objects
from ._on_propagate import _bounds, _objects_text, _Run, _slices_text
from ._outcome import Outcome
from ._plane import PlaneError, current_plane, image_data
from ._propagate import PropagateError, StackView, negative_label, run_every_slice, z_axis_of, z_name


class EverySlice:
    """The Prompts on every slice handlers of the SAM widget (with ``Propagating``)."""

    def _on_every_slice(self) -> None:
        """This slice's prompts on every slice of the stack, as new labels (``_propagate.run_every_slice``)."""
        if self._propagation is not None:
            self._say("A propagation is already running: wait for it, or Cancel it.")
            return
        try:
            view, plane, objects, zr = self._every_slice_inputs()
            with self._labels_for_action() as labels:  # a refusal below leaves no new layer behind
                ids = self._every_slice_ids(labels, len(objects))
        except (PropagateError, PlaneError, CommitError) as e:
            self._say(str(e), error=True)
            return
        z = dict(plane.fixed)[view.z_axis]
        source = StackView(labels.data, plane, view.z_axis)
        prompts = {i: {z: o} for i, o in zip(ids, objects)}
        model, used = self._session.model, self._prompt_snapshot(plane)

        def after(layer):  # the prompts become the objects' records, and leave the slice (not those added since)
            record_objects(layer, [object_record(i, plane, o, score=None, token=None, model=model, every_slice=True)
                                   for i, o in zip(ids, objects)])
            return self._clear_prompts(plane, only=used)  # Undo puts them back

        what = _objects_text(ids)
        run = _Run(None, view, source, labels, self._image, self._image_version,
                   Outcome(ids, z_name(plane), _bounds(zr)), what="prompts on every slice", after=after)
        self._launch(run, f"Segmenting {what} with the prompts of {plane.label} on {_slices_text(zr, view, plane)}…",
                     run_every_slice, prompts, zr)

    def _every_slice_inputs(self):
        """(view, plane, objects, z range) for prompts on every slice; PropagateError/PlaneError/CommitError say
        why not."""
        if self._image is None:
            raise PropagateError("no image layer: open a z-stack first")
        plane = current_plane(self._viewer, self._image)
        if not plane.fixed:
            raise PropagateError("prompts on every slice needs a z-stack, but this image is 2D (one slice): "
                                 "commit the object with C instead")
        if self._session.model is None:
            raise PropagateError("no model is loaded yet: wait for it (or choose one above)")
        view = StackView(image_data(self._image), plane, z_axis_of(plane))
        if view.shape[0] < 2:
            raise PropagateError(f"the stack has a single slice along {z_name(plane)}: commit the object with C instead")
        zr = self._slice_range(view, plane)
        _, objects, _ = self._gather()
        if not objects:
            raise PropagateError(f"no prompts on {plane.label}: click the object (or draw a box around it) first, "
                                 "then apply the prompts to every slice")
        if any(o.mask is not None for o in objects):
            raise PropagateError("'Refine the selected label' is ticked: prompts on every slice takes points and "
                                 "boxes only; untick it")
        return view, plane, objects, zr

    def _every_slice_ids(self, labels, n: int) -> list[int]:
        """New ids (largest + 1, ...), or the selected label for every object when the widget says so."""
        if self._ui.selected_id.isChecked():
            label = int(labels.selected_label)
            if label == 0:
                raise CommitError("the selected label is 0 (background): select a label, or use a new object id")
            if label < 0:
                raise CommitError(negative_label(label))
            if n > 1:
                raise CommitError(f"'selected label' puts every object into label {label}, but this slice has "
                                  f"prompts for {n} objects: keep one, or choose 'new object id'")
            return [label]
        first = next_id(labels)
        check_fits(labels, first + n - 1)
        return list(range(first, first + n))

"""Find all objects in the stack: every object of a z-stack without a click (``core.find_stack``), as new labels.

A mixin of :class:`~napari_sam._qt.widget.SamWidget`, run like a propagation (``_on_propagate.Propagating._launch``:
a generator worker, progress, Cancel, background-only writing, one undo step). Objects are looked for on the
current slice and on every N-th slice up and down from it (N: the "every ... slices" box beside the button;
within the slices set under "Propagate through z"), only where the labels layer is background, and what is
found is carried through z (``_propagate.run_find_stack``).
"""

from __future__ import annotations

import numpy as np

from ._commit import CommitError, check_fits, next_id, object_record, record_objects
from ._on_propagate import _bounds, _Run, _slices_text
from ._outcome import Outcome
from ._plane import PlaneError, current_plane, image_data
from ._propagate import PropagateError, StackView, run_find_stack, z_axis_of, z_name

class FindingInStack:
    """The Find all objects in the stack handler of the SAM widget (with ``Propagating``)."""

    def _on_find_stack(self) -> None:
        if self._propagation is not None:
            self._say(f"The {self._propagation.what} is running: wait for it, or Cancel it.")
            return
        if self._finding is not None:
            self._say("Objects are being looked for on this slice: wait for it, or Cancel it.")
            return
        try:
            view, plane, zr = self._find_stack_inputs()
            with self._labels_for_action() as labels:
                first = next_id(labels)
                check_fits(labels, first)  # a free id at least; the found objects' count is checked at the end
        except (PropagateError, PlaneError, CommitError) as e:
            self._say(str(e), error=True)
            return
        z = dict(plane.fixed)[view.z_axis]
        dtype = labels.data.dtype
        top = int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None
        source = StackView(labels.data, plane, view.z_axis)
        model, found = self._session.model, {}
        outcome = Outcome([], z_name(plane), _bounds(zr))

        def after(layer):  # the objects found, recorded with the slice and seed that found each
            from dataclasses import replace

            from napari_sam.core.prompts import ObjectPrompt

            outcome.ids[:] = sorted(found)
            records = []
            for i in outcome.ids:
                zf, seed, score = found[i]
                on = replace(plane, fixed=tuple((a, zf if a == view.z_axis else k) for a, k in plane.fixed))
                records.append(object_record(i, on, ObjectPrompt(points=np.array([seed])), score=score, token=None,
                                             model=model, found=True, propagated=True))
            record_objects(layer, records)
            return ()

        run = _Run(None, view, source, labels, self._image, self._image_version, outcome,
                   what="finding of all objects in the stack", after=after, doing="Finding all objects in the stack",
                   unit="slices looked on")
        zn, every = z_name(plane), self._ui.find_every.value()
        looked = (plane.label if every >= view.shape[0] else
                  f"{plane.label} and every {every} slices up and down from it")
        self._launch(run, f"Looking for every object on {looked} ({_slices_text(zr, view, plane)}), "
                          f"then carrying them through {zn}…",
                     run_find_stack, every, z, zr, first, top, found,
                     self._find_settings())

    def _find_stack_inputs(self):
        """(view, plane, z range) of the stack to search; PropagateError/PlaneError say why not."""
        if self._image is None:
            raise PropagateError("no image layer: open a z-stack first")
        plane = current_plane(self._viewer, self._image)
        if not plane.fixed:
            raise PropagateError("this image is 2D (one slice): use Find all objects on this slice instead")
        if self._session.model is None:
            raise PropagateError("no model is loaded yet: wait for it (or choose one above)")
        view = StackView(image_data(self._image), plane, z_axis_of(plane))
        if view.shape[0] < 2:
            raise PropagateError(f"the stack has a single slice along {z_name(plane)}: use Find all objects on this "
                                 "slice instead")
        return view, plane, self._slice_range(view, plane)

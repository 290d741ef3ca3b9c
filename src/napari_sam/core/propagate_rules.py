"""How propagation prompts the next slice from the previous one, and when an
object has ended.

Both rules are dataclasses with documented, tunable fields; their defaults
were chosen by measurement on synthetic tuning stacks (seeds 940000+, never
used for training or for the reported evaluation): see docs/propagation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .prompts import ObjectPrompt

if TYPE_CHECKING:
    from .propagate_track import Track


@dataclass
class StepRule:
    """What the result on slice z prompts slice z +- 1 with.

    box: the bounding box of the previous mask, grown by ``box_margin`` x its
        size + 1 px on each side (objects drift and grow between slices).
    mask: the previous candidate's low-resolution logits as SAM's mask prompt.
    point: one positive point at the deepest pixel of the previous mask
        (maximum of its distance transform: the most interior location).
    multimask: ask for SAM's 3 candidates and keep the one overlapping the
        previous mask most (weighted by predicted IoU); otherwise SAM's single
        output.
    window: decode each object on a window of the embedding around its
        previous box grown by this fraction of its size on every side (plus
        ``decode_window.CONTEXT_TOKENS``), instead of the whole slice; None:
        whole slice. Makes the decoder's cost follow object size
        (``core.decode_window``).
    threshold: SAM logit above which a pixel belongs to the object (SAM: 0),
        for the prompted slices too.
    iterate: decode each slice this many more times, prompted with the deepest
        point and the logits of the slice's own first answer (as SAM is
        trained to correct itself on one image), single-mask.
    decay: a propagated mask's per-pixel score (what decides a pixel two
        objects claim, ``LabelCanvas``) is its logit minus ``decay`` x the
        slices between it and the prompted slice it came from: the nearer an
        object is to where it was prompted, the surer it is. Without it, an
        object running on past its end into the object stacked above it in z
        took that object's pixels, even on its prompted slice.
    """

    box: bool = False
    box_margin: float = 0.1
    mask: bool = True
    point: bool = True
    multimask: bool = False
    window: float | None = 0.5
    iterate: int = 0
    threshold: float = 0.0
    decay: float = 1.0

    def prompt(self, prev: "Track", shape) -> ObjectPrompt:
        pts = np.zeros((0, 2), np.float32)
        if self.point:
            pts = prev.deepest_point()[None]
        box = prev.grown_box(self.box_margin, shape) if self.box else None
        mask = prev.low_res if self.mask else None
        if not self.point and box is None and mask is None:
            raise ValueError("StepRule needs at least one of box, mask or point")
        return ObjectPrompt(points=pts, box=box, mask=mask)

    def window_box(self, prev: "Track", shape):
        return None if self.window is None else prev.grown_box(self.window, shape)


@dataclass
class StepFeatures:
    """What the stop rule sees of one object's step onto slice ``z``.

    score: SAM's predicted IoU. overlap: IoU of the new mask with the previous
    slice's. aligned: the same IoU with the two masks' centroids brought
    together; shift: how far the centroid moved, in units of the previous
    mask's equivalent radius. area / prev_area: pixels of the new and previous masks.
    peak_area: the largest area of the object so far on this track (its
    prompted slice included). kept: pixels left to the object after overlaps
    with other objects were resolved, and contrast: the object's contrast on
    this slice as a fraction of its contrast on its prompted slice, or on the clearest slice it has met so
    far (``StopRule.peak_contrast``; see ``propagate_track.contrast``); both None until overlaps are resolved.
    """

    oid: int
    z: int
    direction: str
    score: float
    overlap: float
    area: int
    prev_area: int
    peak_area: int
    kept: int | None = None
    contrast: float | None = None
    aligned: float = 0.0  # not measured: no sideways move is accepted
    shift: float = float("inf")
    covered: float = 0.0  # share of the previous mask inside the new one; not measured: no growth is accepted


@dataclass
class StopRule:
    """When outward propagation decides an object has ended (between prompted
    slices the object is known to exist, so gaps are never stopped).

    The mask on the new slice is rejected, and the object stops in that
    direction, when any of these holds:

    min_score: SAM's predicted IoU of the mask is below this.
    min_overlap: IoU between the mask and the previous slice's mask is below this,
        unless (with ``align``) the object moved sideways keeping its shape: the
        IoU with the two masks' centroids brought together is at least
        ``min_aligned`` and the centroid moved by at most ``max_shift`` times the
        previous mask's equivalent radius (an object drifting through z, e.g. in
        a tilted sample, is not taken for another one).
    max_growth: the area grew by more than this factor (bled into a neighbour
        or the background).
    min_shrink: the area fell below this fraction of the previous one.
    min_peak: the area fell below this fraction of the object's largest area
        so far (objects taper towards their ends).
    min_area: the object keeps fewer pixels than this.
    min_kept: other objects out-scored it on more than 1 - min_kept of its pixels.
    min_contrast: its contrast against its surroundings fell below this
        fraction of its contrast on the prompted slice (out of focus: what is
        left is the blur of the object, not the object).
    large_area, min_contrast_large: an object whose largest cross-section so
        far is at least ``large_area`` px is held to ``min_contrast_large``
        instead. A large object (a cell body) tapers over many slices, and its
        thinning ends fade gradually: at its last true slice its contrast is
        ~0.4 of the prompted slice's, a small nucleus's ~0.7 (medians on the
        tuning stacks); with 0.6 for all, cell bodies stopped ~2 slices early
        at both ends.
    min_covered, min_contrast_growing: an object prompted on one of its end slices grows towards its middle
        (a nucleus found or clicked where it begins: 178 px, then 372 px), so the IoU with the previous mask is
        low while the previous mask lies inside the new one. The overlap test passes when at least
        ``min_covered`` of the previous mask is inside the new, larger mask and the new slice's contrast is at
        least ``min_contrast_growing`` of the prompted slice's (growing into its own out-of-focus light past an
        end, an object gets dimmer, not clearer).
    clearest: an object prompted on several slices is held, beyond each of them, to its contrast and its
        largest area on the clearest of them (the largest contrast and area among its prompted slices), not
        the nearest one: an end slice drawn by hand (dim, small) does not lower the bar, or the object runs
        on past its end into its own out-of-focus light. False: the nearest prompted slice's.
    peak_contrast: the contrast test is against the clearest slice of the object met so far on its way out
        (its prompted slice's contrast raised as it passes clearer ones), not the prompted slice alone: an
        object prompted on one of its dim ends (found there) is otherwise held to that end's contrast at its
        other end, and runs on past it into its own out-of-focus light.

    For another rule, subclass and override :meth:`reason`.
    """

    min_score: float = 0.2
    min_overlap: float = 0.6
    max_growth: float = 3.0
    min_shrink: float = 0.0
    min_peak: float = 0.0
    min_area: int = 4
    min_kept: float = 0.2
    min_contrast: float = 0.6
    large_area: int = 700
    min_contrast_large: float = 0.4
    align: bool = True
    min_aligned: float = 0.65
    max_shift: float = 1.0
    min_covered: float = 0.85
    min_contrast_growing: float = 1.0
    clearest: bool = True
    peak_contrast: bool = True

    def reason(self, f: StepFeatures) -> str | None:
        """Why the object stops here, or None to go on. Called once before
        overlaps are resolved (``f.kept`` None) and once after."""
        if f.score < self.min_score:
            return f"predicted IoU {f.score:.2f} < {self.min_score}"
        moved = self.align and f.aligned >= self.min_aligned and f.shift <= self.max_shift
        grew = f.covered >= self.min_covered and f.area > f.prev_area and (
            f.contrast is None or f.contrast >= self.min_contrast_growing)
        if f.overlap < self.min_overlap and not moved and not grew:
            return f"overlap with previous slice {f.overlap:.2f} < {self.min_overlap}"
        ratio = f.area / max(f.prev_area, 1)
        if ratio > self.max_growth:
            return f"area grew x{ratio:.2f} > {self.max_growth}"
        if ratio < self.min_shrink:
            return f"area shrank to x{ratio:.2f} < {self.min_shrink}"
        peak = f.area / max(f.peak_area, 1)
        if peak < self.min_peak:
            return f"area fell to {peak:.2f} of its largest < {self.min_peak}"
        left = f.area if f.kept is None else f.kept
        if left < self.min_area:
            return f"area {left} px < {self.min_area}"
        if f.kept is not None and f.kept < self.min_kept * f.area:
            return f"kept {f.kept}/{f.area} px after overlaps < {self.min_kept}"
        floor = contrast_floor(self, f.peak_area)
        if f.contrast is not None and f.contrast < floor:
            of = "its clearest slice's so far" if self.peak_contrast else "the prompted slice's"
            return f"contrast fell to {f.contrast:.2f} of {of} < {floor}"
        return None


def contrast_floor(rule, area: int) -> float:
    """The contrast fraction ``rule`` (a StopRule or PresenceRule) asks of an object whose largest
    known cross-section is ``area`` px: ``min_contrast_large`` from ``large_area`` up, else ``min_contrast``."""
    return rule.min_contrast_large if area >= rule.large_area else rule.min_contrast


@dataclass
class PresenceRule:
    """Applying an object's prompts to every slice (``batch_prompts_through_z``):
    is the object on this slice at all?

    SAM answers a prompt with some mask wherever it is put, also on slices the
    object never reaches (a faint blob of out-of-focus light, a patch of
    background). With the slice the prompts were drawn on as reference, a mask
    on another slice is kept only when its contrast against its surroundings
    (``propagate_track.contrast``) is at least ``min_contrast`` of the reference slice's
    (``min_contrast_large`` for objects of ``large_area`` px or more on the
    reference slice): the floors of :class:`StopRule`, which were measured for
    the same question, where an object's blur has taken over from the object.
    Objects darker than their surroundings on the reference slice (contrast
    <= 0) are not judged. min_area: masks smaller than this are dropped.
    min_inside, grow: an object that stays put stays where it was prompted:
    at least ``min_inside`` of its mask must lie inside its mask on the
    reference slice grown by ``grow`` x that mask's equivalent radius (+ 1 px);
    otherwise SAM has found a neighbour at the prompt's place.
    contiguous: an object is one run of slices through the reference slice:
    beyond the first slice it is absent from (going up, and going down), what
    SAM finds at its place is another object (nuclei stacked in z), so those
    slices are left empty too.

    min_inside and grow were chosen on the tuning stacks (seeds 940000-940005,
    one click per object on its middle slice; docs/propagation.md), the rest
    taken from :class:`StopRule`.
    """

    min_contrast: float = StopRule.min_contrast
    large_area: int = StopRule.large_area
    min_contrast_large: float = StopRule.min_contrast_large
    min_area: int = StopRule.min_area
    contiguous: bool = True
    min_inside: float = 0.9
    grow: float = 0.5

    def reason(self, contrast_here: float, ref_contrast: float, ref_area: int, area: int,
               inside: float = 1.0) -> str | None:
        """Why the object is taken to be absent from a slice, or None to keep its mask."""
        if area < self.min_area:
            return f"area {area} px < {self.min_area}"
        if inside < self.min_inside:
            return f"{inside:.2f} of it inside the prompted slice's outline < {self.min_inside}"
        if ref_contrast <= 0:
            return None
        frac = contrast_here / ref_contrast
        floor = contrast_floor(self, ref_area)
        if frac < floor:
            return f"contrast {frac:.2f} of the prompted slice's < {floor}"
        return None

"""Every object on a slice without a click: SAM's automatic mask generation, on the slice's embedding.

As SAM's ``SamAutomaticMaskGenerator`` does: seed points over the slice, each decoded as a click (all seeds
of the slice in a few batched decoder calls on one embedding), masks kept when SAM's predicted IoU and their
stability score (``segment_anything.utils.amg.calculate_stability_score``: how little the mask changes when
its logits are thresholded at +-1) are high enough, duplicates removed. Two changes for microscopy:

* Seeds: a grid (SAM's ``build_point_grid``) at a spacing below the smallest nucleus, plus the local maxima
  of the smoothed slice, which fall near the middle of bright objects, where a click draws them best.
* Duplicates are judged by mask IoU on the label canvas, not box NMS (touching nuclei's boxes overlap), best
  first by predicted IoU x stability x how central the seed sits in its mask; a mask is painted on the pixels
  no better mask holds, and dropped if too little of it is left (``keep``).

The result is a label image (ids 1..n) that never overwrites itself: each pixel belongs to one
object. Nothing here imports napari.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import ObjectPrompt


@dataclass(frozen=True)
class AutoSettings:
    """How seeds are placed and which masks are kept.

    spacing: px between grid seeds (None: 6 px, the smallest nuclei are ~5 px across; on a CPU coarser above
    384 x 384 px, to at most ~4,096 grid points: a 1024 x 1024 slice 16 px, 82.6% of its objects found in 60 s
    against 88.9% in 138 s at 6 px, docs/find-objects.md).
    peaks: also seed at local maxima of the slice smoothed with a Gaussian of ``peak_sigma`` px.
    min_brightness: seeds only where the smoothed slice stands above its median by this fraction of its
    range (median to 99.9th percentile), and masks only if their mean does too (a seed on a bump of an
    uneven background otherwise keeps a patch of background): fluorescence, bright objects on a dark
    background. 0 seeds everywhere and keeps any mask, as SAM does (dark objects: brightfield, EM), at
    several times the cost.
    min_score: lowest SAM predicted IoU kept. min_stability: lowest stability score kept (IoU of the mask
    thresholded at +-``stability_offset`` logits). min_area / max_area: px; max_area as a fraction of the
    slice (a mask over most of the slice is background). overlap: a mask whose IoU with one already kept
    exceeds this is a duplicate. keep: a mask is dropped if less than this fraction of it is still free.
    """

    spacing: float | None = None
    peaks: bool = True
    peak_sigma: float = 2.0
    min_brightness: float = 0.05
    min_score: float = 0.5
    min_stability: float = 0.6
    stability_offset: float = 1.0
    min_area: int = 12
    max_area: float = 0.25
    overlap: float = 0.5
    keep: float = 0.6

    def check(self) -> None:
        if self.spacing is not None and not (np.isfinite(self.spacing) and self.spacing >= 1):
            raise ValueError(f"spacing={self.spacing}: give the distance between seed points in pixels, >= 1")
        for name in ("min_score", "min_stability", "overlap", "keep", "max_area"):
            v = getattr(self, name)
            if not (0 <= v <= 1):
                raise ValueError(f"{name}={v}: give a fraction between 0 and 1")


@dataclass
class Found:
    """What ``find_objects`` found on one slice.

    labels: (H, W) uint32, object k (1-based) where it was kept; ids in the order they were kept: the objects
    of the bright spots' seeds first, then those of the grid's, each round best first.
    scores: (n,) SAM's predicted IoU of object k+1. stability: (n,) its stability score.
    seeds: (n, 2) (row, col) the seed whose click drew it: a click that gives it again.
    n_seeds: how many seeds were decoded.
    """

    labels: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    seeds: np.ndarray
    n_seeds: int

    @property
    def n(self) -> int:
        return len(self.scores)

    def prompts(self, z: int) -> dict:
        """{id: {z: ObjectPrompt(mask=...)}}: each object as a drawn mask on slice ``z``, for
        ``napari_sam.propagate`` (which carries it through the stack)."""
        return {k: {int(z): ObjectPrompt(mask=self.labels == k)} for k in range(1, self.n + 1)}


def _smoothed(gray: np.ndarray, settings: AutoSettings) -> tuple[np.ndarray, float]:
    """The slice smoothed with a Gaussian of ``peak_sigma`` px, and the level seeds must exceed."""
    from scipy import ndimage as ndi

    g = ndi.gaussian_filter(gray.astype(np.float32), settings.peak_sigma)
    lo, hi = np.percentile(g, (50, 99.9))
    return g, float(lo + settings.min_brightness * (hi - lo)) if settings.min_brightness else -np.inf


def grid_seeds(gray: np.ndarray, settings: AutoSettings, cpu: bool = True, bright=None) -> np.ndarray:
    """(n, 2) float32 (row, col): SAM's ``build_point_grid`` over an (H, W) slice at ``settings.spacing``,
    where the smoothed slice is bright enough (``min_brightness``). bright: ``_smoothed(gray, settings)`` if
    the caller has it."""
    from segment_anything.utils.amg import build_point_grid

    H, W = gray.shape
    spacing = settings.spacing
    if spacing is None:
        spacing = max(6.0, float(np.sqrt(H * W / 4096))) if cpu else 6.0
    n = max(1, int(round(max(H, W) / spacing)))
    grid = build_point_grid(n)[:, ::-1] * np.array([max(H, W)] * 2) - 0.5  # (x, y) in [0, 1] -> (row, col)
    grid = grid[(grid[:, 0] < H) & (grid[:, 1] < W)].astype(np.float32)
    g, level = bright or _smoothed(gray, settings)
    r, c = np.round(grid).astype(int).T
    return grid[g[r, c] > level]


def peak_seeds(gray: np.ndarray, settings: AutoSettings, bright=None) -> np.ndarray:
    """(n, 2) float32 (row, col): local maxima of the smoothed slice above ``min_brightness``, brightest
    first (none without ``settings.peaks``). bright: as :func:`grid_seeds`."""
    from skimage.feature import peak_local_max

    if not settings.peaks:
        return np.zeros((0, 2), np.float32)
    g, level = bright or _smoothed(gray, settings)
    pk = peak_local_max(g, min_distance=2, threshold_abs=level if np.isfinite(level) else None,
                        exclude_border=False)
    return pk.astype(np.float32)


def _stability(logits: np.ndarray, offset: float, thr: float) -> float:
    import torch
    from segment_anything.utils.amg import calculate_stability_score

    if logits.size == 0:
        return 0.0
    t = torch.as_tensor(logits)[None]
    return float(calculate_stability_score(t, thr, offset)[0].nan_to_num(0.0))


def _centrality(mask: np.ndarray, r: int, c: int) -> float:
    """How deep the seed (r, c) (crop pixels) sits in its mask: its distance to the outline / the deepest's."""
    from scipy import ndimage as ndi

    if not (0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]) or not mask[r, c]:
        return 0.0
    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return float(d[r, c] / d.max())


def find_objects(predictor, settings: AutoSettings | None = None, *, existing=None, seeds=None) -> Found:
    """Every object on the predictor's current slice embedding (``SlicePredictor.set_embedding`` first);
    ``finding`` without its progress."""
    from .propagate_records import run_to_end

    return run_to_end(finding(predictor, settings, existing=existing, seeds=seeds))


def finding(predictor, settings: AutoSettings | None = None, *, existing=None, seeds=None):
    """Generator: yields (seeds decoded, seeds to decode) after each batch; returns the :class:`Found`.

    Two rounds: the smoothed slice's local maxima first, then the grid seeds that no kept mask covers (a
    grid seed inside a found nucleus would only find it again). existing: (H, W) labels already on the
    slice: no seed is decoded on them and no found object takes their pixels (a mask mostly on them is
    dropped as ``keep`` says). seeds: (n, 2) (row, col) to decode instead, in one round.
    """
    settings = settings or AutoSettings()
    settings.check()
    emb = predictor.embedding
    if emb is None:
        raise ValueError("find_objects: the predictor has no slice: embed one first (set_embedding)")
    H, W = emb.original_size
    taken = None
    if existing is not None:
        taken = np.asarray(existing) != 0
        if taken.shape != (H, W):
            raise ValueError(f"the labels given have shape {taken.shape}, the slice {(H, W)}: give the slice's "
                             "own labels")
    gray = emb.gray if emb.gray is not None else np.zeros((H, W), np.uint8)
    bright = _smoothed(gray, settings)  # once: the seeds and the masks' brightness test share it
    if seeds is None:
        cpu = str(getattr(predictor.model, "device", "cpu")).startswith("cpu")
        rounds = [peak_seeds(gray, settings, bright), grid_seeds(gray, settings, cpu, bright)]
    else:
        rounds = [np.asarray(seeds, np.float32).reshape(-1, 2)]
    canvas = _Canvas(H, W, settings, taken)
    total = sum(len(r) for r in rounds)
    done = 0
    for pts in rounds:
        r, c = np.clip(np.round(pts).astype(int), 0, (H - 1, W - 1)).T
        free = canvas.free[r, c]
        total -= int((~free).sum())
        pts = pts[free]
        for s in range(0, len(pts), 512):
            part = pts[s : s + 512]
            canvas.offer(_candidates(predictor, part, settings, bright))
            done += len(part)
            yield done, total
        canvas.commit()
    return canvas.found(done)


def _candidates(predictor, pts: np.ndarray, settings: AutoSettings, bright=None) -> list:
    """Each seed decoded as a click -> [(key, score, stability, seed, Decoded)] of the masks worth keeping.

    bright: (smoothed slice, level) from ``_smoothed``: a mask whose mean there is not above the level is
    background."""
    from .batch_decode import decode_objects
    from .sam2_model import mask_threshold

    H, W = predictor.embedding.original_size
    thr = float(mask_threshold(predictor.sam))
    out = []
    dec = decode_objects(predictor, [ObjectPrompt(points=p[None]) for p in pts], multimask=True, threshold=thr)
    for p, d in zip(pts, dec):
        area = d.area
        if area < settings.min_area or area > settings.max_area * H * W or d.score < settings.min_score:
            continue
        if bright is not None and np.isfinite(bright[1]):
            h, w = d.mask.shape
            if bright[0][d.r0 : d.r0 + h, d.c0 : d.c0 + w][d.mask].mean() <= bright[1]:
                continue
        st = _stability(d.logits, settings.stability_offset, thr)
        if st < settings.min_stability:
            continue
        r, c = np.round(p).astype(int) - (d.r0, d.c0)
        out.append((d.score * st * (0.5 + 0.5 * _centrality(d.mask, r, c)), d.score, st, p, d))
    return out


class _Canvas:
    """The label image being built: candidates offered, then kept best first where they are not duplicates."""

    def __init__(self, H: int, W: int, settings: AutoSettings, taken=None):
        self.labels = np.zeros((H, W), np.uint32)
        self.taken = np.zeros((H, W), bool) if taken is None else taken
        self.settings = settings
        self.areas = [0]
        self.kept = []
        self.pending = []

    def offer(self, cands: list) -> None:
        self.pending += cands

    def commit(self) -> None:
        s = self.settings
        for key, score, st, seed, d in sorted(self.pending, key=lambda t: -t[0]):
            h, w = d.mask.shape
            view = self.labels[d.r0 : d.r0 + h, d.c0 : d.c0 + w]
            hit = np.bincount(view[d.mask], minlength=len(self.areas))[1:]
            if hit.any() and (hit / (d.area + np.asarray(self.areas[1:]) - hit)).max() > s.overlap:
                continue
            free = d.mask & (view == 0) & ~self.taken[d.r0 : d.r0 + h, d.c0 : d.c0 + w]
            n = int(free.sum())
            if n < s.keep * d.area or n < s.min_area:
                continue
            view[free] = len(self.areas)
            self.areas.append(n)
            self.kept.append((score, st, seed))
        self.pending = []

    @property
    def free(self) -> np.ndarray:
        """(H, W) bool: pixels no kept mask and no existing label holds."""
        return (self.labels == 0) & ~self.taken

    def found(self, n_seeds: int) -> Found:
        if not self.kept:
            z = np.zeros(0, np.float32)
            return Found(self.labels, z, z, np.zeros((0, 2), np.float32), n_seeds)
        sc, st, sd = zip(*self.kept)
        return Found(self.labels, np.array(sc, np.float32), np.array(st, np.float32), np.array(sd, np.float32),
                     n_seeds)

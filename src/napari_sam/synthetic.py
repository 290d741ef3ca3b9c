"""Seeded synthetic fluorescence microscopy with instance ground truth.

Pure numpy/scipy (no torch, no napari). One generator serves training of the
embedded model, the tests, napari's sample data and the demo.

What it draws, per stack (z, y, x):

* objects are 3D ellipsoids with irregular, non-convex outlines (angular
  harmonics that change slowly through z), a centre that drifts and a
  cross-section that grows and shrinks, so each object begins and ends within
  the stack;
* ``kind="nuclei"``: bright nuclei with chromatin texture, bright foci and dark
  nucleoli; ``kind="cells"``: larger, dimmer cell bodies with a darker nucleus
  inside (a click there is genuinely ambiguous); touching and clustered objects
  are common, radii span ``radius_range`` (default 5 to 60 px);
* brightness varies per object and within it; the image is blurred by an
  anisotropic Gaussian PSF (stronger in z), placed on an uneven background and
  corrupted by Poisson (shot) and Gaussian (read) noise, then quantised to
  8-bit or 16-bit.

Ground truth is geometric: a voxel belongs to the object whose (normalised)
outline contains it most deeply, so touching objects share a clean border.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SyntheticStack", "make_stack", "make_image", "interior_point", "drift_sideways"]


@dataclass
class SyntheticStack:
    """A synthetic image with its instance labels.

    image: (z, y, x) or (y, x), uint8 or uint16.
    labels: same spatial shape, uint16, 0 = background, 1..n = objects.
    voxel_size: (dz, dy, dx) in micrometres (dz > dx: anisotropic).
    """

    image: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[float, float, float]
    meta: dict = field(default_factory=dict)


@dataclass
class _Obj:
    c: np.ndarray  # (z, y, x) centre
    rz: float
    ra: float
    rb: float
    angle: float
    drift: np.ndarray  # (dy, dx) per slice
    twist: float
    harm_amp: np.ndarray  # (K,)
    harm_phase: np.ndarray  # (K,)
    harm_slope: np.ndarray  # (K,) change of amplitude per unit of normalised z
    brightness: float
    texture_amp: float


def _sample_objects(rng, shape, kind, radius_range, density):
    nz, ny, nx = shape
    lo, hi = radius_range
    if kind == "cells":
        lo, hi = max(lo, 18.0), max(hi, 30.0)
    # a per-image size regime, with spread around it
    mean_r = float(np.exp(rng.uniform(np.log(lo * 1.15), np.log(hi * 0.8))))
    aniso = rng.uniform(2.0, 4.0)
    area = ny * nx
    n_target = density * area / (np.pi * mean_r**2)
    if nz > 1:  # objects live in a z range: fill the depth of the stack too
        n_target *= max(1.0, nz / (2.2 * max(mean_r / aniso, 1.2)))
    n_target = int(np.clip(n_target, 1, 600))
    objs: list[_Obj] = []
    tries = 0
    while len(objs) < n_target and tries < n_target * 30:
        tries += 1
        r = float(np.clip(mean_r * np.exp(rng.normal(0, 0.25)), lo, hi))
        ecc = rng.uniform(0.6, 1.0)
        ra, rb = r / np.sqrt(ecc), r * np.sqrt(ecc)
        rz = max(1.2, r * rng.uniform(0.7, 1.2) / aniso)
        rz = min(rz, max(1.2, (nz - 2) / 2.2))
        if nz > 1:
            zlo, zhi = rz * 0.9, nz - 1 - rz * 0.9
            cz = rng.uniform(zlo, zhi) if zhi > zlo else (nz - 1) / 2
        else:
            cz = 0.0
        if objs and rng.random() < 0.55:  # cluster: touch an existing object
            other = objs[rng.integers(len(objs))]
            d = (r + 0.5 * (other.ra + other.rb)) * rng.uniform(0.78, 1.0)
            phi = rng.uniform(0, 2 * np.pi)
            cy, cx = other.c[1] + d * np.sin(phi), other.c[2] + d * np.cos(phi)
            cz = float(np.clip(other.c[0] + rng.normal(0, max(other.rz, 1) * 0.4), 0, max(nz - 1, 0)))
        else:
            cy, cx = rng.uniform(-0.1 * r, ny + 0.1 * r), rng.uniform(-0.1 * r, nx + 0.1 * r)
        c = np.array([cz, cy, cx])
        ok = True
        for o in objs:
            dz = abs(o.c[0] - cz) / max(o.rz + rz, 1e-6)
            if dz > 1:
                continue
            dxy = np.hypot(o.c[1] - cy, o.c[2] - cx)
            if dxy < 0.72 * (r + 0.5 * (o.ra + o.rb)):
                ok = False
                break
        if not ok:
            continue
        k = np.arange(2, 7)
        irregular = rng.uniform(0.02, 0.10 if kind == "nuclei" else 0.16)
        objs.append(
            _Obj(
                c=c,
                rz=rz,
                ra=ra,
                rb=rb,
                angle=rng.uniform(0, np.pi),
                drift=rng.normal(0, 0.35 * r / max(rz, 1) * 0.25, size=2),
                twist=rng.normal(0, 0.08),
                harm_amp=irregular * rng.uniform(0.3, 1.0, size=k.size) / k**0.7,
                harm_phase=rng.uniform(0, 2 * np.pi, size=k.size),
                harm_slope=rng.normal(0, 0.04, size=k.size),
                brightness=float(np.exp(rng.normal(0, 0.35))),
                texture_amp=rng.uniform(0.08, 0.35),
            )
        )
    return objs, aniso


def _rasterise(objs, shape):
    """Per-voxel owner id and normalised depth d (0 centre, 1 outline)."""
    nz, ny, nx = shape
    labels = np.zeros(shape, np.uint16)
    best = np.ones(shape, np.float32)
    k = np.arange(2, 7)
    for i, o in enumerate(objs, start=1):
        z0, z1 = int(np.floor(o.c[0] - o.rz)), int(np.ceil(o.c[0] + o.rz)) + 1
        for z in range(max(z0, 0), min(z1, nz)):
            tz = (z - o.c[0]) / o.rz if nz > 1 else 0.0
            s2 = 1.0 - tz * tz
            if s2 <= 0.02:
                continue
            s = np.sqrt(s2)
            cy = o.c[1] + o.drift[0] * (z - o.c[0])
            cx = o.c[2] + o.drift[1] * (z - o.c[0])
            rmax = max(o.ra, o.rb) * s * (1 + o.harm_amp.sum() + 0.2) + 2
            y0, y1 = max(int(cy - rmax), 0), min(int(cy + rmax) + 2, ny)
            x0, x1 = max(int(cx - rmax), 0), min(int(cx + rmax) + 2, nx)
            if y1 <= y0 or x1 <= x0:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dy, dx = yy - cy, xx - cx
            ang = o.angle + o.twist * tz
            u = dx * np.cos(ang) + dy * np.sin(ang)
            v = -dx * np.sin(ang) + dy * np.cos(ang)
            phi = np.arctan2(v, u)
            amp = np.clip(o.harm_amp + o.harm_slope * tz, 0, None)
            wobble = 1.0 + np.tensordot(amp, np.cos(k[:, None, None] * phi[None] + o.harm_phase[:, None, None]), 1)
            d = np.sqrt((u / o.ra) ** 2 + (v / o.rb) ** 2) / (wobble * s)
            sub_best = best[z, y0:y1, x0:x1]
            win = d < sub_best
            sub_best[win] = d[win]
            labels[z, y0:y1, x0:x1][win] = i
    return labels, best


def _relabel_sequential(labels):
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1, np.uint16)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint16)
    return lut[labels]


def make_stack(
    shape: tuple[int, int, int] = (32, 256, 256),
    *,
    seed: int = 0,
    kind: str = "nuclei",
    radius_range: tuple[float, float] = (5.0, 60.0),
    density: float | None = None,
    dtype: str = "uint16",
    snr: float | None = None,
    bright_fraction: float = 0.0,
    dome: float = 0.0,
    brightness_spread: float = 0.0,
) -> SyntheticStack:
    """A synthetic fluorescence z-stack with instance labels.

    shape: (z, y, x). kind: "nuclei" or "cells". radius_range: in-plane object
    radii in pixels. density: fraction of the plane covered (default random
    0.15-0.45). dtype: "uint8" or "uint16". snr: peak photon count scale
    (default random; lower is noisier). Same seed, same stack.

    Options for more variety (all off by default, and then the stack is the
    same as without them): bright_fraction: share of nuclei 2.5-4.5x brighter
    than the rest (mitotic or apoptotic nuclei, which set the top of the
    intensity range); dome: nuclei get a domed profile, brighter in the middle
    like a widefield image of a thick nucleus, with a per-stack weight up to
    this (0-1); brightness_spread: extra log-normal spread of the brightness
    between objects (sigma; the base spread is 0.35).
    """
    if kind not in ("nuclei", "cells"):
        raise ValueError(f"kind must be 'nuclei' or 'cells', not {kind!r}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be 'uint8' or 'uint16', not {dtype!r}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    nz, ny, nx = shape
    if density is None:
        density = rng.uniform(0.15, 0.45)
    objs, aniso = _sample_objects(rng, shape, kind, radius_range, density)
    labels, depth = _rasterise(objs, shape)
    # the variety options draw from their own stream, so the stack is unchanged when they are off
    vrng = np.random.default_rng([seed, 1])
    for o in objs:
        if brightness_spread > 0:
            o.brightness *= float(np.exp(vrng.normal(0, brightness_spread)))
        if kind == "nuclei" and vrng.random() < bright_fraction:
            o.brightness *= vrng.uniform(2.5, 4.5)
    dome_w = vrng.uniform(0, dome) if kind == "nuclei" and dome > 0 else 0.0

    # --- fluorophore density -------------------------------------------------
    fg = np.zeros(shape, np.float32)
    tex_sigma = rng.uniform(0.8, 2.0)
    noise = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0.7, tex_sigma, tex_sigma))
    noise /= noise.std() + 1e-6
    fine = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0.5, 0.8, 0.8))
    fine /= fine.std() + 1e-6
    bright = np.array([0.0] + [o.brightness for o in objs], np.float32)
    tamp = np.array([0.0] + [o.texture_amp for o in objs], np.float32)
    inside = labels > 0
    b = bright[labels]
    d = np.where(inside, depth, 1.0)
    if kind == "nuclei":
        profile = 1.0 - 0.25 * d**6  # slightly dimmer rim
        if dome_w > 0:
            profile = (1 - dome_w) * profile + dome_w * (0.3 + 0.7 * np.sqrt(np.clip(1 - d * d, 0, None)))
        tex = 1.0 + tamp[labels] * noise + 0.5 * tamp[labels] * np.clip(fine - 1.8, 0, None) * 3
        # dark nucleoli: a few spots per object where the texture dips
        tex = np.where(noise < -1.9, tex * 0.55, tex)
        fg = np.where(inside, b * profile * np.clip(tex, 0.15, None), 0).astype(np.float32)
    else:
        profile = 0.8 + 0.2 * (1 - d**2)
        tex = 1.0 + 0.6 * tamp[labels] * noise
        nuc = d < rng.uniform(0.35, 0.55)
        fg = np.where(inside, b * profile * np.clip(tex, 0.2, None), 0).astype(np.float32)
        fg = np.where(nuc, fg * rng.uniform(0.35, 0.7), fg).astype(np.float32)

    # --- optics: anisotropic PSF, stronger in z ------------------------------
    s_xy = rng.uniform(0.7, 1.8)
    s_z = rng.uniform(0.8, 2.2) if nz > 1 else 0.0
    img = ndi.gaussian_filter(fg, (s_z, s_xy, s_xy), mode="nearest")
    # out-of-focus haze: a wide, weak copy of the signal
    haze = rng.uniform(0.05, 0.3)
    img += haze * ndi.gaussian_filter(fg, (2 * s_z + 1e-3, 6 * s_xy, 6 * s_xy), mode="nearest")

    # --- uneven background -----------------------------------------------------
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    gy, gx = rng.normal(0, 0.15, 2)
    bg = 0.08 + gy * (yy / ny - 0.5) + gx * (xx / nx - 0.5)
    for _ in range(rng.integers(1, 4)):
        by, bx = rng.uniform(0, ny), rng.uniform(0, nx)
        w = rng.uniform(0.3, 0.8) * max(ny, nx)
        bg = bg + rng.uniform(0.0, 0.12) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * w * w))
    bg = np.clip(bg, 0.01, None) * rng.uniform(0.3, 1.5)
    img = img + bg[None]

    # --- camera: shot + read noise, quantisation -------------------------------
    peak = snr if snr is not None else float(np.exp(rng.uniform(np.log(25), np.log(1500))))
    photons = rng.poisson(np.clip(img, 0, None) * peak).astype(np.float32)
    read = rng.uniform(0.5, 4.0)
    counts = photons + rng.normal(0, read, shape).astype(np.float32)
    if dtype == "uint16":
        offset = float(rng.choice([0.0, 100.0, 400.0]))
        gain = rng.uniform(0.8, 3.0)
        out = np.clip(counts * gain + offset, 0, 65535).astype(np.uint16)
    else:
        hi_val = np.percentile(counts, 99.9) + 1e-6
        scale = rng.uniform(160, 250) / hi_val
        out = np.clip(counts * scale + rng.uniform(0, 10), 0, 255).astype(np.uint8)

    labels = _relabel_sequential(labels)
    dxy = rng.uniform(0.1, 0.4)
    meta = dict(seed=seed, kind=kind, n_objects=int(labels.max()), psf_sigma=(s_z, s_xy, s_xy), peak_photons=peak)
    return SyntheticStack(out, labels, (float(dxy * aniso), float(dxy), float(dxy)), meta)


def make_image(
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int = 0,
    kind: str = "nuclei",
    radius_range: tuple[float, float] = (5.0, 60.0),
    density: float | None = None,
    dtype: str = "uint16",
    snr: float | None = None,
    **variety,
) -> SyntheticStack:
    """A 2D synthetic image: the focal plane of a thin stack, so neighbours
    above and below the plane contribute out-of-focus light, as in a widefield
    image. Returns image and labels of ``shape`` (y, x). ``variety``: the
    variety options of :func:`make_stack`."""
    nz = 9
    st = make_stack((nz, *shape), seed=seed, kind=kind, radius_range=radius_range, density=density, dtype=dtype, snr=snr,
                    **variety)
    z = nz // 2
    labels = _relabel_sequential(st.labels[z])
    return SyntheticStack(st.image[z].copy(), labels, st.voxel_size, st.meta | {"n_objects": int(labels.max())})


def interior_point(mask: np.ndarray, rng: np.random.Generator | None = None, depth: float = 0.5) -> np.ndarray:
    """A point well inside ``mask`` (2D bool): (row, col) float.

    Without ``rng``: the deepest pixel (maximum of the distance transform).
    With ``rng``: a random pixel whose distance to the outline is at least
    ``depth`` times the maximum, i.e. an interior location, not a border one.
    """
    dist = ndi.distance_transform_edt(mask)
    if rng is None:
        return np.array(np.unravel_index(int(np.argmax(dist)), mask.shape), float)
    cand = np.argwhere(dist >= depth * dist.max())
    return cand[rng.integers(len(cand))].astype(float)


def drift_sideways(stack: np.ndarray, px_per_slice: float) -> np.ndarray:
    """(z, y, x) ``stack`` with its content drifting sideways through z, as in a tilted sample:
    slice z moved by round(px_per_slice * (z - nz // 2)) px down and right, edge pixels repeated.
    Apply it to an image and its labels alike."""
    out, n = np.empty_like(stack), stack.shape[0]
    for z in range(n):
        s = int(round(px_per_slice * (z - n // 2)))
        p = abs(s) + 1
        out[z] = np.pad(stack[z], p, mode="edge")[p - s : p - s + stack.shape[1], p - s : p - s + stack.shape[2]]
    return out

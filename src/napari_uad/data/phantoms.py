"""Synthetic skull-stripped T1-like brain phantoms with synthetic lesions.

Used by the tests, by the first tiny models and by the benchmarks: every function is seeded
(an ``int`` or a ``numpy.random.Generator``), so the same seed always gives the same subject.

Arrays follow the package's RAS+ convention: axis 0 runs left to right, axis 1 posterior to
anterior, axis 2 (3-D only) inferior to superior, so ``volume[:, :, k]`` is an axial slice and a
2-D phantom is one axial slice. Voxels are isotropic; sizes are given in voxels.

Intensities imitate a skull-stripped T1 scan scaled to [0, 1] on a zero background: white
matter ~0.8, cortical and deep grey matter ~0.5 and ~0.65, cerebrospinal fluid (ventricles and
sulci) ~0.15, with a smooth bias field and mild noise inside the brain.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["add_lesions", "make_brain", "make_dataset", "LESION_KINDS"]

LESION_KINDS = ("tumour", "ms", "bright", "stroke")

_SUPERSAMPLE = 2


def _rng(seed):
    return np.random.default_rng(seed)


def _smooth_field(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    std = field.std()
    return field / std if std > 0 else field


def _wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _ellipse(u, v, centre, semi, angle):
    du, dv = u - centre[0], v - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    p = (du * c + dv * s) / semi[0]
    q = (-du * s + dv * c) / semi[1]
    return p * p + q * q < 1.0


def _draw_subject(rng, nx, ny):
    side = min(nx, ny)
    b = side * rng.uniform(0.4, 0.45)
    p = {
        "b": b,
        "a": b * rng.uniform(0.78, 0.88),
        "cx": (nx - 1) / 2 + rng.uniform(-0.03, 0.03) * nx,
        "cy": (ny - 1) / 2 + rng.uniform(-0.03, 0.03) * ny,
        "phi": rng.uniform(-0.2, 0.2),
        "egg": rng.uniform(0.03, 0.1),
        "wobble": [
            (k, rng.normal(0, 1.0 / k), rng.uniform(0, 2 * np.pi), rng.normal(0, 1.0))
            for k in range(2, 8)
        ],
        "thickness": max(1.5, b * rng.uniform(0.045, 0.06)),
        "fissure": (rng.uniform(0.3, 0.45), rng.uniform(0.25, 0.4), rng.uniform(-0.4, 0.4)),
        "ventricle_size": rng.uniform(0.8, 1.6),
        "ventricle_z": rng.uniform(0.35, 0.5),
        "intensity": {
            "csf": rng.uniform(0.1, 0.2),
            "gm": rng.uniform(0.45, 0.55),
            "deep": rng.uniform(0.62, 0.7),
            "wm": rng.uniform(0.76, 0.84),
        },
        "noise": rng.uniform(0.01, 0.025),
        "bias": rng.uniform(-0.06, 0.06, size=5),
    }
    perimeter = np.pi * (b + p["a"])
    n_sulci = int(np.clip(perimeter / rng.uniform(8.0, 11.0), 12, 60))
    angles = np.linspace(-np.pi, np.pi, n_sulci, endpoint=False) + rng.uniform(0, 2 * np.pi)
    angles = _wrap(angles + rng.uniform(-0.12, 0.12, n_sulci))
    angles = angles[np.abs(np.abs(angles) - np.pi / 2) > 0.25]
    p["sulci"] = [
        {
            "angle": angle,
            "depth": rng.uniform(0.1, 0.3),
            "width": rng.uniform(0.7, 1.1),
            "curl": rng.uniform(-0.6, 0.6),
            "wiggle": (rng.uniform(-0.06, 0.06), rng.uniform(15, 35), rng.uniform(0, 2 * np.pi)),
            "drift": rng.normal(0, 0.4),
            "wave": (rng.uniform(1, 3), rng.uniform(0, 2 * np.pi)),
        }
        for angle in angles
    ]
    a = p["a"]
    p["ventricles"] = {
        "dx": a * rng.uniform(0.1, 0.15),
        "septum": rng.uniform(0.4, 0.8),
        "dy": b * rng.uniform(-0.08, 0.04),
        "wx": a * rng.uniform(0.06, 0.09),
        "wy": b * rng.uniform(0.28, 0.38),
        "tilt": rng.uniform(0.08, 0.22),
        "bend": rng.uniform(0.4, 1.4),
    }
    return p


def _labels(p, x, y, z_rel):
    """Tissue fractions on the supersampled grid: envelope, CSF, GM, deep GM and WM masks."""
    a, b = p["a"], p["b"]
    cos_phi, sin_phi = np.cos(p["phi"]), np.sin(p["phi"])
    dx, dy = x - p["cx"], y - p["cy"]
    u = dx * cos_phi + dy * sin_phi
    v = -dx * sin_phi + dy * cos_phi
    scale = np.sqrt(np.clip(1.0 - z_rel**2, 0.02, 1.0))
    b_z = b * scale
    a_z = a * scale * (1.0 - p["egg"] * np.clip(v / b_z, -1, 1))
    pu, pv = u / a_z, v / b_z
    rho = np.sqrt(pu * pu + pv * pv)
    theta = np.arctan2(pv, pu)

    wobble = sum(
        amp * np.cos(k * theta + phase + drift * z_rel) for k, amp, phase, drift in p["wobble"]
    )
    envelope = rho < 1.0 + 0.02 * wobble

    arc = np.sqrt((a_z * np.sin(theta)) ** 2 + (b_z * np.cos(theta)) ** 2)
    sulci = np.zeros(envelope.shape, dtype=bool)
    for sulcus in p["sulci"]:
        freq, phase = sulcus["wave"]
        depth = sulcus["depth"] * (1.0 + 0.3 * np.sin(freq * np.pi * z_rel + phase))
        amp, freq_r, phase_r = sulcus["wiggle"]
        centre = (
            sulcus["angle"]
            + sulcus["drift"] * z_rel
            + sulcus["curl"] * (1.0 - rho)
            + amp * np.sin(freq_r * rho + phase_r)
        )
        distance = np.abs(_wrap(theta - centre)) * rho * arc
        inner = 1.0 - depth
        taper = 0.5 + 0.5 * np.clip((rho - inner) / depth, 0, 1)
        sulci |= (distance < 0.5 * sulcus["width"] * taper) & (rho > inner)

    front, back, curve = p["fissure"]
    midline = np.abs(u + curve * v * v / b) < 0.45
    sulci |= midline & ((pv > 1.0 - front) | (pv < -(1.0 - back)))
    sulci &= envelope

    vp = p["ventricles"]
    v_scale = np.sqrt(np.clip(1.0 - (z_rel / p["ventricle_z"]) ** 2, 0.0, 1.0))
    wx = vp["wx"] * p["ventricle_size"] * v_scale
    wy = vp["wy"] * np.sqrt(v_scale)
    ventricles = np.zeros(envelope.shape, dtype=bool)
    deep = np.zeros(envelope.shape, dtype=bool)
    d_scale = np.sqrt(np.clip(1.0 - (z_rel / 0.3) ** 2, 0.0, 1.0))
    for side in (-1.0, 1.0):
        pu_v = u - side * vp["dx"]
        pv_v = v - vp["dy"]
        c, s = np.cos(vp["tilt"]), np.sin(vp["tilt"])
        across = pu_v * c + side * pv_v * s
        along = -side * pu_v * s + pv_v * c
        along_n = along / np.maximum(wy, 1e-6)
        across_n = (across - side * vp["bend"] * wx * along_n**2) / np.maximum(wx, 1e-6)
        inside = (across_n**2 + along_n**2 < 1.0) & (side * u > vp["septum"])
        ventricles |= inside & (v_scale > 0.05)
        tilt = side * vp["tilt"]
        outer = vp["dx"] + vp["wx"] * p["ventricle_size"] * 1.4 + 0.06 * a
        deep |= _ellipse(
            u,
            v,
            (side * outer, vp["dy"] + 0.3 * vp["wy"]),
            (0.07 * a * d_scale + 1e-6, 0.11 * b * d_scale + 1e-6),
            -tilt,
        )
        deep |= _ellipse(
            u,
            v,
            (side * 0.42 * a, vp["dy"] + 0.05 * b),
            (0.08 * a * d_scale + 1e-6, 0.19 * b * d_scale + 1e-6),
            tilt,
        )
        deep |= _ellipse(
            u,
            v,
            (side * 0.13 * a, vp["dy"] - 0.22 * b),
            (0.1 * a * d_scale + 1e-6, 0.13 * b * d_scale + 1e-6),
            0.0,
        )
    deep &= d_scale > 0.05
    ventricles &= envelope & (rho < 0.8)
    csf = (sulci | ventricles) & envelope
    return envelope, sulci, csf, deep & envelope & ~csf


def make_brain(shape=(64, 64), *, seed=0, level=None):
    """Draw a synthetic skull-stripped T1-like brain.

    Parameters
    ----------
    shape : (X, Y) or (X, Y, Z) tuple of int
        A 2-D shape gives one axial slice at the level of the lateral ventricles; a 3-D shape
        gives a volume whose axial slices (last axis) change smoothly, the brain shrinking
        towards both ends (every slice still holds some brain).
    seed : int or numpy.random.Generator
        Brain size, shape, rotation, folding, ventricle size, contrast, bias and noise are all
        drawn from it.
    level : float, optional
        2-D only: axial position relative to the brain centre in [-0.9, 0.9] (0 = ventricle
        level, about +-0.5 = above or below the ventricles). Drawn near 0 by default.

    Returns
    -------
    image : ndarray of float32, shape ``shape``
        Intensities in [0, 1], exactly 0 outside the brain.
    brain_mask : ndarray of bool, shape ``shape``
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (X, Y) or (X, Y, Z), got {shape}")
    if min(shape[:2]) < 16 or min(shape) < 1:
        raise ValueError(f"shape {shape} is too small: use at least 16 voxels in-plane")
    rng = _rng(seed)
    nx, ny = shape[:2]
    p = _draw_subject(rng, nx, ny)
    if len(shape) == 2:
        if level is None:
            level = rng.uniform(-0.12, 0.12)
        if not -0.9 <= level <= 0.9:
            raise ValueError(f"level must be in [-0.9, 0.9], got {level}")
        z_rel = np.array([float(level)])
    else:
        if level is not None:
            raise ValueError("level applies to 2-D shapes only: omit it for a volume")
        nz = shape[2]
        half_height = max(p["b"] * rng.uniform(0.75, 0.85), 0.6 * nz)
        centre = (nz - 1) / 2 + rng.uniform(-0.04, 0.04) * nz
        z_rel = (np.arange(nz) - centre) / half_height
    nz = z_rel.size

    f = _SUPERSAMPLE
    x = ((np.arange(nx * f) + 0.5) / f - 0.5)[:, None, None]
    y = ((np.arange(ny * f) + 0.5) / f - 0.5)[None, :, None]
    envelope, sulci, csf, deep = _labels(p, x, y, z_rel[None, None, :])

    outside = ~envelope | sulci
    depth = np.empty(envelope.shape, dtype=np.float32)
    for k in range(nz):
        depth[:, :, k] = ndimage.distance_transform_edt(~outside[:, :, k]) / f
    fine_shape = envelope.shape
    thickness = p["thickness"] * (1.0 + 0.25 * _smooth_field(rng, fine_shape, (6 * f, 6 * f, 3)))
    parenchyma = envelope & ~csf
    grey = parenchyma & (depth < thickness)
    tissue = p["intensity"]
    deep = ndimage.gaussian_filter(deep.astype(np.float32), (1.2 * f, 1.2 * f, 0))
    fine = np.where(parenchyma, tissue["wm"] + deep * (tissue["deep"] - tissue["wm"]), 0.0)
    fine = fine.astype(np.float32)
    fine[grey] = tissue["gm"]
    fine[csf] = tissue["csf"]

    image = fine.reshape(nx, f, ny, f, nz).mean(axis=(1, 3))
    mask = envelope.reshape(nx, f, ny, f, nz).mean(axis=(1, 3)) >= 0.5

    coarse = (nx, ny, nz)
    image *= 1.0 + 0.03 * _smooth_field(rng, coarse, (3, 3, 2))
    xn = np.linspace(-1, 1, nx)[:, None, None]
    yn = np.linspace(-1, 1, ny)[None, :, None]
    zn = np.clip(z_rel, -1, 1)[None, None, :]
    c = p["bias"]
    image *= 1.0 + c[0] * xn + c[1] * yn + c[2] * zn + c[3] * (xn**2 + yn**2) + c[4] * xn * yn
    image += p["noise"] * rng.standard_normal(coarse)
    image = np.clip(image, 0.0, 1.0)
    image[~mask] = 0.0
    image = image.astype(np.float32)
    if len(shape) == 2:
        return image[:, :, 0], mask[:, :, 0]
    return image, mask


def _tissue_means(image, mask):
    """CSF, grey and white matter intensities by 1-D k-means inside the mask."""
    values = image[mask].astype(np.float64)
    if values.size > 200_000:
        values = values[:: values.size // 200_000 + 1]
    centres = np.percentile(values, [5, 50, 95])
    for _ in range(20):
        nearest = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        updated = np.array(
            [values[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(3)]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    csf, gm, wm = np.sort(centres)
    return {"csf": csf, "gm": gm, "wm": wm}


def _masked_smooth(image, mask, sigma):
    weights = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    smooth = ndimage.gaussian_filter(np.where(mask, image, 0.0), sigma)
    return np.where(weights > 1e-3, smooth / np.maximum(weights, 1e-3), 0.0)


def _box(centre, half, shape):
    return tuple(
        slice(max(0, int(np.floor(c - h)) - 1), min(n, int(np.ceil(c + h)) + 2))
        for c, h, n in zip(centre, half, shape, strict=True)
    )


def _coords(box, centre):
    grids = np.ogrid[tuple(box)]
    return [g - c for g, c in zip(grids, centre, strict=True)]


def _soft(margin):
    return np.clip(margin + 0.5, 0.0, 1.0)


def _pick(rng, candidates, fallback):
    index = np.flatnonzero(candidates)
    if index.size == 0:
        index = np.flatnonzero(fallback)
    if index.size == 0:
        raise ValueError("no room for a lesion inside the brain mask: pass a larger brain mask")
    flat = index[rng.integers(index.size)]
    voxel = np.array(np.unravel_index(flat, candidates.shape), dtype=np.float64)
    return voxel + rng.uniform(-0.2, 0.2, size=voxel.size)


def _rotated(offsets, angle):
    c, s = np.cos(angle), np.sin(angle)
    first = offsets[0] * c + offsets[1] * s
    second = -offsets[0] * s + offsets[1] * c
    return [first, second, *offsets[2:]]


def _blob(rng, offsets, radii, roughness):
    scaled = [o / r for o, r in zip(_rotated(offsets, rng.uniform(0, np.pi)), radii, strict=True)]
    rho = np.sqrt(sum(s * s for s in scaled))
    shape = np.broadcast_shapes(*(o.shape for o in offsets))
    if roughness > 0 and min(shape) > 2:
        sigma = max(1.0, min(radii) / 2.5)
        rho = rho * (1.0 + roughness * np.clip(_smooth_field(rng, shape, sigma), -2, 2))
    return rho


def _tumour(rng, ctx, centre, size):
    radius = 0.5 * size
    oedema = rng.uniform(0.25, 0.5)
    radii = radius * rng.uniform(0.8, 1.2, size=ctx["ndim"])
    reach = np.r_[[radii[:2].max()] * 2, radii[2:]]
    half = reach * (1.0 + oedema) / 0.7 + 1
    box = _box(centre, half, ctx["shape"])
    rho = _blob(rng, _coords(box, centre), radii, 0.15)
    unit = 1.0 / radius
    t = ctx["tissue"]
    texture = 1.0 + 0.07 * _smooth_field(rng, rho.shape, max(1.0, radius / 4))
    target = t["wm"] * rng.uniform(1.12, 1.28) * texture
    core = _soft((1.0 - rho) / unit)
    if rng.random() < 0.6:
        dark = t["csf"] + rng.uniform(0.2, 0.5) * (t["gm"] - t["csf"])
        necrosis = _soft((rng.uniform(0.3, 0.55) - rho) / unit)
        target = (1 - necrosis) * target + necrosis * dark
    swelling = _soft((1.0 + oedema - rho) / unit) * rng.uniform(0.07, 0.12) * t["wm"]
    return box, core, target, (1 - core) * swelling, rho < 1.0 + oedema


def _ovoid(rng, ctx, centre, size, elongation):
    radius = 0.5 * size
    radii = (
        radius
        * np.r_[
            rng.uniform(*elongation),
            rng.uniform(0.6, 1.0),
            rng.uniform(0.6, 1.0, size=ctx["ndim"] - 2),
        ]
    )
    reach = np.r_[[radii[:2].max()] * 2, radii[2:]]
    box = _box(centre, reach + 1, ctx["shape"])
    rho = _blob(rng, _coords(box, centre), radii, 0.0)
    return box, radius, rho


def _bright(rng, ctx, centre, size):
    box, radius, rho = _ovoid(rng, ctx, centre, size, (1.0, 1.5))
    t = ctx["tissue"]
    alpha = _soft((1.0 - rho) * radius)
    target = t["wm"] * rng.uniform(1.15, 1.3)
    return box, alpha, target, 0.0, rho < 1.0


def _ms(rng, ctx, centre, size):
    """A T1-hypointense ovoid plaque: from halfway to grey matter down to below grey matter."""
    box, radius, rho = _ovoid(rng, ctx, centre, size, (1.0, 1.8))
    t = ctx["tissue"]
    alpha = _soft((1.0 - rho) * radius)
    target = t["wm"] - rng.uniform(0.5, 1.3) * (t["wm"] - t["gm"])
    return box, alpha, max(target, t["csf"]), 0.0, rho < 1.0


def _displace(out, mask, centre, radius, strength):
    """Mass effect: push the tissue around ``centre`` outward (radial, smooth, invertible).

    A voxel at distance r from the centre samples the image at r (1 - a exp(-(r / s)^2)) with
    a = ``strength`` < 1 and s = 1.6 ``radius``: monotone in r, so no tissue folds over; nothing
    moves beyond 3.2 ``radius``.
    """
    reach = 3.2 * radius
    box = _box(centre, [reach] * out.ndim, out.shape)
    offsets = _coords(box, centre)
    grids = np.meshgrid(*[o.ravel() for o in offsets], indexing="ij")
    r = np.sqrt(sum(g * g for g in grids))
    # Tapered to exactly nothing at ``reach`` (where the Gaussian is below 2 % anyway).
    taper = np.clip((reach - r) / (0.25 * reach), 0.0, 1.0)
    shrink = 1.0 - strength * np.exp(-((r / (1.6 * radius)) ** 2)) * taper
    source = [g * shrink + c for g, c in zip(grids, centre, strict=True)]
    starts = [b.start for b in box]
    source = [s_ - start for s_, start in zip(source, starts, strict=True)]
    local = out[box]
    moved = ndimage.map_coordinates(local, source, order=1, mode="nearest")
    inside = ndimage.map_coordinates(mask[box].astype(np.float32), source, order=1) > 0.5
    keep = mask[box] & inside
    out[box] = np.where(keep, moved, local)


def _stroke(rng, ctx, centre, size):
    """A wedge whose base lies on the brain surface at ``centre`` and whose apex points inward."""
    shape, ndim = ctx["shape"], ctx["ndim"]
    inside = ctx["mask"][(slice(None), slice(None), *[int(round(c)) for c in centre[2:]])]
    middle = np.array(ndimage.center_of_mass(inside))
    direction = centre[:2] - middle
    norm = np.hypot(*direction)
    direction = direction / norm if norm > 0 else np.array([1.0, 0.0])
    length = float(size)
    apex = np.r_[centre[:2] - length * direction, centre[2:]]
    mid = np.r_[centre[:2] - 0.5 * length * direction, centre[2:]]
    half_angle = rng.uniform(0.25, 0.5)
    depth_z = length * rng.uniform(0.3, 0.5)
    half = np.r_[[0.75 * length + 2] * 2, [depth_z + 2] * (ndim - 2)]
    box = _box(mid, half, shape)
    offsets = _coords(box, apex)
    along = offsets[0] * direction[0] + offsets[1] * direction[1]
    across = np.abs(offsets[0] * direction[1] - offsets[1] * direction[0])
    wobble = 1.0 + 0.15 * _smooth_field(rng, np.broadcast_shapes(along.shape, across.shape), 2.0)
    margin = np.minimum(along, along * np.tan(half_angle) * wobble - across)
    if ndim == 3:
        margin = np.minimum(
            margin, depth_z * (0.4 + 0.6 * np.clip(along / length, 0, 1)) - np.abs(offsets[2])
        )
    alpha = _soft(margin)
    t = ctx["tissue"]
    target = t["csf"] + rng.uniform(0.25, 0.5) * (t["gm"] - t["csf"])
    texture = 1.0 + 0.05 * _smooth_field(rng, alpha.shape, 2.0)
    return box, alpha, target * texture, 0.0, margin > 0


def add_lesions(
    image,
    brain_mask,
    *,
    kind="tumour",
    count=None,
    seed=0,
    size=None,
    center=None,
    mass_effect=0.0,
):
    """Paint synthetic lesions into a brain image, with their ground truth.

    Intensities follow the tissue intensities of the image itself (cerebrospinal fluid, grey
    and white matter estimated by 3-class k-means inside the brain mask), so the function works
    on phantoms and on real skull-stripped T1 scans alike. Lesions replace the anatomy under
    them and carry noise of the image's own level (a robust estimate), so they cannot be told
    apart by a missing noise texture.

    Parameters
    ----------
    image : (X, Y) or (X, Y, Z) ndarray
        Brain image (axial slices along the last axis); voxels assumed roughly isotropic.
    brain_mask : ndarray, same shape as ``image``
        Lesions are placed, and truth is set, only inside this mask.
    kind : {'tumour', 'ms', 'bright', 'stroke'}
        ``'tumour'``: a bright heterogeneous blob (1.12-1.28 x white matter), often with a darker
        necrotic core, inside a mildly hyperintense oedema rim; the truth covers the whole
        abnormal region, oedema included (like BraTS whole-tumour labels).
        ``'ms'``: small T1-*hypointense* ovoid plaques in white matter, as multiple sclerosis
        lesions look on T1 (from halfway between white and grey matter down to below grey
        matter), about half of them periventricular (touching the ventricles' rim).
        ``'bright'``: small T1-bright ovoid lesions (1.15-1.3 x white matter) in deep white
        matter (away from the cortex), like subacute haemorrhage or fat.
        ``'stroke'``: a hypointense wedge (between CSF and grey matter) with its base on the
        brain surface and its apex pointing inward.
    count : int, optional
        Number of lesions; by default 1 for tumour, bright and stroke, a random 6 to 12 for ms.
    seed : int or numpy.random.Generator
    size : float, optional
        In voxels: tumour diameter (default 0.35-0.6 of the brain radius); largest ms lesion
        diameter (default 12, or 0.3 of the brain radius on smaller brains; each lesion 4 to
        ``size``; on a small brain fewer than ``count`` plaques when the white matter is full);
        bright lesion diameter (default 8 to 18; with ``size``, each lesion 2 to ``size``);
        stroke wedge depth (default 0.35-0.55 of the brain radius).
    center : sequence of float, optional
        Voxel coordinates of the lesion centre (for stroke, a point near the brain surface where
        the wedge's base lies); only with ``count=1``. Drawn at random by default.
    mass_effect : float
        Tumour only: how far the tumour pushes the tissue around it outward before it is
        painted, 0 (none, the default) to 0.6 (the tissue at the centre moves out by 60 % of
        its distance; ventricles and sulci nearby are compressed).

    Returns
    -------
    image : ndarray of float32 (float64 for float64 input), same shape
        A new array. When the input lies in [0, 1] the output does too: lesion voxels brighter
        than 0.9 are compressed smoothly below 1 (keeping their texture). Never negative when
        the input is not.
    truth : ndarray of bool, same shape
        Lesion voxels, all inside ``brain_mask``; lesions never overlap one another.
    """
    image = np.asarray(image)
    mask = np.asarray(brain_mask) != 0
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (X, Y) or 3-D (X, Y, Z), got shape {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(
            f"brain_mask {mask.shape} and image {image.shape} differ in shape: pass a mask on the "
            "same grid"
        )
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}: choose one of {', '.join(LESION_KINDS)}")
    if np.count_nonzero(mask) < 16:
        raise ValueError("brain_mask has fewer than 16 voxels: pass the brain mask of the image")
    if not np.isfinite(image[mask]).all():
        raise ValueError("image contains NaN or infinity inside the brain: clean it first")
    rng = _rng(seed)
    dtype = np.float64 if image.dtype == np.float64 else np.float32
    out = image.astype(np.float64)
    ndim = image.ndim
    if count is None:
        count = int(rng.integers(6, 13)) if kind == "ms" else 1
    count = int(count)
    if not 0 <= float(mass_effect) <= 0.6:
        raise ValueError(f"mass_effect must lie in [0, 0.6], got {mass_effect}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if center is not None:
        if count != 1:
            raise ValueError("center places a single lesion: pass count=1 with it")
        center = np.asarray(center, dtype=np.float64)
        if center.shape != (ndim,):
            raise ValueError(f"center needs {ndim} voxel coordinates, got {center.tolist()}")

    areas = mask.reshape(mask.shape[0], mask.shape[1], -1).sum(axis=(0, 1))
    brain_radius = float(np.sqrt(areas.max() / np.pi))
    sigma = (1.5, 1.5, 1.0)[:ndim]
    ctx = {
        "shape": image.shape,
        "ndim": ndim,
        "mask": mask,
        "tissue": _tissue_means(out, mask),
        "local": _masked_smooth(out, mask, sigma),
    }
    depth = ndimage.distance_transform_edt(mask)
    free = mask.copy()
    truth = np.zeros(image.shape, dtype=bool)
    touched = np.zeros(image.shape, dtype=bool)
    t = ctx["tissue"]
    white = ctx["local"] > 0.5 * (t["gm"] + t["wm"])
    white = (ndimage.distance_transform_edt(white) >= 2.5) & (depth >= 0.2 * brain_radius)
    flat = white if np.count_nonzero(white) >= 100 else mask
    if kind == "ms":
        # Periventricular rim: non-CSF voxels 1-4 voxels from deep CSF (the ventricles).
        fluid = (ctx["local"] < 0.5 * (t["csf"] + t["gm"])) & (depth >= 0.25 * brain_radius)
        gap = ndimage.distance_transform_edt(~fluid) if fluid.any() else np.full(mask.shape, 99.0)
        rim = mask & ~fluid & (gap >= 1.0) & (gap <= 4.0) & (ctx["local"] > t["gm"])
        periventricular = rim if np.count_nonzero(rim) >= 20 else white
    residual = (out - ctx["local"])[flat]
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    if kind == "stroke":
        in_plane = np.ones((3, 3) + (1,) * (ndim - 2), dtype=bool)
        ring = mask & ~ndimage.binary_erosion(mask, structure=in_plane, border_value=0)

    for _ in range(count):
        if kind == "tumour":
            lesion_size = size if size is not None else brain_radius * rng.uniform(0.35, 0.6)
            fit = depth >= 0.35 * lesion_size
            where = center if center is not None else _pick(rng, fit & free, free)
            if mass_effect > 0:
                _displace(out, mask, where, 0.5 * lesion_size, float(mass_effect))
            box, alpha, target, extra, region = _tumour(rng, ctx, where, lesion_size)
        elif kind == "ms":
            # 12 voxels on an adult brain (radius about 70 voxels at 1 mm), less on a small one.
            largest = min(12.0, max(3.0, 0.3 * brain_radius)) if size is None else float(size)
            lesion_size = rng.uniform(min(4.0, largest), largest)
            near = periventricular if rng.random() < 0.5 else white
            if center is None and truth.any() and not (white & free).any():
                break  # the plaques placed so far fill the white matter
            where = center if center is not None else _pick(rng, near & free, white & free)
            box, alpha, target, extra, region = _ms(rng, ctx, where, lesion_size)
        elif kind == "bright":
            if size is None:
                lesion_size = rng.uniform(8.0, 18.0)
            else:
                lesion_size = rng.uniform(min(2.0, float(size)), float(size))
            where = center if center is not None else _pick(rng, white & free, free)
            box, alpha, target, extra, region = _bright(rng, ctx, where, lesion_size)
        else:
            lesion_size = size if size is not None else brain_radius * rng.uniform(0.35, 0.55)
            if center is not None:
                where = center
            else:
                middle = np.array(ndimage.center_of_mass(mask))
                lateral = np.abs(np.indices(mask.shape[:2])[0] - middle[0]) > 0.35 * brain_radius
                if ndim == 3:
                    lateral = lateral[:, :, None]
                where = _pick(rng, ring & free & lateral, ring & free)
            box, alpha, target, extra, region = _stroke(rng, ctx, where, lesion_size)
        inside = free[box]
        region &= inside
        old = out[box]
        grain = noise * rng.standard_normal(old.shape)
        new = old + alpha * (target + grain - old) + extra
        changed = inside & (new != old)
        out[box] = np.where(changed, new, old)
        touched[box] |= changed
        truth[box] |= region
        grown = ndimage.binary_dilation(region, iterations=2) if region.any() else region
        free[box] &= ~grown

    low = 0.0 if image[mask].min() >= 0 else -np.inf
    if image.max() <= 1.0:
        knee = 0.9
        bright = touched & (out > knee)
        out[bright] = knee + (1.0 - knee) * np.tanh((out[bright] - knee) / (1.0 - knee))
    out = np.maximum(out, low)
    out[~mask] = image[~mask]
    return out.astype(dtype), truth


def _child_generators(seed, n):
    if isinstance(seed, np.random.Generator):
        return [np.random.default_rng(int(s)) for s in seed.integers(0, 2**63 - 1, size=n)]
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n)]


def make_dataset(n, *, size=64, seed=0, lesion_kinds=None):
    """Draw ``n`` phantom subjects, one axial slice each.

    Sample ``i`` depends only on ``seed`` and ``i``, not on ``n``.

    Parameters
    ----------
    n : int
        Number of slices.
    size : int
        Slices are ``size x size``.
    seed : int or numpy.random.Generator
    lesion_kinds : sequence of {'tumour', 'ms', 'bright', 'stroke', None}, optional
        Lesion kind of each sample, cycled (``None`` keeps a sample healthy). Without it all
        samples are healthy.

    Returns
    -------
    dict
        ``"images"``: (N, size, size) float32 in [0, 1]; ``"masks"``: (N, size, size) bool brain
        masks. With ``lesion_kinds`` also ``"truths"`` (N, size, size) bool, ``"healthy"``
        (N, size, size) float32, the same slices before the lesions were added, and ``"kinds"``
        (N,) str, ``""`` for healthy samples.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    kinds = None
    if lesion_kinds is not None:
        kinds = list(lesion_kinds)
        if not kinds:
            raise ValueError("lesion_kinds is empty: pass at least one kind, or None")
        for kind in kinds:
            if kind is not None and kind not in LESION_KINDS:
                raise ValueError(
                    f"unknown lesion kind {kind!r}: choose from {', '.join(LESION_KINDS)} or None"
                )
    images = np.zeros((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    truths = np.zeros((n, size, size), dtype=bool)
    healthy = np.zeros((n, size, size), dtype=np.float32)
    names = []
    for i, rng in enumerate(_child_generators(seed, n)):
        image, mask = make_brain((size, size), seed=rng)
        healthy[i], masks[i] = image, mask
        kind = kinds[i % len(kinds)] if kinds is not None else None
        if kind is not None:
            image, truths[i] = add_lesions(image, mask, kind=kind, seed=rng)
        images[i] = image
        names.append(kind or "")
    result = {"images": images, "masks": masks}
    if kinds is not None:
        result.update(truths=truths, healthy=healthy, kinds=np.array(names, dtype=str))
    return result

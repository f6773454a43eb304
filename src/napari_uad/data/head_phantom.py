"""Synthetic T1-weighted heads: scalp, skull, fat, eyes and neck around a skull-stripped brain.

:func:`make_head` wraps any skull-stripped brain (a :func:`napari_uad.data.phantoms.make_brain`
volume, or the MNI152 template brain) in the tissues a raw T1 scan still shows, so that skull
stripping, neck cropping and the "is this scan skull-stripped?" input checks can be tested
against a known brain mask.

Arrays follow the package's RAS+ convention: axis 0 runs left to right, axis 1 posterior to
anterior, axis 2 inferior to superior. Sizes are in millimetres and are converted with the
voxel spacing, so any spacing (also anisotropic) works.

Outward from the brain surface the head holds, with smooth seeded variations of every
thickness of up to +-20 %:

- subarachnoid CSF (1.5-3 mm), which also fills the sulci up to a smoothed brain envelope,
- the skull: inner table (~1.5 mm, very dark), diploe (marrow, 2-3 mm, medium-bright) and outer
  table (~1.5 mm, very dark); the skull follows a closed, smoothed brain surface, not the sulci,
- subcutaneous fat (2-4 mm, brighter than white matter) and scalp skin (2-3 mm),
- two eyes (vitreous as dark as CSF, ~24 mm across) in bright orbital fat, anterior and inferior
  to the frontal lobes, with the face around them,
- below the brain: soft tissue under the skull base that merges into a neck (an ellipse of
  ~110 x 120 mm of muscle under a fat rim) holding the spinal cord in its CSF canal, the
  vertebral bodies with their discs and arches, and the airway.

Eye, neck and spine sizes scale with the brain's extent (1 for an adult brain of about
140 x 170 mm); layer thicknesses do not. Tissue intensities are fractions of the brain's own
white-matter intensity (its 90th percentile inside the mask) and CSF intensity (its 1st
percentile, at most 0.3 x white matter), so the brain's scale does not matter. The result is a
magnitude image: Rician noise everywhere outside the brain (the brain keeps its own values),
an optional smooth multiplicative bias field over the whole head, and optionally exact zeros
in the air away from the head, as resampled scanner exports have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["HEAD_LABELS", "HeadPhantom", "make_head"]

#: Tissue codes of :attr:`HeadPhantom.labels`.
HEAD_LABELS = {
    0: "air",
    1: "brain",
    2: "csf",
    3: "cortical bone",
    4: "marrow",
    5: "fat",
    6: "scalp",
    7: "eye",
    8: "muscle",
    9: "spinal cord",
    10: "vertebra",
    11: "airway",
    12: "disc",
}
AIR, BRAIN, CSF, BONE, MARROW, FAT, SCALP, EYE, MUSCLE, CORD, VERTEBRA, AIRWAY, DISC = range(13)

_COARSE_MM = 3.0
_REF_WIDTH_MM, _REF_LENGTH_MM = 140.0, 172.0
_ZERO_BEYOND_MM = 5.0


@dataclass
class HeadPhantom:
    """A synthetic T1-weighted head around a given brain.

    Attributes
    ----------
    image : ndarray of float32, shape (X, Y, Z)
        The head, RAS+; larger than the brain array (padded by ``margin_mm`` left, right,
        posterior, anterior and superior, by ``neck_mm`` inferior).
    brain_mask : ndarray of bool, shape (X, Y, Z)
        The given brain mask placed in the head array: the reference for skull stripping.
    labels : ndarray of uint8, shape (X, Y, Z)
        Tissue codes, see :data:`HEAD_LABELS`.
    affine : ndarray of float64, shape (4, 4)
        Voxel to world (RAS+, mm) with the given spacing; world (0, 0, 0) is the centre of mass
        of the brain mask.
    offset : tuple of int
        Index in the head array of the brain array's voxel (0, 0, 0).
    spacing : tuple of float
        Voxel size in mm.
    """

    image: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    offset: tuple
    spacing: tuple


def _generators(seed, n):
    """Independent generators, so that e.g. the bias never changes the noise of a seed."""
    rng = np.random.default_rng(seed)
    return [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=n)]


def _brain_intensities(brain, mask):
    values = brain[mask]
    wm = float(np.percentile(values, 90))
    if not np.isfinite(wm) or wm <= 0:
        raise ValueError("the brain has no positive intensity inside its mask")
    csf = float(np.clip(np.percentile(values, 1), 0.0, 0.3 * wm))
    return wm, csf


def _draw_tissue(rng, wm, csf):
    """Layer thicknesses (mm) and intensities of one subject."""
    thickness = {
        "csf": rng.uniform(1.8, 2.6),
        "inner": 1.5 * rng.uniform(0.9, 1.1),
        "diploe": rng.uniform(2.0, 3.0),
        "outer": 1.5 * rng.uniform(0.9, 1.1),
        "fat": rng.uniform(2.5, 3.5),
        "scalp": rng.uniform(2.0, 3.0),
    }
    value = {
        CSF: csf,
        BONE: min(wm * rng.uniform(0.04, 0.08), 0.6 * csf),
        MARROW: wm * rng.uniform(0.7, 0.85),
        FAT: wm * rng.uniform(1.03, 1.12),
        SCALP: wm * rng.uniform(0.58, 0.68),
        EYE: csf * rng.uniform(0.8, 1.0),
        MUSCLE: wm * rng.uniform(0.5, 0.58),
        CORD: wm * rng.uniform(0.72, 0.8),
        VERTEBRA: wm * rng.uniform(0.72, 0.85),
        AIRWAY: 0.0,
        DISC: wm * rng.uniform(0.4, 0.5),
    }
    return thickness, value


def _smooth_noise(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


def _signed_distance(inside, sampling):
    """Distance in mm to the surface of ``inside``: positive outside, negative inside."""
    outside = ndimage.distance_transform_edt(~inside, sampling=sampling)
    depth = ndimage.distance_transform_edt(inside, sampling=sampling)
    return (outside - depth).astype(np.float32)


def _closing(mask, radius, sampling):
    grown = ndimage.distance_transform_edt(~mask, sampling=sampling) <= radius
    return ndimage.distance_transform_edt(grown, sampling=sampling) > radius


def _upsample(coarse, factors, shape):
    """Linear interpolation of a cell-centred coarse grid onto the fine grid ``shape``."""
    out = coarse
    for axis in (2, 1, 0):
        f, n = factors[axis], shape[axis]
        if f == 1:
            out = np.take(out, np.arange(n), axis=axis)
            continue
        size = out.shape[axis]
        pos = np.clip((np.arange(n) + 0.5) / f - 0.5, 0, size - 1)
        low = np.floor(pos).astype(np.intp)
        high = np.minimum(low + 1, size - 1)
        weight = (pos - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        first = np.take(out, low, axis=axis)
        out = first + (np.take(out, high, axis=axis) - first) * weight
    return out


def _alpha(signed, width):
    """Partial-volume fraction inside a surface from a signed distance (negative inside)."""
    return np.clip(0.5 - signed / width, 0.0, 1.0, dtype=np.float32)


def _paint(image, labels, alpha, value, code, box=(slice(None),) * 3):
    """Blend ``value`` in with fraction ``alpha``; label the voxels that are mostly inside."""
    region = image[box]
    region += alpha * (np.float32(value) - region)
    labels[box][alpha >= 0.5] = code


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _box(centre, half, spacing, shape):
    """Index slices covering ``centre +- half`` (mm) and the voxel coordinates (mm) there."""
    box, axes = [], []
    for axis in range(3):
        lo = max(0, int(np.floor((centre[axis] - half[axis]) / spacing[axis])) - 1)
        hi = min(shape[axis], int(np.ceil((centre[axis] + half[axis]) / spacing[axis])) + 2)
        hi = max(hi, lo)
        box.append(slice(lo, hi))
        coords = np.arange(lo, hi, dtype=np.float32) * np.float32(spacing[axis])
        axes.append(coords.reshape([-1 if a == axis else 1 for a in range(3)]))
    return tuple(box), axes


def _ellipse_distance(dx, dy, semi):
    """Approximate signed distance (mm) to an axis-aligned ellipse."""
    rho = np.sqrt((dx / semi[0]) ** 2 + (dy / semi[1]) ** 2)
    return (rho - 1.0) * min(semi)


def _brain_geometry(mask, spacing):
    """Extent (mm) and centre (mm, head coordinates) of the brain mask."""
    lows, highs = [], []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lows.append(present[0])
        highs.append(present[-1])
    lows, highs = np.array(lows), np.array(highs)
    centre = np.array(ndimage.center_of_mass(mask)) * spacing
    return lows * spacing, highs * spacing, centre


def _coarse_index(mm, grid, axis, size):
    """Nearest coarse cell of a position in mm (head coordinates) along ``axis``."""
    j = (mm + 0.5 * grid.spacing[axis]) / grid.coarse_spacing[axis] - 0.5
    return int(np.clip(round(float(j)), 0, size - 1))


@dataclass
class _Grid:
    spacing: np.ndarray
    factors: tuple
    shape: tuple

    @property
    def coarse_spacing(self):
        return self.spacing * np.array(self.factors)

    @property
    def coarse_shape(self):
        return tuple(-(-n // f) for n, f in zip(self.shape, self.factors, strict=True))

    def coarse_axes(self):
        """Voxel-centre coordinates (mm) of the coarse cells, broadcastable."""
        axes = []
        for axis, n in enumerate(self.coarse_shape):
            mm = (np.arange(n) + 0.5) * self.coarse_spacing[axis] - 0.5 * self.spacing[axis]
            axes.append(mm.astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)]))
        return axes


def _place_eyes(rng, d_brain, grid, geometry, clearance):
    """Eye centres (mm) and radius: in front of and below the frontal lobes, clear of the skull."""
    low, high, centre, scale = (geometry[k] for k in ("low", "high", "centre", "scale"))
    radius = 12.0 * scale * rng.uniform(0.95, 1.05)
    half_gap = 0.22 * (high[0] - low[0]) * rng.uniform(0.97, 1.03)
    y = high[1] - 0.6 * radius
    j = _coarse_index(y, grid, 1, d_brain.shape[1])
    columns = [
        d_brain[_coarse_index(centre[0] + side * half_gap, grid, 0, d_brain.shape[0]), j]
        for side in (-1.0, 1.0)
    ]
    column = np.minimum(*columns)
    top = _coarse_index(centre[2], grid, 2, column.size)
    clear = np.flatnonzero(column[: top + 1] >= clearance + radius)
    k = clear[-1] if clear.size else 0
    z = (k + 0.5) * grid.coarse_spacing[2] - 0.5 * grid.spacing[2]
    return [np.array([centre[0] + side * half_gap, y, z]) for side in (-1.0, 1.0)], radius


def _lower_head(axes, geometry, eyes, radius, rng):
    """Face, soft tissue under the skull base and neck: one rounded section per axial level.

    Low down the section is the neck ellipse; between ~65 and ~35 mm below the eyes it widens,
    grows forward to just in front of the eyes and squares off (a superellipse) into the face.
    """
    x, y, z = axes
    low, high, centre, scale = (geometry[k] for k in ("low", "high", "centre", "scale"))
    width, length = high[0] - low[0], high[1] - low[1]
    neck_semi = np.array([0.39 * width, 0.35 * length]) * rng.uniform(0.93, 1.07, size=2)
    neck_y = centre[1] - 0.05 * length
    eye = eyes[1]
    back = neck_y - neck_semi[1]
    front = eye[1] + radius + 2.0 * scale
    face_semi_x = max(0.45 * width, eye[0] - centre[0] + radius + 10.0 * scale)
    face_bottom = eye[2] - radius - 25.0 * scale
    blend = 30.0 * scale
    t = _smoothstep((z - (face_bottom - blend)) / blend)
    semi_x = neck_semi[0] + t * (face_semi_x - neck_semi[0])
    semi_y = neck_semi[1] + t * (0.5 * (front - back) - neck_semi[1])
    mid_y = neck_y + t * (0.5 * (front + back) - neck_y)
    power = 2.0 + 2.0 * t
    inside = np.abs((x - centre[0]) / semi_x) ** power + np.abs((y - mid_y) / semi_y) ** power
    inside = (inside < 1.0) & (z < eye[2] + radius)
    return inside, {"x": centre[0], "y": neck_y, "semi": neck_semi}


def _paint_eyes(image, labels, value, eyes, radius, scale, grid, width):
    """Vitreous spheres in orbital fat (more fat behind the globe than in front)."""
    fat_radius = radius + 4.0 * scale
    for eye in eyes:
        fat_centre = eye - np.array([0.0, 2.0 * scale, 0.0])
        box, axes = _box(fat_centre, [fat_radius + width] * 3, grid.spacing, grid.shape)
        fat = np.sqrt(sum((a - c) ** 2 for a, c in zip(axes, fat_centre, strict=True)))
        globe = np.sqrt(sum((a - c) ** 2 for a, c in zip(axes, eye, strict=True)))
        _paint(image, labels, _alpha(fat - fat_radius, width), value[FAT], FAT, box)
        _paint(image, labels, _alpha(globe - radius, width), value[EYE], EYE, box)


def _spine_layout(neck, scale):
    """Axial positions (mm) of the spinal canal, vertebral body and airway."""
    cord_y = neck["y"] - 0.25 * neck["semi"][1]
    canal = 8.0 * scale
    body_semi = np.array([11.0, 8.0]) * scale
    body_y = cord_y + canal + 2.0 * scale + body_semi[1]
    airway_semi = np.array([11.0, 6.0]) * scale
    return {
        "x": neck["x"],
        "cord_y": cord_y,
        "cord": 5.0 * scale,
        "canal": canal,
        "body_y": body_y,
        "body_semi": body_semi,
        "airway_y": body_y + body_semi[1] + 6.0 * scale + airway_semi[1],
        "airway_semi": airway_semi,
        "arch": canal + 4.0 * scale,
        "spinous": 0.45 * neck["semi"][1],
    }


def _column(grid, x, y, half_x, half_y, z_top, width):
    """Box of a vertical structure from the bottom of the head up to ``z_top`` (mm)."""
    box, axes = _box((x, y, 0.5 * z_top), (half_x, half_y, 0.5 * z_top), grid.spacing, grid.shape)
    return box, axes, _alpha(axes[2] - z_top, width)


def _paint_spine(image, labels, value, spine, grid, width, u_brain, below_skull, z_top, phase):
    """Vertebral bodies (cortex, marrow and discs) and their posterior arches."""
    x, scale = spine["x"], spine["cord"] / 5.0

    def column(y, half_x, half_y, z_top):
        box, axes, below = _column(grid, x, y, half_x, half_y, z_top, width)
        return box, axes, below * _alpha(below_skull - u_brain[box], width)

    semi = spine["body_semi"]
    box, axes, extent = column(spine["body_y"], *semi, z_top)
    dx, dy = axes[0] - x, axes[1] - spine["body_y"]
    body = extent * _alpha(_ellipse_distance(dx, dy, semi), width)
    _paint(image, labels, body, value[BONE], BONE, box)
    marrow = extent * _alpha(_ellipse_distance(dx, dy, semi - 1.5 * scale), width)
    _paint(image, labels, marrow, value[VERTEBRA], VERTEBRA, box)
    period = 20.0 * scale
    dz = np.abs((axes[2] - phase * period + 0.5 * period) % period - 0.5 * period)
    _paint(image, labels, marrow * _alpha(dz - 2.5 * scale, width), value[DISC], DISC, box)

    arch, spinous, canal = spine["arch"], spine["spinous"], spine["canal"]
    y = spine["cord_y"] - 0.5 * spinous
    box, axes, extent = column(y, arch, 0.5 * spinous + arch, z_top)
    dx, dy = axes[0] - x, axes[1] - spine["cord_y"]
    dz = np.abs((axes[2] - phase * period) % period - 0.5 * period)
    extent = extent * _alpha(0.3 * period - dz, width)
    ring = np.sqrt(dx * dx + dy * dy)
    sd = np.minimum(
        np.maximum(ring - arch, canal - ring),
        np.maximum(np.abs(dx) - 2.5 * scale, np.abs(dy + 0.5 * spinous) - 0.5 * spinous),
    )
    outer = extent * _alpha(dy - 0.3 * canal, width) * _alpha(sd, width)
    _paint(image, labels, outer, value[BONE], BONE, box)
    _paint(image, labels, outer * _alpha(sd + 1.2 * scale, width), value[VERTEBRA], VERTEBRA, box)


def _paint_airways(image, labels, value, eyes, radius, spine, grid, width, inside):
    """Pharynx, nasal cavity and maxillary sinuses, kept in the deep soft tissue.

    ``inside(box)`` gives the fraction of each voxel of ``box`` that is deep in the head and
    clear of the skull.
    """
    x, scale = spine["x"], spine["cord"] / 5.0
    eye = eyes[1]
    semi = spine["airway_semi"]
    pharynx_top = eye[2] - radius
    box, axes, below = _column(grid, x, spine["airway_y"], *semi, pharynx_top, width)
    sd = _ellipse_distance(axes[0] - x, axes[1] - spine["airway_y"], semi)
    _paint(image, labels, below * inside(box) * _alpha(sd, width), value[AIRWAY], AIRWAY, box)

    def block(y_range, z_range, half_x):
        centre = (x, 0.5 * sum(y_range), 0.5 * sum(z_range))
        semi = (half_x, 0.5 * abs(y_range[1] - y_range[0]), 0.5 * abs(z_range[1] - z_range[0]))
        return centre, tuple(max(h, 2.0 * scale) for h in semi)

    nasal_back = eye[1] - radius - 35.0 * scale
    cavities = [
        block(
            (nasal_back, eye[1] + 0.5 * radius),
            (eye[2] - radius - 18.0 * scale, eye[2] + 0.2 * radius),
            max(4.0 * scale, 0.35 * (eye[0] - x - radius)),
        ),
        block(
            (spine["airway_y"] - semi[1], nasal_back + 8.0 * scale),
            (pharynx_top - 15.0 * scale, pharynx_top + 4.0 * scale),
            semi[0],
        ),
    ]
    for side in (-1.0, 1.0):
        centre = (
            x + side * 0.8 * (eye[0] - x),
            eye[1] - 0.2 * radius,
            eye[2] - radius - 14.0 * scale,
        )
        cavities.append((centre, (11.0 * scale, 14.0 * scale, 12.0 * scale)))
    for centre, semi in cavities:
        box, axes = _box(centre, semi, grid.spacing, grid.shape)
        rho = sum(((a - c) / h) ** 4 for a, c, h in zip(axes, centre, semi, strict=True))
        sd = (rho**0.25 - 1.0) * min(semi)
        _paint(image, labels, inside(box) * _alpha(sd, width), value[AIRWAY], AIRWAY, box)


def _paint_cord(image, labels, value, spine, grid, width, z_top):
    """The spinal canal (CSF, through the skull base) and the cord up to the brain."""
    x, y = spine["x"], spine["cord_y"]
    canal = spine["canal"]
    box, axes, below = _column(grid, x, y, canal, canal, z_top, width)
    ring = np.sqrt((axes[0] - x) ** 2 + (axes[1] - y) ** 2)
    _paint(image, labels, below * _alpha(ring - canal, width), value[CSF], CSF, box)
    _paint(image, labels, below * _alpha(ring - spine["cord"], width), value[CORD], CORD, box)


def _cord_top(head_mask, spine, grid, geometry):
    """Height (mm) where the cord's column meets the brain (its centre height if it misses)."""
    i = int(np.clip(round(spine["x"] / grid.spacing[0]), 0, grid.shape[0] - 1))
    j = int(np.clip(round(spine["cord_y"] / grid.spacing[1]), 0, grid.shape[1] - 1))
    hits = np.flatnonzero(head_mask[i, j])
    if hits.size:
        return (hits[0] + 2) * grid.spacing[2]
    return geometry["centre"][2]


def _bias_field(rng, grid, amplitude):
    """Smooth multiplicative field in [1 - amplitude, 1 + amplitude] (coarse grid)."""
    x, y, z = (2.0 * a / max(float(a.max()), 1e-6) - 1.0 for a in grid.coarse_axes())
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    field = sum(c * t for c, t in zip(rng.normal(0.0, 1.0, len(terms)), terms, strict=True))
    field = np.broadcast_to(field, grid.coarse_shape).astype(np.float32)
    field = field - 0.5 * (field.max() + field.min())
    peak = float(np.abs(field).max())
    return 1.0 + amplitude * (field / peak if peak > 0 else field)


def _block_mean(mask, factors, coarse_shape):
    padded = np.zeros([n * f for n, f in zip(coarse_shape, factors, strict=True)], np.float32)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    blocks = padded.reshape(
        coarse_shape[0], factors[0], coarse_shape[1], factors[1], coarse_shape[2], factors[2]
    )
    return blocks.mean(axis=(1, 3, 5))


def _check(brain, brain_mask, spacing, neck_mm, margin_mm, noise, bias):
    brain = np.asarray(brain, dtype=np.float32)
    mask = np.asarray(brain_mask, dtype=bool)
    if brain.ndim != 3 or mask.shape != brain.shape:
        raise ValueError(
            f"brain and brain_mask must be 3-D arrays of one shape, got {brain.shape} and "
            f"{mask.shape}"
        )
    if not mask.any():
        raise ValueError("brain_mask is empty")
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing}")
    for name, amount in (("neck_mm", neck_mm), ("margin_mm", margin_mm), ("noise", noise)):
        if not np.isfinite(amount) or amount < 0:
            raise ValueError(f"{name} must be >= 0, got {amount}")
    if not 0 <= bias < 1:
        raise ValueError(f"bias must be in [0, 1), got {bias}")
    return brain, mask, spacing


def make_head(
    brain,
    brain_mask,
    *,
    spacing=(1.0, 1.0, 1.0),
    seed=0,
    neck_mm=60.0,
    margin_mm=25.0,
    noise=0.02,
    bias=0.0,
    zero_background=False,
):
    """Wrap a skull-stripped brain in a synthetic T1-weighted head.

    Parameters
    ----------
    brain : ndarray, shape (X, Y, Z)
        Skull-stripped T1 brain, RAS+ (see the module docstring), any intensity scale.
    brain_mask : ndarray of bool, shape (X, Y, Z)
        Its brain mask; everything outside it becomes CSF, skull, scalp, ... or air.
    spacing : tuple of 3 float
        Voxel size in mm along the three axes.
    seed : int or numpy.random.Generator
        Layer thicknesses and their smooth variations, tissue contrasts, eye and neck sizes,
        noise and bias field are all drawn from it.
    neck_mm : float
        Height of the neck added below the brain array.
    margin_mm : float
        Room added left, right, posterior, anterior and above the brain array (the scalp ends
        about 10-16 mm outside the brain).
    noise : float
        Rician noise level: sigma of the complex Gaussian noise as a fraction of the brain's
        white-matter intensity. It is added to every voxel outside the brain mask (air
        included); the brain keeps its given values.
    bias : float
        Relative amplitude of a smooth, low-frequency multiplicative field over the whole head
        (brain included): 0.2 gives a field in [0.8, 1.2]. 0 leaves the image unbiased.
    zero_background : bool
        Set the air farther than ~5 mm from the head exactly to 0, as resampled scanner
        exports often are.

    Returns
    -------
    HeadPhantom
        ``image`` (float32), ``brain_mask`` (bool), ``labels`` (uint8, codes in
        :data:`HEAD_LABELS`), ``affine`` and ``offset``; the head array is the brain array
        padded by ``margin_mm`` (in-plane and above) and ``neck_mm`` (below), and
        ``image[brain_mask]`` equals ``brain[brain_mask]`` when ``bias`` is 0.
    """
    brain, mask, spacing = _check(brain, brain_mask, spacing, neck_mm, margin_mm, noise, bias)
    rng_tissue, rng_shape, rng_noise, rng_bias = _generators(seed, 4)
    wm, csf = _brain_intensities(brain, mask)
    thickness, value = _draw_tissue(rng_tissue, wm, csf)
    head_mask, offset, geometry, grid = _head_grid(mask, spacing, neck_mm, margin_mm)
    fields = _shape_fields(grid, head_mask, thickness, geometry, rng_shape)
    image, labels = _paint_tissues(grid, head_mask, thickness, value, geometry, fields, rng_shape)
    if noise > 0:
        _add_rician_noise(image, noise * wm, rng_noise)
    image[head_mask] = brain[mask]
    labels[head_mask] = BRAIN
    if bias > 0:
        image *= _upsample(_bias_field(rng_bias, grid, bias), grid.factors, grid.shape)
    if zero_background:
        image[(labels == AIR) & (fields["depth"] < -_ZERO_BEYOND_MM)] = 0.0

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -geometry["centre"]
    return HeadPhantom(
        image=image,
        brain_mask=head_mask,
        labels=labels,
        affine=affine,
        offset=offset,
        spacing=tuple(float(s) for s in spacing),
    )


def _head_grid(mask, spacing, neck_mm, margin_mm):
    """The padded head array: brain mask in place, brain geometry (mm) and the coarse grid."""
    margin = [int(np.ceil(margin_mm / s - 1e-9)) for s in spacing]
    offset = (margin[0], margin[1], int(np.ceil(neck_mm / spacing[2] - 1e-9)))
    shape = tuple(n + lo + hi for n, lo, hi in zip(mask.shape, offset, margin, strict=True))
    head_mask = np.zeros(shape, dtype=bool)
    head_mask[tuple(slice(o, o + n) for o, n in zip(offset, mask.shape, strict=True))] = mask
    low, high, centre = _brain_geometry(mask, spacing)
    shift = np.array(offset) * spacing
    extent = high - low + spacing
    scale = np.sqrt(extent[0] * extent[1] / (_REF_WIDTH_MM * _REF_LENGTH_MM))
    geometry = {
        "low": low + shift,
        "high": high + shift,
        "centre": centre + shift,
        "scale": float(np.clip(scale, 0.5, 1.5)),
    }
    factors = tuple(max(1, int(round(_COARSE_MM / s))) for s in spacing)
    return head_mask, offset, geometry, _Grid(spacing, factors, shape)


def _shape_fields(grid, head_mask, thickness, geometry, rng):
    """Skull envelope, eyes, face, neck and head surface, built on the coarse grid.

    Returns the eyes, the neck, the (fine) distance outside the smoothed brain envelope divided
    by the local skull-thickness variation (``u_brain``), the depth under the head surface
    divided by the local soft-tissue variation (``depth``) and the box around the skull.
    """
    csp, scale = grid.coarse_spacing, geometry["scale"]
    fraction = _block_mean(head_mask, grid.factors, grid.coarse_shape)
    coarse_brain = fraction >= min(0.5, float(fraction.max()))
    closed = ndimage.binary_fill_holes(_closing(coarse_brain, 8.0, csp))
    d_brain = ndimage.gaussian_filter(_signed_distance(closed, csp), 4.0 / csp)

    def variation():
        field = _smooth_noise(rng, grid.coarse_shape, 25.0 / csp)
        return (1.0 + 0.2 * np.tanh(field)).astype(np.float32)

    skull_scale, soft_scale = variation(), variation()
    skull = sum(thickness[k] for k in ("csf", "inner", "diploe", "outer"))
    soft = thickness["scalp"] + thickness["fat"]

    eyes, radius = _place_eyes(rng, d_brain, grid, geometry, 1.2 * skull + 1.0)
    axes = grid.coarse_axes()
    lower, neck = _lower_head(axes, geometry, eyes, radius, rng)
    solid = lower | (d_brain < skull * skull_scale + soft * soft_scale)
    for eye in eyes:
        distance = np.sqrt(sum((a - c) ** 2 for a, c in zip(axes, eye, strict=True)))
        solid |= distance < radius + 3.0 * scale
    head = ndimage.binary_fill_holes(_closing(solid, 12.0 * scale, csp))
    d_head = ndimage.gaussian_filter(_signed_distance(head, csp), 3.0 / csp)

    u_coarse = d_brain / skull_scale
    cranium = np.argwhere(u_coarse < skull + 2.0 * float(np.max(grid.spacing)))
    cranium_box = tuple(
        slice(max(0, lo * f - f), min(n, (hi + 2) * f))
        for lo, hi, f, n in zip(
            cranium.min(0), cranium.max(0), grid.factors, grid.shape, strict=True
        )
    )
    return {
        "eyes": eyes,
        "radius": radius,
        "neck": neck,
        "u_brain": _upsample(u_coarse, grid.factors, grid.shape),
        "depth": _upsample(-d_head / soft_scale, grid.factors, grid.shape),
        "cranium_box": cranium_box,
    }


def _paint_tissues(grid, head_mask, thickness, value, geometry, fields, rng):
    """Noise-free head image and labels, painted from the outside in (brain not yet there)."""
    width = float(np.prod(grid.spacing) ** (1.0 / 3.0))
    u_brain, depth = fields["u_brain"], fields["depth"]
    eyes, radius = fields["eyes"], fields["radius"]
    bounds = np.cumsum([thickness[k] for k in ("csf", "inner", "diploe", "outer")])
    skull, soft = float(bounds[-1]), thickness["scalp"] + thickness["fat"]
    image = np.zeros(grid.shape, dtype=np.float32)
    labels = np.zeros(grid.shape, dtype=np.uint8)

    _paint(image, labels, _alpha(-depth, width), value[SCALP], SCALP)
    _paint(image, labels, _alpha(thickness["scalp"] - depth, width), value[FAT], FAT)
    muscle = _alpha(soft - depth, width) * _alpha(skull + thickness["fat"] - u_brain, width)
    _paint(image, labels, muscle, value[MUSCLE], MUSCLE)
    del muscle
    _paint_eyes(image, labels, value, eyes, radius, geometry["scale"], grid, width)

    spine = _spine_layout(fields["neck"], geometry["scale"])
    cord_top = _cord_top(head_mask, spine, grid, geometry)

    def deep_inside(box):
        clear = _alpha(skull + 2.0 - u_brain[box], width)
        return clear * _alpha(soft + 2.0 - depth[box], width)

    _paint_airways(image, labels, value, eyes, radius, spine, grid, width, deep_inside)
    spine_args = (spine, grid, width, u_brain, skull + 2.0, cord_top, rng.uniform())
    _paint_spine(image, labels, value, *spine_args)

    box = fields["cranium_box"]
    u_box = u_brain[box]
    for bound, code in zip(bounds[::-1], (BONE, MARROW, BONE, CSF), strict=True):
        _paint(image, labels, _alpha(u_box - bound, width), value[code], code, box)
    _paint_cord(image, labels, value, spine, grid, width, cord_top)
    return image, labels


def _add_rician_noise(image, sigma, rng):
    """Replace ``image`` by the magnitude of ``image`` plus complex Gaussian noise."""
    sigma = np.float32(sigma)
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= sigma
    real += image
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    imag *= sigma
    np.hypot(real, imag, out=image)

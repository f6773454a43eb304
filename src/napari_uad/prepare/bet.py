"""Brain extraction by a deformable surface: the BET algorithm (Smith 2002), in numpy.

A tessellated sphere starts inside the head at the centre of gravity of the bright voxels and
is pushed outwards, vertex by vertex, until it sits on the brain surface: each vertex moves by
a tangential smoothing term, a curvature-dependent normal smoothing term and an intensity term
that pushes it out while the voxels just inside are brighter than a local brain/background
threshold and pulls it in where they are darker (the CSF and skull around the brain). The
surface is then filled into a mask.

Reference: S. M. Smith, "Fast robust automated brain extraction", Human Brain Mapping 17(3),
2002. FSL's ``bet`` is the reference implementation; this one follows the paper's update rules
and parameters, vectorised over the vertices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..io.errors import InputError


@dataclass(frozen=True)
class BetParameters:
    """Parameters of :func:`bet_mask` (the paper's names; lengths in mm).

    Attributes
    ----------
    fractional_threshold : float
        ``bt`` in (0, 1): larger gives a smaller brain. FSL's default is 0.5.
    search_inward_mm, search_outward_mm : float
        ``d1`` and ``d2``: how far inside the surface the local minimum and maximum
        intensities are looked for.
    radius_min_mm, radius_max_mm : float
        Curvature radii between which the normal smoothing goes from strong to weak.
    iterations : int
        Surface updates.
    subdivisions : int
        Icosahedron subdivisions of the initial sphere (4: 2,562 vertices).
    centre_top_mm : float or None
        Start from the centre of gravity of the top ``centre_top_mm`` of the head only (see
        :func:`initial_surface`); None: of the whole image, as in the paper.
    """

    fractional_threshold: float = 0.5
    search_inward_mm: float = 20.0
    search_outward_mm: float = 10.0
    radius_min_mm: float = 3.33
    radius_max_mm: float = 10.0
    iterations: int = 1000
    subdivisions: int = 4
    centre_top_mm: float | None = None


def icosphere(subdivisions: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A unit sphere tessellated by subdividing an icosahedron.

    Parameters
    ----------
    subdivisions : int
        Each subdivision splits every triangle in four (``10 * 4**n + 2`` vertices).

    Returns
    -------
    vertices : ndarray of float64, shape (V, 3)
        Points on the unit sphere.
    faces : ndarray of int64, shape (F, 3)
        Vertex indices of each triangle, counter-clockwise seen from outside.
    """
    phi = (1.0 + 5**0.5) / 2.0
    vertices = [
        (-1, phi, 0), (1, phi, 0), (-1, -phi, 0), (1, -phi, 0),
        (0, -1, phi), (0, 1, phi), (0, -1, -phi), (0, 1, -phi),
        (phi, 0, -1), (phi, 0, 1), (-phi, 0, -1), (-phi, 0, 1),
    ]  # fmt: skip
    faces = [
        (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
        (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
        (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
        (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
    ]  # fmt: skip
    points = [np.array(v, dtype=np.float64) / np.linalg.norm(v) for v in vertices]
    faces_array = np.array(faces, dtype=np.int64)
    for _ in range(subdivisions):
        midpoints: dict[tuple[int, int], int] = {}
        new_faces = []
        for a, b, c in faces_array:
            ab, bc, ca = (_midpoint(points, midpoints, i, j) for i, j in ((a, b), (b, c), (c, a)))
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces_array = np.array(new_faces, dtype=np.int64)
    return np.array(points), faces_array


def _midpoint(points: list, cache: dict, a: int, b: int) -> int:
    """Index of the unit-sphere point between points a and b, added once per edge."""
    key = (min(a, b), max(a, b))
    if key not in cache:
        m = points[a] + points[b]
        points.append(m / np.linalg.norm(m))
        cache[key] = len(points) - 1
    return cache[key]


def _neighbours(n_vertices: int, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded neighbour table (V, K) and its validity mask from the triangle list."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    pairs = np.concatenate([edges, edges[:, ::-1]])
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    counts = np.bincount(pairs[:, 0], minlength=n_vertices)
    width = int(counts.max())
    table = np.zeros((n_vertices, width), dtype=np.int64)
    valid = np.zeros((n_vertices, width), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(pairs)) - starts[pairs[:, 0]]
    table[pairs[:, 0], slot] = pairs[:, 1]
    valid[pairs[:, 0], slot] = True
    return table, valid


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # area-weighted
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(length, 1e-12)


def initial_surface(volume: np.ndarray, spacing: float, *, top_mm: float | None = None) -> dict:
    """The paper's start: robust range, threshold, centre of gravity, radius and median.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Isotropic image.
    spacing : float
        Voxel size in mm.
    top_mm : float, optional
        Take the centre of gravity of the bright voxels within this distance of the highest
        one along the last axis (superior in RAS+) only. With a neck in the field of view the
        centre of all bright voxels sinks towards the skull base, the starting sphere then
        reaches into the neck, whose muscle is as bright as grey matter, and the surface
        grows down the neck; the top of the head is a reliable landmark.

    Returns
    -------
    dict
        ``t2``, ``t98``, ``t`` (brain/background threshold), ``centre`` (voxel coordinates),
        ``radius`` (voxels) and ``tm`` (median intensity inside the initial sphere).
    """
    values = volume.ravel()[:: max(1, volume.size // 2_000_000)]
    t2, t98 = np.percentile(values, [2, 98])
    if t98 <= t2:
        raise InputError("The scan is (nearly) constant: cannot extract a brain")
    t = t2 + 0.1 * (t98 - t2)
    bright = volume > t
    if not bright.any():
        raise InputError("No voxel is above the brain/background threshold: cannot extract")
    weights = np.where(bright, np.minimum(volume, t98) - t2, 0.0)
    if top_mm is not None:
        top = np.flatnonzero(bright.any(axis=(0, 1)))[-1]
        weights[:, :, : max(0, int(top - top_mm / spacing))] = 0.0
    grid = np.indices(volume.shape, dtype=np.float64)
    centre = np.array([(g * weights).sum() / weights.sum() for g in grid])
    radius = (3.0 * np.count_nonzero(bright) / (4.0 * np.pi)) ** (1.0 / 3.0)
    inside = ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) < radius**2
    tm = float(np.median(volume[inside & bright]))
    return {"t2": float(t2), "t98": float(t98), "t": float(t), "centre": centre,
            "radius": float(radius), "tm": tm, "spacing": float(spacing)}  # fmt: skip


def bet_surface(
    volume: np.ndarray,
    spacing: float,
    parameters: BetParameters | None = None,
    *,
    should_stop=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the brain surface of an isotropic image.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        T1-weighted head (or brain) image on an isotropic grid.
    spacing : float
        Voxel size in mm.
    parameters : BetParameters, optional
    should_stop : callable, optional
        Called every 50 iterations; True raises :class:`~napari_uad.methods.base.Cancelled`.

    Returns
    -------
    vertices : ndarray, shape (V, 3)
        Surface vertices in voxel coordinates.
    faces : ndarray, shape (F, 3)
    """
    p = parameters or BetParameters()
    volume = np.asarray(volume, dtype=np.float32)
    start = initial_surface(volume, spacing, top_mm=p.centre_top_mm)
    t2, t, tm = start["t2"], start["t"], start["tm"]
    unit, faces = icosphere(p.subdivisions)
    vertices = start["centre"] + 0.5 * start["radius"] * unit
    table, valid = _neighbours(len(vertices), faces)
    counts = valid.sum(axis=1, keepdims=True)
    r_min, r_max = p.radius_min_mm / spacing, p.radius_max_mm / spacing
    e = 0.5 * (1.0 / r_min + 1.0 / r_max)
    f = 6.0 / (1.0 / r_min - 1.0 / r_max)
    d1 = max(1, int(round(p.search_inward_mm / spacing)))
    d2 = max(1, int(round(p.search_outward_mm / spacing)))
    steps = np.arange(d1 + 1, dtype=np.float64)
    upper = np.array(volume.shape, dtype=np.float64) - 1
    for iteration in range(p.iterations):
        if should_stop is not None and iteration % 50 == 0 and should_stop():
            from ..progress import Cancelled

            raise Cancelled()
        normals = _vertex_normals(vertices, faces)
        neighbour_points = vertices[table]
        mean_neighbour = (neighbour_points * valid[..., None]).sum(axis=1) / counts
        s = mean_neighbour - vertices
        sn_length = np.einsum("ij,ij->i", s, normals)
        sn = sn_length[:, None] * normals
        st = s - sn
        distances = np.linalg.norm(neighbour_points - vertices[:, None, :], axis=2)
        mean_distance = float((distances * valid).sum() / valid.sum())
        curvature_radius = mean_distance**2 / (2.0 * np.maximum(np.abs(sn_length), 1e-9))
        f2 = 0.5 * (1.0 + np.tanh(f * (1.0 / curvature_radius - e)))
        # intensities along the inward normal, from the vertex to d1 inside
        samples = vertices[:, None, :] - steps[None, :, None] * normals[:, None, :]
        samples = np.clip(samples, 0, upper)
        profile = ndi.map_coordinates(volume, samples.reshape(-1, 3).T, order=1, mode="nearest")
        profile = profile.reshape(len(vertices), -1)
        i_min = np.maximum(t2, np.minimum(tm, profile.min(axis=1)))
        i_max = np.minimum(tm, np.maximum(t, profile[:, : d2 + 1].max(axis=1)))
        tl = (i_max - t2) * p.fractional_threshold + t2
        f3 = 2.0 * (i_min - tl) / np.maximum(i_max - t2, 1e-9)
        vertices = (
            vertices
            + 0.5 * st
            + f2[:, None] * sn
            + (0.05 * mean_distance) * (f3[:, None] * normals)
        )
        vertices = np.clip(vertices, 0, upper)
    return vertices, faces


def surface_to_mask(vertices: np.ndarray, faces: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Fill a closed triangle surface (voxel coordinates) into a boolean mask.

    The triangles are sampled densely on a grid twice as fine, the hit cells form a closed
    shell, the shell's inside is filled, and a voxel is inside when at least half of its eight
    cells are (the shell would otherwise bias the mask half a voxel outwards).
    """
    fine = 2
    tri = (vertices[faces] + 0.5) * fine - 0.5
    longest = np.max(np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2))
    n = max(2, int(np.ceil(2.0 * longest)) + 1)
    a, b = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    keep = a + b <= 1.0
    a, b = a[keep], b[keep]
    weights = np.stack([1.0 - a - b, a, b], axis=1)  # (S, 3) barycentric
    fine_shape = tuple(fine * s for s in shape)
    shell = np.zeros(fine_shape, dtype=bool)
    for start in range(0, len(tri), 4096):  # bounded memory
        points = np.einsum("sk,fkd->fsd", weights, tri[start : start + 4096]).reshape(-1, 3)
        index = np.clip(np.rint(points).astype(np.int64), 0, np.array(fine_shape) - 1)
        shell[index[:, 0], index[:, 1], index[:, 2]] = True
    inside = ndi.binary_fill_holes(shell)
    inside &= ~shell | ndi.binary_erosion(inside)  # shell cells count half: drop the outer ones
    blocks = inside.reshape(shape[0], fine, shape[1], fine, shape[2], fine)
    return blocks.mean(axis=(1, 3, 5)) >= 0.5


def bet_mask(
    volume: np.ndarray,
    spacing: float,
    parameters: BetParameters | None = None,
    *,
    should_stop=None,
) -> np.ndarray:
    """Brain mask of an isotropic T1 head image by BET.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Isotropic image (resample anisotropic scans first).
    spacing : float
        Voxel size in mm.
    parameters : BetParameters, optional
    should_stop : callable, optional
        Cooperative cancellation, see :func:`bet_surface`.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    InputError
        Constant image, or the fitted surface encloses almost nothing.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 8:
        raise InputError(f"Brain extraction needs a 3-D volume, got shape {volume.shape}")
    vertices, faces = bet_surface(volume, spacing, parameters, should_stop=should_stop)
    mask = surface_to_mask(vertices, faces, volume.shape)
    if np.count_nonzero(mask) * spacing**3 < 50_000:  # 50 mL: no adult brain is this small
        raise InputError(
            f"Brain extraction found only {np.count_nonzero(mask) * spacing**3 / 1000:.0f} mL of "
            "brain: is this a T1 head scan? Give a brain mask instead"
        )
    return mask

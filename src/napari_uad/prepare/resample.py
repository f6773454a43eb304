"""Resampling between voxel grids through world coordinates, with anti-aliasing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def grid_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes in mm along the three axes of an affine."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def box_grid(
    corners_world: np.ndarray, resolution: float, *, margin_mm: float = 0.0
) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned (RAS) isotropic grid that covers a set of world points.

    Parameters
    ----------
    corners_world : ndarray, shape (N, 3)
        Points to cover, in mm.
    resolution : float
        Voxel size in mm.
    margin_mm : float
        Extra margin on every side.

    Returns
    -------
    shape : tuple of int
    affine : ndarray, shape (4, 4)
        Diagonal voxel-to-world transform (RAS+).
    """
    low = corners_world.min(axis=0) - margin_mm
    high = corners_world.max(axis=0) + margin_mm
    shape = tuple(int(n) for n in np.maximum(np.ceil((high - low) / resolution) + 1, 1))
    affine = np.eye(4)
    affine[:3, :3] *= resolution
    affine[:3, 3] = low
    return shape, affine


def box_corners(shape, affine: np.ndarray, box=None) -> np.ndarray:
    """World coordinates of the eight corners of a voxel box (the whole grid by default).

    ``box`` is ``((i0, i1), (j0, j1), (k0, k1))`` with inclusive end indices.
    """
    if box is None:
        box = [(0, n - 1) for n in shape[:3]]
    corners = np.array([[a, b, c, 1.0] for a in box[0] for b in box[1] for c in box[2]])
    return (np.asarray(affine) @ corners.T).T[:, :3]


def resample(
    volume: np.ndarray,
    source_affine: np.ndarray,
    target_shape,
    target_affine: np.ndarray,
    *,
    order: int = 1,
    world_map: np.ndarray | None = None,
    anti_alias: bool = True,
    fill: float = 0.0,
) -> np.ndarray:
    """Sample a volume on another grid.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Values on the source grid.
    source_affine, target_affine : ndarray, shape (4, 4)
        Voxel-to-world transforms of the two grids.
    target_shape : tuple of int
    order : int
        Spline order: 1 (linear) for images and maps, 0 (nearest) for labels.
    world_map : ndarray, shape (4, 4), optional
        Maps target world coordinates to source world coordinates (an alignment); identity
        when None.
    anti_alias : bool
        Before sampling a coarser grid, smooth along each source axis with a Gaussian of
        ``sigma = (ratio - 1) / 2`` voxels (``ratio`` = target / source voxel size), as
        ``skimage.transform.rescale`` does. Only for ``order >= 1``.
    fill : float
        Value outside the source grid.

    Returns
    -------
    ndarray of float32 (or the input dtype for ``order == 0``), shape `target_shape`
    """
    mapping = np.linalg.inv(np.asarray(source_affine, dtype=np.float64))
    if world_map is not None:
        mapping = mapping @ np.asarray(world_map, dtype=np.float64)
    mapping = mapping @ np.asarray(target_affine, dtype=np.float64)
    if order == 0:
        data = np.asarray(volume)
        return ndi.affine_transform(
            data, mapping[:3, :3], mapping[:3, 3], output_shape=tuple(target_shape), order=0,
            mode="constant", cval=fill,
        )  # fmt: skip
    data = np.asarray(volume, dtype=np.float32)
    if anti_alias:
        # the target voxel's extent along each source axis, in source voxels
        ratio = np.linalg.norm(mapping[:3, :3], axis=1)
        sigma = np.maximum(ratio - 1.0, 0.0) / 2.0
        if np.any(sigma > 0):
            data = ndi.gaussian_filter(data, sigma, mode="nearest")
    return ndi.affine_transform(
        data, mapping[:3, :3], mapping[:3, 3], output_shape=tuple(target_shape), order=order,
        mode="constant", cval=fill, prefilter=False,
    ).astype(np.float32, copy=False)  # fmt: skip

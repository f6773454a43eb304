"""Orientation: RAS+ canonical form and back (flips and axis permutations only)."""

from __future__ import annotations

import warnings

import numpy as np
from nibabel import orientations as nio

from ..io.errors import InputError

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def _check_3d(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"{name} must be 3-D (X, Y, Z), got shape {volume.shape}")
    return volume


def _finite(volume: np.ndarray) -> np.ndarray:
    """The volume with NaN and Inf set to 0 (a copy, with a warning), else the volume itself."""
    bad = ~np.isfinite(volume)
    count = int(np.count_nonzero(bad))
    if not count:
        return volume
    warnings.warn(f"the scan has {count} NaN or Inf voxels: set to 0", stacklevel=3)
    return np.where(bad, 0, volume).astype(volume.dtype, copy=False)


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an array to RAS+ by flips and axis permutations.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, ...)
        Array on the grid of `affine`; axes after the third are carried along.
    affine : ndarray, shape (4, 4)
        Voxel-to-world transform. Oblique affines use the closest world axes.

    Returns
    -------
    data_ras : ndarray, shape (X', Y', Z', ...)
        Contiguous copy in RAS+ orientation.
    orientation : ndarray, shape (3, 2)
        nibabel orientation of the input axes; pass it to `from_canonical`.
    """
    data = np.asarray(data)
    if data.ndim < 3:
        raise InputError(f"Expected a 3-D array, got shape {data.shape}")
    orientation = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    return np.ascontiguousarray(nio.apply_orientation(data, orientation)), orientation


def from_canonical(data_ras: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Undo `to_canonical`: bring an RAS+ array back to the input's orientation.

    Parameters
    ----------
    data_ras : ndarray, shape (X', Y', Z', ...)
        Array in RAS+ orientation.
    orientation : ndarray, shape (3, 2)
        The orientation returned by `to_canonical`.

    Returns
    -------
    ndarray, shape (X, Y, Z, ...)
        Contiguous array on the input's grid; exactly the inverse (no interpolation).
    """
    back = nio.ornt_transform(_RAS, np.asarray(orientation))
    return np.ascontiguousarray(nio.apply_orientation(np.asarray(data_ras), back))


def canonical_affine(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Affine of the RAS+ array that `to_canonical` returns.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Affine of the input array.
    shape : tuple of int
        Shape of the input array (first three entries used).

    Returns
    -------
    ndarray, shape (4, 4)
        Voxel-to-world transform of the reoriented array (same world positions).
    """
    affine = np.asarray(affine, dtype=np.float64)
    orientation = nio.io_orientation(affine)
    return affine @ nio.inv_ornt_aff(orientation, tuple(shape[:3]))


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))

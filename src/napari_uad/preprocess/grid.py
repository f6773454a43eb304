"""Axial slices to the square model grid and back (a box square in millimetres)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.errors import InputError
from .orientation import _check_3d


@dataclass(frozen=True)
class SliceGeometry:
    """How the in-plane axes (0, 1) of an RAS volume map to a square model grid.

    Model pixel ``u`` along axis ``a`` has its centre at voxel coordinate
    ``origin[a] + (u + 0.5) * size[a] / grid`` (voxel ``i`` covers ``[i - 0.5, i + 0.5]``).
    The box ``[origin, origin + size]`` may extend beyond the image (padded with 0).

    Attributes
    ----------
    grid : int
        Model grid size (the model sees grid x grid images).
    origin : tuple of float
        Lower edge of the box in voxel coordinates along axes 0 and 1.
    size : tuple of float
        Box size in voxels along axes 0 and 1; ``size[0] * spacing[0] == size[1] * spacing[1]``.
    spacing : tuple of float
        In-plane voxel sizes in mm.
    shape_xy : tuple of int
        In-plane shape of the volume the geometry was computed for.
    """

    grid: int
    origin: tuple[float, float]
    size: tuple[float, float]
    spacing: tuple[float, float]
    shape_xy: tuple[int, int]

    @property
    def side_mm(self) -> float:
        """Side of the box in mm."""
        return float(self.size[0] * self.spacing[0])

    @property
    def pixel_mm(self) -> float:
        """Size of a model pixel in mm."""
        return self.side_mm / self.grid

    @property
    def step(self) -> tuple[float, float]:
        """Voxels per model pixel along axes 0 and 1."""
        return (self.size[0] / self.grid, self.size[1] / self.grid)


def slice_geometry(
    mask_ras: np.ndarray,
    spacing_ras: tuple[float, ...],
    *,
    grid: int = 128,
    margin: float = 0.04,
) -> SliceGeometry:
    """Compute the box that maps every axial slice of a volume to the model grid.

    Parameters
    ----------
    mask_ras : ndarray of bool, shape (X, Y, Z)
        Brain mask in RAS+ orientation; its union over all slices sets the box.
    spacing_ras : sequence of float
        Voxel sizes in mm of the RAS array (the first two are used).
    grid : int
        Model grid size.
    margin : float
        Margin added on each side, as a fraction of the brain's larger in-plane extent.

    Returns
    -------
    SliceGeometry

    Raises
    ------
    InputError
        Empty mask, bad spacing, grid or margin.
    """
    mask_ras = _check_3d(mask_ras, "brain mask")
    spacing = tuple(float(s) for s in spacing_ras[:2])
    if len(spacing) != 2 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"Voxel sizes must be positive, got {tuple(spacing_ras)}")
    if int(grid) != grid or grid < 2:
        raise InputError(f"The model grid must be an integer >= 2, got {grid}")
    if not 0.0 <= margin < 1.0:
        raise InputError(f"The margin must be in [0, 1), got {margin}")
    footprint = mask_ras.any(axis=2)
    if not footprint.any():
        raise InputError("The brain mask is empty: give a mask that covers the brain")
    centre, extent_mm = [], []
    for axis in (0, 1):
        idx = np.flatnonzero(footprint.any(axis=1 - axis))
        centre.append((idx[0] + idx[-1]) / 2.0)
        extent_mm.append((idx[-1] - idx[0] + 1) * spacing[axis])
    side_mm = max(extent_mm) * (1.0 + 2.0 * margin)
    size = tuple(float(side_mm / s) for s in spacing)
    origin = tuple(float(c - w / 2.0) for c, w in zip(centre, size, strict=True))
    return SliceGeometry(
        grid=int(grid),
        origin=origin,
        size=size,
        spacing=spacing,
        shape_xy=(int(mask_ras.shape[0]), int(mask_ras.shape[1])),
    )


def to_model_grid(
    volume_ras: np.ndarray,
    geometry: SliceGeometry,
    *,
    indices: np.ndarray | list[int] | None = None,
    order: int = 1,
) -> np.ndarray:
    """Sample axial slices of an RAS volume on the model grid.

    Parameters
    ----------
    volume_ras : ndarray, shape (X, Y, Z)
        Volume in RAS+ orientation.
    geometry : SliceGeometry
        From `slice_geometry`.
    indices : sequence of int, optional
        Axial slices to take (default: all Z).
    order : int
        Interpolation order: 1 linear (images), 0 nearest (masks). No anti-aliasing.

    Returns
    -------
    ndarray, shape (N, grid, grid)
        float32; bool (nearest neighbour) when `volume_ras` is bool. Axis 1 follows RAS axis 0,
        axis 2 RAS axis 1. Samples outside the image are 0.
    """
    volume_ras = _check_3d(volume_ras)
    _check_shape_xy(volume_ras.shape[:2], geometry)
    is_bool = volume_ras.dtype == np.bool_
    order = 0 if is_bool else _check_order(order)
    if indices is None:
        indices = np.arange(volume_ras.shape[2])
    indices = np.asarray(indices, dtype=int).reshape(-1)
    stack = np.moveaxis(volume_ras, 2, 0)[indices].astype(np.float32)
    centres = np.arange(geometry.grid) + 0.5
    wx, wy = (
        _interpolation_weights(
            geometry.origin[a] + centres * geometry.step[a],
            volume_ras.shape[a],
            order=order,
            clamp=False,
        )
        for a in (0, 1)
    )
    out = _resample_planes(stack, wx, wy)
    return out > 0.5 if is_bool else out


def from_model_grid(
    model_slices: np.ndarray,
    geometry: SliceGeometry,
    *,
    shape_xy: tuple[int, int] | None = None,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Map model-grid slices back onto the volume's in-plane grid (inverse of `to_model_grid`).

    Parameters
    ----------
    model_slices : ndarray, shape (N, grid, grid) or (N, 1, grid, grid)
        Slices on the model grid, axes as returned by `to_model_grid`.
    geometry : SliceGeometry
        The geometry used to make them.
    shape_xy : tuple of int, optional
        In-plane shape (X, Y) of the RAS volume; default ``geometry.shape_xy``.
    order : int
        Interpolation order: 1 linear, 0 nearest (used for bool input).
    fill : float
        Value for voxels outside the box.

    Returns
    -------
    ndarray, shape (X, Y, N)
        float32 (bool for bool input). Exactly `shape_xy` in-plane, whatever the box.
    """
    model_slices = _check_model_slices(model_slices, geometry.grid)
    shape_xy = geometry.shape_xy if shape_xy is None else tuple(int(s) for s in shape_xy)
    is_bool = model_slices.dtype == np.bool_
    order = 0 if is_bool else _check_order(order)
    weights, inside = [], []
    for a in (0, 1):
        positions = (np.arange(shape_xy[a]) - geometry.origin[a]) / geometry.step[a] - 0.5
        weights.append(_interpolation_weights(positions, geometry.grid, order=order, clamp=True))
        inside.append((positions >= -0.5) & (positions <= geometry.grid - 0.5))
    out = np.moveaxis(_resample_planes(model_slices.astype(np.float32), *weights), 0, 2)
    box = np.outer(inside[0], inside[1])[:, :, None]
    if is_bool:
        return (out > 0.5) & box
    return np.where(box, out, np.float32(fill)).astype(np.float32, copy=False)


def _resample_planes(stack: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """Apply separable weights to planes: (N, A, B), (P, A), (Q, B) -> (N, P, Q)."""
    n, a, b = stack.shape
    partial = (stack.reshape(n * a, b) @ wb.T).reshape(n, a, wb.shape[0])
    return np.ascontiguousarray(np.tensordot(wa, partial, axes=([1], [1])).transpose(1, 0, 2))


def _check_order(order: int) -> int:
    if order not in (0, 1):
        raise InputError(f"Interpolation order must be 0 (nearest) or 1 (linear), got {order}")
    return int(order)


def _interpolation_weights(positions: np.ndarray, n: int, *, order: int, clamp: bool) -> np.ndarray:
    """Matrix (len(positions), n) sampling a length-n signal at `positions` (voxel centres at
    0 .. n-1). Outside the signal: nearest sample if `clamp`, else zero."""
    weights = np.zeros((positions.size, n), dtype=np.float32)
    rows = np.arange(positions.size)
    if clamp:
        positions = np.clip(positions, 0, n - 1)
    if order == 0:
        index = np.floor(positions + 0.5).astype(int)
        ok = (index >= 0) & (index < n)
        weights[rows[ok], index[ok]] = 1.0
        return weights
    left = np.floor(positions).astype(int)
    frac = (positions - left).astype(np.float32)
    for index, w in ((left, 1.0 - frac), (left + 1, frac)):
        ok = (index >= 0) & (index < n) & (w > 0)
        weights[rows[ok], index[ok]] += w[ok]
    return weights


def _check_shape_xy(shape_xy: tuple[int, ...], geometry: SliceGeometry) -> None:
    if tuple(shape_xy) != tuple(geometry.shape_xy):
        raise InputError(
            f"In-plane shape {tuple(shape_xy)} differs from the geometry's {geometry.shape_xy}"
        )


def _check_model_slices(model_slices: np.ndarray, grid: int) -> np.ndarray:
    model_slices = np.asarray(model_slices)
    if model_slices.ndim == 4 and model_slices.shape[1] == 1:
        model_slices = model_slices[:, 0]
    if model_slices.ndim != 3 or model_slices.shape[1:] != (grid, grid):
        raise InputError(
            f"Model slices must have shape (N, {grid}, {grid}), got {model_slices.shape}"
        )
    return model_slices

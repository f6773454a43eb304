"""Preprocessing between a scan's voxel grid and the 2-D model grid, and the exact way back.

Conventions
-----------
- Processing happens in RAS+ canonical orientation, reached by flips and axis permutations only
  (no resampling): array axis 0 runs left -> right, axis 1 posterior -> anterior, axis 2
  inferior -> superior. Axial slices are the last axis.
- Model-side slice stacks have shape (N, grid, grid): axis 0 is the slice, axis 1 follows RAS
  axis 0 (left -> right) and axis 2 follows RAS axis 1 (posterior -> anterior).
- A slice is mapped to the model grid through a box that is square in millimetres, centred on
  the brain's bounding box (union over all slices), so anisotropic voxels are not distorted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage as ndi

from .io.errors import InputError
from .io.limits import check_size
from .io.scan import Scan

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


def estimate_scan_brain_mask(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """:func:`estimate_brain_mask` of a scan as detection computes it: on the RAS+ volume (so
    its hole filling works on axial slices whatever the file's axis order), NaN and Inf as 0,
    returned on the file's grid.

    Parameters
    ----------
    data : (X, Y, Z) ndarray
        The scan on its file grid.
    affine : (4, 4) ndarray

    Returns
    -------
    (X, Y, Z) bool ndarray
    """
    data = _check_3d(data, "scan data")
    data = np.where(np.isfinite(data), data, 0)  # silently: detection warns about them
    data_ras, orientation = to_canonical(data, affine)
    return from_canonical(estimate_brain_mask(data_ras), orientation)


def estimate_brain_mask(volume: np.ndarray, *, threshold: float | None = None) -> np.ndarray:
    """Estimate the brain (foreground) mask of a skull-stripped scan.

    Foreground is ``volume > threshold``, followed by a binary closing, hole filling in each
    axial slice (last axis) and in 3-D, and keeping the largest connected component.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Scan intensities, preferably in RAS+ orientation (axial slices along the last axis).
    threshold : float, optional
        Intensity threshold. By default it is chosen from the data: 5 % of the robust range
        (0.5th to 99.5th percentile), raised above the background noise where the background
        is noisy (six times the 20th percentile's height above the 0.5th, about four standard
        deviations of magnitude-MRI noise), but never above the Otsu threshold.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    InputError
        The volume is constant or no voxel is above the threshold.
    """
    volume = _check_3d(volume)
    values = volume[np.isfinite(volume)].astype(np.float32, copy=False)
    if values.size == 0 or values.min() == values.max():
        raise InputError("The scan is constant: cannot estimate a brain mask; give a brain mask")
    if threshold is None:
        threshold = _default_threshold(values)
    foreground = np.isfinite(volume) & (volume > threshold)
    if not foreground.any():
        raise InputError(
            f"No voxel is above the brain threshold {threshold:.4g}: give a brain mask or a lower "
            "threshold"
        )
    pad = 2
    structure = ndi.generate_binary_structure(3, 1)
    padded = np.pad(foreground, pad)
    padded = ndi.binary_closing(padded, structure=structure, iterations=pad)
    mask = padded[pad:-pad, pad:-pad, pad:-pad]
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    mask = ndi.binary_fill_holes(mask)
    labels, count = ndi.label(mask, structure=structure)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask


def _default_threshold(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    step = max(1, values.size // 2_000_000)
    sample = values[::step].astype(np.float64)  # float64: extreme intensities do not overflow
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    frac = lo + 0.05 * (hi - lo)
    otsu = float(threshold_otsu(np.clip(sample, lo, hi)))
    dark = float(np.percentile(sample, 20))
    noise = lo + 6.0 * max(dark - lo, 0.0)
    return float(max(frac, min(noise, otsu)))


def intensity_range(
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
) -> tuple[float, float]:
    """The intensities at two percentiles inside a mask (the range mapped to [0, 1]).

    Raises
    ------
    InputError
        Bad percentiles, shape mismatch, empty mask, or constant intensities inside the mask.
    """
    volume = np.asarray(volume)
    mask = np.asarray(mask, dtype=bool)
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise InputError(
            f"Percentiles must satisfy 0 <= lower < upper <= 100, got {lower_percentile} and "
            f"{upper_percentile}"
        )
    if mask.shape != volume.shape:
        raise InputError(f"Mask shape {mask.shape} differs from the scan's {volume.shape}")
    inside = volume[mask].astype(np.float64)
    if inside.size == 0:
        raise InputError("The brain mask is empty: give a mask that covers the brain")
    lo, hi = np.percentile(inside, [lower_percentile, upper_percentile])
    if not hi > lo:
        raise InputError(
            "The scan is constant inside the brain mask: check the scan and the brain mask"
        )
    return float(lo), float(hi)


def normalise_intensity(
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Clip and scale intensities to [0, 1] by percentiles inside a mask.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Intensities.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; percentiles are computed over its voxels.
    lower_percentile, upper_percentile : float
        Percentiles (0-100) mapped to 0 and 1.
    value_range : (float, float), optional
        The intensities mapped to 0 and 1, when already known (see `intensity_range`).

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
        Values in [0, 1] inside the mask, 0 outside.

    Raises
    ------
    InputError
        Bad percentiles, shape mismatch, empty mask, or constant intensities inside the mask.
    """
    if value_range is None:
        value_range = intensity_range(
            volume, mask, lower_percentile=lower_percentile, upper_percentile=upper_percentile
        )
    lo, hi = value_range
    mask = np.asarray(mask, dtype=bool)
    inside = np.asarray(volume)[mask].astype(np.float64)
    out = np.zeros(mask.shape, dtype=np.float32)
    out[mask] = np.clip((inside - lo) / (hi - lo), 0.0, 1.0)
    return out


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


def slices_with_brain(mask_ras: np.ndarray, *, min_fraction: float = 0.02) -> np.ndarray:
    """Axial slices that contain enough brain.

    Parameters
    ----------
    mask_ras : ndarray of bool, shape (X, Y, Z)
        Brain mask in RAS+ orientation.
    min_fraction : float
        Keep slices whose brain area is at least this fraction of the largest slice's.

    Returns
    -------
    ndarray of int, shape (N,)
        Increasing slice indices along the last axis.
    """
    mask_ras = _check_3d(mask_ras, "brain mask")
    if not 0.0 <= min_fraction <= 1.0:
        raise InputError(f"min_fraction must be in [0, 1], got {min_fraction}")
    areas = mask_ras.reshape(-1, mask_ras.shape[2]).sum(axis=0)
    if areas.max() == 0:
        raise InputError("The brain mask is empty: give a mask that covers the brain")
    return np.flatnonzero((areas > 0) & (areas >= min_fraction * areas.max()))


@dataclass
class PreparedVolume:
    """A scan prepared for a 2-D model, with everything needed to map results back.

    Attributes
    ----------
    scan : Scan
        The input scan.
    orientation : ndarray, shape (3, 2)
        Orientation of the input axes (see `to_canonical`).
    affine_ras : ndarray, shape (4, 4)
        Affine of the RAS+ arrays.
    normalised : ndarray of float32, shape (X', Y', Z')
        RAS+ intensities in [0, 1], 0 outside the brain.
    brain_mask_ras : ndarray of bool, shape (X', Y', Z')
        RAS+ brain mask.
    geometry : SliceGeometry
        Box mapping RAS slices to the model grid.
    slice_indices : ndarray of int, shape (N,)
        RAS axial slices that were processed.
    model_slices : ndarray of float32, shape (N, grid, grid)
        Normalised slices on the model grid (the model's input).
    mask_model : ndarray of bool, shape (N, grid, grid)
        Brain mask on the model grid.
    intensity_range : (float, float)
        Scan intensities mapped to 0 and 1 (to map restorations back to the scan's units).
    """

    scan: Scan
    orientation: np.ndarray
    affine_ras: np.ndarray
    normalised: np.ndarray
    brain_mask_ras: np.ndarray
    geometry: SliceGeometry
    slice_indices: np.ndarray
    model_slices: np.ndarray
    mask_model: np.ndarray
    intensity_range: tuple[float, float]

    @property
    def grid(self) -> int:
        """Model grid size."""
        return self.geometry.grid

    @property
    def spacing_ras(self) -> tuple[float, float, float]:
        """Voxel sizes in mm of the RAS+ arrays."""
        return _spacing(self.affine_ras)

    @property
    def brain_mask_input(self) -> np.ndarray:
        """Brain mask on the input scan's grid, bool (X, Y, Z)."""
        return from_canonical(self.brain_mask_ras, self.orientation)

    def to_input_grid(
        self, model_slices: np.ndarray, *, order: int = 1, fill: float = 0.0
    ) -> np.ndarray:
        """Map model-grid results back onto the input scan's grid.

        Parameters
        ----------
        model_slices : ndarray, shape (N, grid, grid) or (N, 1, grid, grid)
            One result per entry of `slice_indices`, axes as `model_slices`.
        order : int
            1 linear (images, maps), 0 nearest; bool input gives a bool output.
        fill : float
            Value outside the processed slices and outside the box.

        Returns
        -------
        ndarray, shape (X, Y, Z)
            float32 (or bool) on the input's grid and orientation, ready for `write_nifti`.
        """
        model_slices = _check_model_slices(model_slices, self.grid)
        if model_slices.shape[0] != self.slice_indices.size:
            raise InputError(
                f"Got {model_slices.shape[0]} model slices, expected {self.slice_indices.size}"
            )
        planes = from_model_grid(model_slices, self.geometry, order=order, fill=fill)
        if planes.dtype == np.bool_:
            volume = np.zeros(self.normalised.shape, dtype=bool)
        else:
            volume = np.full(self.normalised.shape, fill, dtype=np.float32)
        volume[:, :, self.slice_indices] = planes
        return from_canonical(volume, self.orientation)


def prepare_volume(
    scan: Scan,
    *,
    brain_mask: np.ndarray | None = None,
    grid: int = 128,
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
    min_fraction: float = 0.02,
) -> PreparedVolume:
    """Reorient, mask, normalise and resample a scan's axial slices to the model grid.

    Parameters
    ----------
    scan : Scan
        Input scan, ``data`` of shape (X, Y, Z).
    brain_mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask on the scan's grid; estimated with `estimate_brain_mask` when None.
    grid : int
        Model grid size.
    lower_percentile, upper_percentile : float
        Intensity normalisation percentiles inside the brain.
    min_fraction : float
        Slices with less brain than this fraction of the largest slice are skipped.

    Returns
    -------
    PreparedVolume
        ``model_slices`` (N, grid, grid) are the model's input; map results back with
        `PreparedVolume.to_input_grid`.

    Raises
    ------
    InputError
        Bad mask, constant scan or options.
    """
    data = _check_3d(scan.data, "scan data")
    check_size(data.shape)
    data = _finite(data)
    data_ras, orientation = to_canonical(data, scan.affine)
    affine_ras = canonical_affine(scan.affine, data.shape)
    if brain_mask is None:
        mask_ras = estimate_brain_mask(data_ras)
    else:
        brain_mask = np.asarray(brain_mask)
        if brain_mask.shape != data.shape:
            raise InputError(
                f"Brain mask has shape {brain_mask.shape} but the scan has shape {data.shape}: "
                "give a mask on the scan's voxel grid"
            )
        mask_ras, _ = to_canonical(brain_mask.astype(bool), scan.affine)
        if not mask_ras.any():
            raise InputError("The brain mask is empty: give a mask that covers the brain")
    value_range = intensity_range(
        data_ras, mask_ras, lower_percentile=lower_percentile, upper_percentile=upper_percentile
    )
    normalised = normalise_intensity(data_ras, mask_ras, value_range=value_range)
    geometry = slice_geometry(mask_ras, _spacing(affine_ras), grid=grid)
    indices = slices_with_brain(mask_ras, min_fraction=min_fraction)
    return PreparedVolume(
        scan=scan,
        orientation=orientation,
        affine_ras=affine_ras,
        normalised=normalised,
        brain_mask_ras=mask_ras,
        geometry=geometry,
        slice_indices=indices,
        model_slices=to_model_grid(normalised, geometry, indices=indices),
        mask_model=to_model_grid(mask_ras, geometry, indices=indices),
        intensity_range=value_range,
    )

"""A whole scan prepared for a model: orientation, brain mask, intensity, model grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.errors import InputError
from ..io.limits import check_size
from ..io.scan import Scan
from .brain_mask import estimate_brain_mask, slices_with_brain
from .grid import SliceGeometry, _check_model_slices, from_model_grid, slice_geometry, to_model_grid
from .intensity import intensity_range, normalise_intensity
from .orientation import (
    _check_3d,
    _finite,
    _spacing,
    canonical_affine,
    from_canonical,
    to_canonical,
)


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

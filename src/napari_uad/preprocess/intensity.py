"""Intensity range and normalisation of a scan's brain."""

from __future__ import annotations

import numpy as np

from ..io.errors import InputError


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

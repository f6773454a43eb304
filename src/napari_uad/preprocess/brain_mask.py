"""Brain masks of skull-stripped scans, and the axial slices with enough brain."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..io.errors import InputError
from .orientation import _check_3d, from_canonical, to_canonical


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

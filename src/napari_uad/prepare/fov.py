"""The head in a scan's field of view, and a crop that drops the neck."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..io.errors import InputError


def largest_component(mask: np.ndarray, *, empty: str) -> np.ndarray:
    """The largest connected component of a mask; InputError `empty` when there is none."""
    labels, count = ndi.label(mask)
    if count == 0:
        raise InputError(empty)
    if count == 1:
        return labels == 1
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels of the head (anything above the air), as one filled component.

    Otsu threshold of the lightly smoothed, robustly clipped image; the largest component,
    closed and with holes filled per axial slice and in 3-D.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        RAS+ image (axial slices along the last axis).

    Returns
    -------
    ndarray of bool
    """
    from skimage.filters import threshold_otsu

    volume = np.asarray(volume, dtype=np.float32)
    smooth = ndi.gaussian_filter(volume, 1.0)
    sample = smooth.ravel()[:: max(1, smooth.size // 2_000_000)]
    low, high = np.percentile(sample, [0.5, 99.5])
    if high <= low:
        raise InputError("The scan is constant: there is no head to find")
    threshold = 0.5 * threshold_otsu(np.clip(sample, low, high))
    mask = largest_component(
        smooth > max(threshold, low + 0.02 * (high - low)),
        empty="No head found in the scan (nothing above the background)",
    )
    mask = ndi.binary_closing(np.pad(mask, 3), iterations=3)[3:-3, 3:-3, 3:-3]
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    return ndi.binary_fill_holes(mask)


def head_box(
    mask: np.ndarray, spacing, *, height_mm: float = 180.0, margin_mm: float = 5.0
) -> tuple[tuple[int, int], ...]:
    """The voxel box of the head without the neck: `height_mm` down from the top of the head.

    Like FSL's ``robustfov`` (which keeps 170 mm): an adult brain with its cerebellum is about
    120-140 mm high, so 180 mm keeps it whole even when the head is tilted, and drops most of the
    neck that misleads skull stripping.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
        RAS+ head mask (see :func:`head_mask`).
    spacing : sequence of 3 float
        Voxel sizes in mm.
    height_mm, margin_mm : float
        Height kept below the top; margin kept around the head in-plane and above it.

    Returns
    -------
    tuple of three (start, stop) pairs
        Inclusive index ranges along each axis.
    """
    box = list(mask_box(mask, spacing, margin_mm=margin_mm))
    top = np.flatnonzero(mask.any(axis=(0, 1)))[-1]
    start, stop = box[2]
    box[2] = (max(start, int(top - np.ceil(height_mm / float(spacing[2])))), stop)
    return tuple(box)


def mask_box(mask: np.ndarray, spacing=(1.0, 1.0, 1.0), *, margin_mm: float = 0.0):
    """The voxel box of a mask's voxels, widened by `margin_mm` and kept inside the grid.

    Returns
    -------
    tuple of three (first, last) pairs
        Inclusive index ranges along each axis.
    """
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        pad = int(np.ceil(margin_mm / float(spacing[axis])))
        box.append(
            (int(max(0, present[0] - pad)), int(min(mask.shape[axis] - 1, present[-1] + pad)))
        )
    return tuple(box)

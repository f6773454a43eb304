"""N4 bias-field correction (Tustison et al. 2010) with SimpleITK."""

from __future__ import annotations

import numpy as np

from ..io.errors import InputError


def _to_sitk(volume: np.ndarray, spacing):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def n4_correct(
    volume: np.ndarray,
    mask: np.ndarray,
    spacing,
    *,
    shrink_mm: float = 4.0,
    iterations: tuple[int, ...] = (50, 50, 30),
) -> tuple[np.ndarray, np.ndarray]:
    """Remove a smooth multiplicative intensity bias (N4).

    The field is fitted on a copy shrunk to about `shrink_mm` voxels (N4's usual speed-up) and
    evaluated on the full grid.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Non-negative intensities.
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels the field is fitted on (the head, or the brain).
    spacing : sequence of 3 float
        Voxel sizes in mm.
    shrink_mm : float
        Voxel size at which the field is fitted.
    iterations : tuple of int
        Iterations per fitting level (one entry per level).

    Returns
    -------
    corrected : ndarray of float32
        ``volume / field``.
    field : ndarray of float32
        The multiplicative bias field, near 1.

    Raises
    ------
    InputError
        If SimpleITK is missing or the mask is empty.
    """
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - a dependency
        raise InputError(
            "N4 bias correction needs SimpleITK: pip install SimpleITK, or skip the step"
        ) from None
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("N4 bias correction got an empty mask")
    volume = np.asarray(volume, dtype=np.float32)
    offset = max(0.0, -float(volume.min())) + 1e-3 * float(np.percentile(volume[mask], 99))
    image = _to_sitk(volume + offset, spacing)
    mask_image = _to_sitk(mask.astype(np.uint8), spacing)
    factor = [max(1, int(round(shrink_mm / s))) for s in spacing]
    small = sitk.Shrink(image, factor)
    small_mask = sitk.Shrink(mask_image, factor)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image)).transpose(2, 1, 0)
    field = np.exp(log_field).astype(np.float32)
    # keep the brain's overall intensity scale: the field has mean 1 inside the mask
    field /= float(np.mean(field[mask]))
    corrected = (volume / field).astype(np.float32)
    return corrected, field

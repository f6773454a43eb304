"""Loading one case: scan, brain mask (given or estimated), truth, and what was read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.errors import InputError
from ..io.nifti import NIFTI_EXTENSIONS
from ..io.scan import Scan
from .names import scan_stem


@dataclass(frozen=True)
class ScanInfo:
    """What was read, as shown in the Load widget's info panel.

    Attributes
    ----------
    name : str
    format : {'NIfTI', 'DICOM', 'image'}
    shape : tuple of int
        On the file's grid (X, Y, Z).
    voxel_size : tuple of float
        Voxel sizes in mm along the file's axes.
    orientation : str
        Axis codes of the file's axes, e.g. ``"LAS"``.
    intensity_range : (float, float)
        Minimum and maximum value (after DICOM rescaling / NIfTI scaling).
    dtype : str
        Data type stored in the file (e.g. ``"int16"``).
    brain_mask : {'given', 'estimated'}
    brain_volume_ml : float
    truth : bool
        Whether a ground-truth lesion mask was given.
    """

    name: str
    format: str
    shape: tuple[int, ...]
    voxel_size: tuple[float, ...]
    orientation: str
    intensity_range: tuple[float, float]
    dtype: str
    brain_mask: str
    brain_volume_ml: float
    truth: bool

    def rows(self) -> list[tuple[str, str]]:
        """(label, text) pairs for display, in reading order."""
        low, high = self.intensity_range
        return [
            ("Scan", f"{self.name} ({self.format})"),
            ("Shape", " × ".join(str(s) for s in self.shape)),
            ("Voxel size", " × ".join(f"{v:.3g}" for v in self.voxel_size) + " mm"),
            ("Orientation", self.orientation),
            ("Intensities", f"{low:.4g} … {high:.4g}"),
            ("Data type", self.dtype),
            ("Brain mask", f"{self.brain_mask}, {self.brain_volume_ml:.4g} mL"),
            ("Truth mask", "given" if self.truth else "none"),
        ]


@dataclass
class LoadedCase:
    """A scan with its brain mask and truth, ready to show or process.

    Attributes
    ----------
    scan : Scan
    brain_mask : (X, Y, Z) bool ndarray
        On the scan's grid.
    truth : (X, Y, Z) uint8 ndarray or None
        Ground-truth lesion labels on the scan's grid.
    info : ScanInfo
    brain_slices : (N,) int ndarray
        Axial slices with brain, as display Z indices (equal to RAS+ slice indices, the
        ``slices`` argument of :func:`napari_uad.pipeline.iter_detect`).
    notes : list of str
        Warnings worth showing the user (e.g. the scan does not look skull-stripped).
    """

    scan: Scan
    brain_mask: np.ndarray
    truth: np.ndarray | None
    info: ScanInfo
    brain_slices: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def brain_span(self) -> tuple[int, int]:
        """(start, stop) of the slices with brain, in display Z (stop exclusive)."""
        if self.brain_slices.size == 0:
            return (0, int(self.scan.shape[2]))
        return (int(self.brain_slices[0]), int(self.brain_slices[-1]) + 1)


def load_case(
    scan: str | os.PathLike,
    *,
    brain_mask: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
) -> LoadedCase:
    """Read a scan, its brain mask (estimated when not given) and its truth mask.

    Parameters
    ----------
    scan : str or path-like
        NIfTI file, DICOM series folder or ``.dcm`` file of a series.
    brain_mask, truth : str or path-like, optional
        Mask files on the scan's grid (voxels > 0.5 inside; truth labels are kept as integers).

    Returns
    -------
    LoadedCase

    Raises
    ------
    InputError
        A file cannot be read, a mask's shape differs from the scan's, the scan is not 3-D,
        or no brain mask can be estimated (constant scan).
    """
    import warnings

    from ..io import read_mask, read_scan
    from ..preprocess import slices_with_brain, to_canonical

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_scan(scan)
        if image.data.ndim != 3:
            raise InputError(f"{scan_stem(scan)} is not a volume (shape {image.shape})")
        if brain_mask:
            mask = read_mask(brain_mask, like=image)
            if not mask.any():
                raise InputError(f"The brain mask {Path(brain_mask).name} is empty")
            mask_source = "given"
        else:
            mask, notes = estimate_case_brain_mask(image)
            mask_source = "estimated"
        labels = None
        if truth:
            labels = _read_labels(truth, like=image)
    notes[:0] = [str(w.message) for w in caught]

    mask_ras, _ = to_canonical(mask, image.affine)
    brain_slices = slices_with_brain(mask_ras)
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    info = ScanInfo(
        name=scan_stem(scan),
        format=_format_name(Path(scan)),
        shape=tuple(int(s) for s in image.shape),
        voxel_size=tuple(float(v) for v in image.spacing),
        orientation="".join(axis_codes(image.affine)),
        intensity_range=(float(image.data.min()), float(image.data.max())),
        dtype=str(image.header.get_data_dtype()) if image.header is not None else "float32",
        brain_mask=mask_source,
        brain_volume_ml=float(mask.sum()) * voxel_ml,
        truth=labels is not None,
    )
    return LoadedCase(
        scan=image,
        brain_mask=mask,
        truth=labels,
        info=info,
        brain_slices=brain_slices,
        notes=notes,
    )


def _read_labels(path, *, like: Scan) -> np.ndarray:
    from ..io import read_scan

    labels = read_scan(path)
    if labels.shape != like.shape:
        raise InputError(
            f"Truth mask {Path(path).name} has shape {labels.shape} but the scan has shape "
            f"{like.shape}: give a mask on the scan's voxel grid"
        )
    values = np.rint(np.clip(labels.data, 0, 255)).astype(np.uint8)
    if values.max() == 0:
        raise InputError(f"The truth mask {Path(path).name} is empty")
    return values


def axis_codes(affine) -> tuple[str, ...]:
    """The axis codes of an affine's voxel axes, e.g. ``("L", "A", "S")`` (``?`` if oblique)."""
    import nibabel as nib

    return tuple(c or "?" for c in nib.aff2axcodes(affine))


def _format_name(path: Path) -> str:
    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return "DICOM"
    if path.name.lower().endswith(NIFTI_EXTENSIONS):
        return "NIfTI"
    return "image"


def skull_stripped_warning(
    volume: np.ndarray, affine: np.ndarray | None = None, *, brain_mask: np.ndarray | None = None
) -> str | None:
    """A message when a scan still has skull or neck inside its brain mask, else None.

    The core check of every detection, :func:`napari_uad.checks.skull_warning` (mask volume,
    field-of-view edges, a bright scalp rim, noisy air), on the scan and its brain mask.

    Parameters
    ----------
    volume : (X, Y, Z) ndarray
    affine : (4, 4) ndarray, optional
        The scan's affine (identity, 1 mm voxels, when None).
    brain_mask : (X, Y, Z) bool ndarray, optional
        On the scan's grid; estimated when None.

    Returns
    -------
    str or None
    """
    from ..checks import skull_warning
    from ..preprocess import canonical_affine, estimate_brain_mask, to_canonical

    volume = np.asarray(volume)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    ras, _ = to_canonical(volume, affine)
    if brain_mask is None:
        mask = estimate_brain_mask(ras)
    else:
        mask = to_canonical(np.asarray(brain_mask, dtype=bool), affine)[0]
    spacing = np.linalg.norm(canonical_affine(affine, volume.shape)[:3, :3], axis=0)
    return skull_warning(ras, mask, tuple(spacing), mask_given=brain_mask is not None)


def estimate_case_brain_mask(scan: Scan) -> tuple[np.ndarray, list[str]]:
    """Estimate a scan's brain mask on its own grid, with the notes to show the user.

    Parameters
    ----------
    scan : Scan

    Returns
    -------
    mask : (X, Y, Z) bool ndarray
    notes : list of str
        The skull-and-neck warning of :func:`napari_uad.checks.skull_warning`, if any.
    """
    from ..checks import skull_warning
    from ..preprocess import canonical_affine, estimate_brain_mask, from_canonical, to_canonical

    ras, orientation = to_canonical(scan.data, scan.affine)
    mask_ras = estimate_brain_mask(ras)
    spacing = np.linalg.norm(canonical_affine(scan.affine, scan.shape)[:3, :3], axis=0)
    message = skull_warning(ras, mask_ras, tuple(spacing))
    return from_canonical(mask_ras, orientation), [message] if message else []


def check_slice_range(start: int, stop: int, n_slices: int) -> tuple[int, int]:
    """Validate a slice range in display Z (stop exclusive).

    Parameters
    ----------
    start, stop : int
        First slice and one past the last.
    n_slices : int
        Number of axial slices of the scan.

    Returns
    -------
    (int, int)

    Raises
    ------
    InputError
        Empty or out-of-bounds range.
    """
    start, stop = int(start), int(stop)
    if not 0 <= start < stop <= n_slices:
        raise InputError(
            f"Slice range {start}..{stop - 1} is not within the scan's slices 0..{n_slices - 1}"
        )
    return start, stop

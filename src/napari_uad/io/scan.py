"""The `Scan` object: an image array on the file's voxel grid with its affine and header."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np


@dataclass
class Scan:
    """An image on the voxel grid of the file it came from.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z), float32
        Voxel values in the file's own orientation. 2-D images are stored as (H, W, 1).
    affine : ndarray, shape (4, 4), float64
        Voxel-to-world (mm) transform.
    header : nibabel.Nifti1Header or None
        Header of the source NIfTI file; None for 2-D image files and arrays.
    source : Path or None
        File the scan was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must have shape (4, 4), got {self.affine.shape}")
        if self.source is not None:
            self.source = Path(self.source)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of `data`."""
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes in mm along the three array axes (norms of the affine's columns)."""
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in sizes)

    def with_data(self, array: np.ndarray) -> Scan:
        """Return a scan with the same affine, header and source and new `data`.

        Parameters
        ----------
        array : ndarray, shape (X, Y, Z)
            New voxel values on the same grid; kept as given (no dtype conversion).
        """
        array = np.asarray(array)
        if array.shape != self.data.shape:
            raise ValueError(f"new data has shape {array.shape}, the scan has {self.data.shape}")
        return replace(self, data=array)

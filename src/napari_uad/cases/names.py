"""File names and suffixes the cases and their results use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..io.nifti import nifti_stem

Status = Literal["not run", "done", "reviewed"]
STATUSES: tuple[str, ...] = ("not run", "done", "reviewed")
RESULTS_FOLDER = "napari-uad-results"
STATE_FILE = "napari-uad-review.json"
LAYERS_FILE = "layers.json"

BRAIN_MASK_SUFFIXES = ("_brain_mask", "_brainmask", "_brain-mask")
TRUTH_SUFFIXES = ("_truth", "_seg", "_lesion_mask", "_lesions", "_gt")
OUTPUT_SUFFIXES = ("_healthy", "_anomaly", "_mask")


def scan_stem(path: str | os.PathLike) -> str:
    """A short name for a scan path: file name without extension, or the DICOM folder's name.

    Parameters
    ----------
    path : str or path-like
        NIfTI file, DICOM folder, or one ``.dcm`` file of a series (named after its folder).

    Returns
    -------
    str
    """
    path = Path(path)
    if path.is_dir():
        return path.name
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return path.parent.name
    return nifti_stem(path)

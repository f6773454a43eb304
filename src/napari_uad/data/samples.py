"""Paths of the sample scans shipped with the package (built by ``scripts/make_sample_data.py``).

All four files share one grid: an axial slab of 24 slices at 1 mm (153 x 189 x 24 voxels) of
the MNI ICBM152 2009 template through the lateral ventricles, with the template's RAS affine
restricted to the slab. See ``sample_data/LICENSE_MNI152.txt`` for the template's licence.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLE_FILES", "sample_path"]

SAMPLE_FILES = {
    "healthy": "healthy_t1.nii.gz",
    "lesion": "lesion_t1.nii.gz",
    "lesion_truth": "lesion_truth.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
}

_FOLDER = Path(__file__).resolve().parents[1] / "sample_data"


def sample_path(name: str) -> Path:
    """Path of a sample file.

    Parameters
    ----------
    name : {'healthy', 'lesion', 'lesion_truth', 'brain_mask'}
        ``'healthy'``: skull-stripped T1 (int16, 0..1000); ``'lesion'``: the same scan with one
        synthetic tumour and a few MS-like lesions; ``'lesion_truth'``: their mask (uint8 0/1);
        ``'brain_mask'``: the brain mask (uint8 0/1).

    Returns
    -------
    Path
        Path of the ``.nii.gz`` file inside the installed package.

    Raises
    ------
    ValueError
        For an unknown name.
    FileNotFoundError
        When the package was installed without its sample data.
    """
    if name not in SAMPLE_FILES:
        raise ValueError(f"unknown sample {name!r}: choose one of {', '.join(SAMPLE_FILES)}")
    path = _FOLDER / SAMPLE_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"sample file {path} is missing: reinstall napari-uad or run "
            "scripts/make_sample_data.py"
        )
    return path

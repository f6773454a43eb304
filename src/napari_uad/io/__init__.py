"""Reading and writing scans: NIfTI volumes, 2-D images, masks and outputs on the input grid."""

from .errors import InputError
from .nifti import nifti_stem, read_mask, read_scan, write_nifti
from .scan import Scan

__all__ = ["InputError", "Scan", "nifti_stem", "read_mask", "read_scan", "write_nifti"]

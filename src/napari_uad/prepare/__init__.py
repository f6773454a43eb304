"""Preparing raw scanner T1s for the models: crop, N4, skull stripping, alignment, resampling.

``napari-uad prepare``, ``napari-uad restore --prepare`` and the Load widget's Prepare button
all call :func:`prepare_scan`; :meth:`PreparedScan.to_input` maps results back onto the input's
grid. Needs SimpleITK (a dependency); never downloads anything.
"""

from .core import PreparedScan, PrepareOptions, prepare_scan
from .strip import SKULL_STRIPPERS, available_strippers

__all__ = [
    "SKULL_STRIPPERS",
    "PrepareOptions",
    "PreparedScan",
    "available_strippers",
    "prepare_scan",
]

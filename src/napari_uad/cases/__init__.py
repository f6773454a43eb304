"""Loading a case (scan, brain mask, truth) and browsing a cohort of cases, without any GUI.

The "Load scan" and "Case browser" dock widgets are thin layers over this package, one module
per job (:mod:`.load`, :mod:`.listing`, :mod:`.review`, :mod:`.store`; shared names in
:mod:`.names`), all re-exported here:

- :func:`load_case` reads a scan (NIfTI file or DICOM series), its brain mask (given, or
  estimated) and an optional ground-truth lesion mask, and describes what was read
  (:class:`ScanInfo`).
- :func:`find_cases` and :func:`read_case_list` list the cases of a folder or a CSV file.
- :class:`ReviewState` keeps each case's review status (not run / done / reviewed) in a small
  JSON file beside the results, written atomically, so a review can be resumed later.
- :func:`save_case_layers` and :func:`load_case_layers` store a case's result layers (as plain
  arrays with their display properties) in the results folder, as NIfTI on the scan's grid.

Folder conventions
------------------
In a folder, every ``.nii``/``.nii.gz`` file (also in subfolders) is a scan, except masks and
napari-uad outputs recognised by the end of their name: ``<scan>_brain_mask`` (or
``_brainmask``) is the scan's brain mask, ``<scan>_truth`` (or ``_seg``, ``_lesion_mask``,
``_gt``) its ground-truth lesion mask; ``_healthy``, ``_anomaly`` and ``_mask`` files (written by
``napari-uad restore``) are skipped. A subfolder holding DICOM files is one case. The results
folder (``napari-uad-results`` by default) is never searched.

A CSV list has a header row with a ``scan`` column and optionally ``brain_mask``, ``truth`` and
``id`` columns; relative paths are relative to the CSV file.
"""

from __future__ import annotations

from .listing import Case, default_results_folder, find_cases, open_cases, read_case_list
from .load import (
    LoadedCase,
    ScanInfo,
    axis_codes,
    check_slice_range,
    estimate_case_brain_mask,
    load_case,
    skull_stripped_warning,
)
from .names import (
    BRAIN_MASK_SUFFIXES,
    LAYERS_FILE,
    OUTPUT_SUFFIXES,
    RESULTS_FOLDER,
    STATE_FILE,
    STATUSES,
    TRUTH_SUFFIXES,
    Status,
    scan_stem,
)
from .review import ReviewState
from .store import StoredLayer, case_folder, load_case_layers, save_case_layers, to_jsonable

__all__ = [
    "BRAIN_MASK_SUFFIXES",
    "Case",
    "LAYERS_FILE",
    "LoadedCase",
    "OUTPUT_SUFFIXES",
    "RESULTS_FOLDER",
    "ReviewState",
    "STATE_FILE",
    "STATUSES",
    "ScanInfo",
    "Status",
    "StoredLayer",
    "TRUTH_SUFFIXES",
    "axis_codes",
    "case_folder",
    "check_slice_range",
    "default_results_folder",
    "estimate_case_brain_mask",
    "find_cases",
    "load_case",
    "load_case_layers",
    "open_cases",
    "read_case_list",
    "save_case_layers",
    "scan_stem",
    "skull_stripped_warning",
    "to_jsonable",
]

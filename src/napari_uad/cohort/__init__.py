"""Cohort runs: BIDS or list inputs, BIDS derivative outputs, resumable, on Dask.

- :mod:`.inputs` finds the scans (files, CSV/TSV lists, BIDS datasets);
- :mod:`.layout` names their outputs (flat, or BIDS derivatives);
- :mod:`.task` runs one scan (the unit of work of a Dask worker);
- :mod:`.engine` runs them all, in this process or on a Dask cluster;
- :mod:`.summary` keeps the group summary TSV and the run log.
"""

from .engine import run_dask, run_sequential
from .inputs import CohortScan, collect_scans, find_bids_scans, read_scan_list
from .layout import SUMMARY_NAME, output_paths
from .task import ScanJob, is_complete, restore_scan

__all__ = [
    "SUMMARY_NAME",
    "CohortScan",
    "ScanJob",
    "collect_scans",
    "find_bids_scans",
    "is_complete",
    "output_paths",
    "read_scan_list",
    "restore_scan",
    "run_dask",
    "run_sequential",
]

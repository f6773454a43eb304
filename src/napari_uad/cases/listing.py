"""Listing the cases of a folder or a CSV list."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..io.errors import InputError
from ..io.nifti import NIFTI_EXTENSIONS, nifti_stem
from .names import BRAIN_MASK_SUFFIXES, OUTPUT_SUFFIXES, RESULTS_FOLDER, TRUTH_SUFFIXES, scan_stem


@dataclass(frozen=True)
class Case:
    """One entry of a cohort.

    Attributes
    ----------
    id : str
        Unique name within the list (the scan's stem, made unique with its folder).
    scan : Path
        NIfTI file or DICOM folder.
    brain_mask, truth : Path or None
    """

    id: str
    scan: Path
    brain_mask: Path | None = None
    truth: Path | None = None


def _strip_suffix(stem: str, suffixes) -> str | None:
    lower = stem.lower()
    for suffix in suffixes:
        if lower.endswith(suffix):
            return stem[: -len(suffix)]
    return None


def find_cases(
    folder: str | os.PathLike, *, results: str | os.PathLike | None = None
) -> list[Case]:
    """List the cases of a folder (see the module docstring for the naming conventions).

    Parameters
    ----------
    folder : str or path-like
    results : str or path-like, optional
        Results folder to leave out of the search (default ``folder/napari-uad-results``).

    Returns
    -------
    list of Case
        Sorted by path.

    Raises
    ------
    InputError
        The folder does not exist or holds no scan.
    """
    from ..io.dicom import looks_like_dicom

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Not a folder: {folder}")
    skip = Path(results) if results else folder / RESULTS_FOLDER
    scans, brain_masks, truths = [], {}, {}
    for path in sorted(folder.rglob("*")):
        if _is_hidden(path, folder) or _is_within(path, skip):
            continue
        if path.is_dir():
            if looks_like_dicom(path) and not any(p.is_dir() for p in path.iterdir()):
                scans.append(path)
            continue
        if not path.name.lower().endswith(NIFTI_EXTENSIONS):
            continue
        stem = nifti_stem(path)
        key = _strip_suffix(stem, BRAIN_MASK_SUFFIXES)
        if key is not None:
            brain_masks[(path.parent, key)] = path
            continue
        key = _strip_suffix(stem, TRUTH_SUFFIXES)
        if key is not None:
            truths[(path.parent, key)] = path
            continue
        if _strip_suffix(stem, OUTPUT_SUFFIXES) is not None:
            continue
        scans.append(path)
    if not scans:
        raise InputError(
            f"No scans in {folder}: expected .nii/.nii.gz files or DICOM series folders"
        )
    cases = []
    for path in scans:
        key = (path.parent, scan_stem(path))
        cases.append((path, brain_masks.get(key), truths.get(key)))
    return _with_ids(cases, root=folder)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _with_ids(entries, *, root: Path, ids=None) -> list[Case]:
    stems = [scan_stem(scan) for scan, _, _ in entries]
    cases, seen = [], set()
    for k, (scan, mask, truth) in enumerate(entries):
        case_id = ids[k] if ids and ids[k] else stems[k]
        if stems.count(case_id) > 1 or case_id in seen:
            try:
                relative = scan.relative_to(root)
            except ValueError:
                relative = Path(scan.parent.name) / scan.name
            case_id = "_".join(relative.parent.parts + (scan_stem(scan),)) or case_id
        while case_id in seen:
            case_id += "_"
        seen.add(case_id)
        cases.append(Case(id=case_id, scan=scan, brain_mask=mask, truth=truth))
    return cases


_CSV_COLUMNS = {
    "scan": ("scan", "image", "path", "file"),
    "brain_mask": ("brain_mask", "brainmask", "mask", "brain"),
    "truth": ("truth", "lesion_mask", "seg", "label", "ground_truth", "gt"),
    "id": ("id", "case", "name", "subject"),
}


def read_case_list(path: str | os.PathLike) -> list[Case]:
    """Read a CSV list of cases.

    Parameters
    ----------
    path : str or path-like
        CSV with a header row: ``scan`` (required; also accepted: ``image``, ``path``,
        ``file``), ``brain_mask`` and ``truth`` (optional), ``id`` (optional). Relative paths
        are relative to the CSV file's folder; empty cells mean "none".

    Returns
    -------
    list of Case
        In the file's order.

    Raises
    ------
    InputError
        Unreadable file, no ``scan`` column, no rows, or a listed file that does not exist.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(4096)
            handle.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            rows = list(csv.DictReader(handle, dialect=dialect))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"Cannot read the case list {path.name}: {err}") from err
    if not rows:
        raise InputError(f"The case list {path.name} has no rows")
    columns = {_normal(name): name for name in rows[0] if name}
    chosen = {
        key: next((columns[a] for a in aliases if a in columns), None)
        for key, aliases in _CSV_COLUMNS.items()
    }
    if chosen["scan"] is None:
        raise InputError(
            f"The case list {path.name} has no 'scan' column (columns: {', '.join(columns)})"
        )
    entries, ids = [], []
    for number, row in enumerate(rows, start=2):
        files = {}
        for key in ("scan", "brain_mask", "truth"):
            cell = (row.get(chosen[key]) or "").strip() if chosen[key] else ""
            if not cell:
                files[key] = None
                continue
            file = Path(os.path.expanduser(cell))
            file = file if file.is_absolute() else path.parent / file
            if not file.exists():
                raise InputError(f"{path.name} line {number}: {key} {cell} does not exist")
            files[key] = file
        if files["scan"] is None:
            continue
        entries.append((files["scan"], files["brain_mask"], files["truth"]))
        ids.append((row.get(chosen["id"]) or "").strip() if chosen["id"] else "")
    if not entries:
        raise InputError(f"The case list {path.name} lists no scan")
    return _with_ids(entries, root=path.parent, ids=ids)


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def open_cases(path: str | os.PathLike) -> list[Case]:
    """Cases of a folder (:func:`find_cases`) or a CSV list (:func:`read_case_list`).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    list of Case
    """
    path = Path(path)
    if path.is_dir():
        return find_cases(path)
    if not path.exists():
        raise InputError(f"Not found: {path}")
    return read_case_list(path)


def default_results_folder(path: str | os.PathLike) -> Path:
    """Where results go by default: ``napari-uad-results`` inside the folder (or the CSV's).

    Parameters
    ----------
    path : str or path-like
        The folder of cases or the CSV list.

    Returns
    -------
    Path
    """
    path = Path(path)
    return (path if path.is_dir() else path.parent) / RESULTS_FOLDER

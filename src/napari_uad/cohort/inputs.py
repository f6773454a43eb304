"""The scans of a cohort: files, a CSV/TSV list, or a BIDS dataset.

A folder holding ``dataset_description.json`` is read as BIDS: every ``*_T1w.nii[.gz]`` under
``sub-*/[ses-*/]anat/`` (the ``derivatives/`` and ``sourcedata/`` folders are not scans), and
for each the brain mask a derivative has for it (``*_desc-brain_mask`` or
``*_label-brain_mask`` with the scan's other entities, in the same folder for a derivative
dataset or under ``derivatives/*/`` for a raw one). A ``.csv`` or ``.tsv`` file lists scans in a
``scan`` column, with optional ``brain_mask`` and ``id`` (the name of its outputs) columns;
relative paths are relative to the list's folder.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..io import InputError, nifti_stem

DESCRIPTION_FILE = "dataset_description.json"
LIST_SUFFIXES = (".csv", ".tsv")
_NIFTI = (".nii.gz", ".nii")
_ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")
_SCAN_COLUMNS = ("scan", "path", "t1w", "input")
_MASK_COLUMNS = ("brain_mask", "mask")
_ID_COLUMNS = ("id", "stem", "name")


@dataclass(frozen=True)
class CohortScan:
    """One scan of a cohort and where its outputs go.

    Attributes
    ----------
    path : Path
        The scan (NIfTI file or DICOM series).
    brain_mask : Path or None
        Its brain mask, when one was given or found.
    key : str
        Unique name of the scan in the run (its outputs' stem, the summary's ``scan`` column).
    entities : dict of str to str
        BIDS entities in file-name order (``{"sub": "01", "ses": "2", ...}``); empty otherwise.
    subfolder : Path
        Where its outputs go below ``--out`` (``sub-01/ses-2/anat`` for BIDS, ``.`` otherwise).
    source : str
        The scan as the summary names it (path relative to the BIDS root or the list).
    """

    path: Path
    brain_mask: Path | None = None
    key: str = ""
    entities: dict[str, str] = field(default_factory=dict)
    subfolder: Path = Path(".")
    source: str = ""


def is_bids_dataset(path) -> bool:
    """True for a folder with a ``dataset_description.json`` (a BIDS dataset)."""
    path = Path(path)
    return path.is_dir() and (path / DESCRIPTION_FILE).is_file()


def is_scan_list(path) -> bool:
    """True for a ``.csv`` or ``.tsv`` file name."""
    return Path(path).suffix.lower() in LIST_SUFFIXES


def parse_entities(name: str) -> tuple[dict[str, str], str] | None:
    """BIDS entities and suffix of a file name without extension, or None when it is not BIDS.

    Examples
    --------
    >>> parse_entities("sub-01_ses-2_run-1_T1w")
    ({'sub': '01', 'ses': '2', 'run': '1'}, 'T1w')
    """
    parts = name.split("_")
    if len(parts) < 2:
        return None
    entities = {}
    for part in parts[:-1]:
        match = _ENTITY.match(part)
        if match is None:
            return None
        entities[match.group(1)] = match.group(2)
    if "sub" not in entities:
        return None
    return entities, parts[-1]


def entity_prefix(entities: dict[str, str]) -> str:
    """``sub-01_ses-2_...`` from entities (in their order)."""
    return "_".join(f"{k}-{v}" for k, v in entities.items())


def find_bids_scans(root, participants=None) -> list[CohortScan]:
    """The T1w scans of a BIDS dataset, with the brain masks its derivatives have for them.

    Parameters
    ----------
    root : path
        The dataset's folder (holding ``dataset_description.json``).
    participants : sequence of str, optional
        Participant labels to keep, with or without ``sub-``; all when None.

    Returns
    -------
    list of CohortScan
        In sorted path order; ``key`` is the scan's name without the ``desc`` entity (so a
        derivative's ``desc-preproc_T1w`` gives the same names as a raw ``T1w``).

    Raises
    ------
    InputError
        No T1w scan found, or a participant label with none.
    """
    root = Path(root)
    wanted = None
    if participants:
        wanted = {p.removeprefix("sub-") for p in participants}
    scans = []
    for path in sorted(root.glob("sub-*/**/anat/*_T1w.nii*")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("derivatives", "sourcedata") or not _is_nifti(path):
            continue
        parsed = parse_entities(nifti_stem(path))
        if parsed is None:
            continue
        entities, _ = parsed
        if wanted is not None and entities["sub"] not in wanted:
            continue
        kept = {k: v for k, v in entities.items() if k != "desc"}
        scans.append(
            CohortScan(
                path=path,
                brain_mask=_find_brain_mask(root, path, kept),
                key=f"{entity_prefix(kept)}_T1w",
                entities=kept,
                subfolder=relative.parent,
                source=str(relative),
            )
        )
    if wanted is not None:
        missing = sorted(wanted - {s.entities["sub"] for s in scans})
        if missing:
            raise InputError(
                f"no T1w scan for participant {', '.join('sub-' + m for m in missing)} in {root}"
            )
    if not scans:
        raise InputError(f"no T1w scan (sub-*/anat/*_T1w.nii.gz) in the BIDS dataset {root}")
    return scans


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI)


def _find_brain_mask(root: Path, scan: Path, entities: dict[str, str]) -> Path | None:
    """A brain mask with the scan's entities: beside it, else in ``derivatives/*/``."""
    relative = scan.parent.relative_to(root)
    folders = [scan.parent]
    derivatives = root / "derivatives"
    if derivatives.is_dir():
        # Not napari-uad's own outputs: their brain mask is a result, not an input.
        folders += sorted(
            p / relative
            for p in derivatives.iterdir()
            if (p / relative).is_dir() and not made_by_napari_uad(p)
        )
    for folder in folders:
        for candidate in sorted(folder.glob("*_mask.nii*")):
            parsed = parse_entities(nifti_stem(candidate))
            if parsed is None or not _is_nifti(candidate):
                continue
            found, _ = parsed
            kind = found.pop("desc", None) if "desc" in found else found.pop("label", None)
            if kind == "brain" and found == entities:
                return candidate
    return None


def made_by_napari_uad(folder) -> bool:
    """Whether a dataset folder's ``dataset_description.json`` says napari-uad generated it."""
    generated = read_description(folder).get("GeneratedBy") or []
    return any(isinstance(g, dict) and g.get("Name") == "napari-uad" for g in generated)


def read_scan_list(path) -> list[CohortScan]:
    """The scans of a CSV or TSV list (see the module's docstring).

    Raises
    ------
    InputError
        Unreadable list, no scan column, or an empty list.
    """
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the scan list {path}: {error}") from None
    if not rows:
        raise InputError(f"the scan list {path} has no rows")
    columns = {c.strip().lower(): c for c in rows[0] if c}
    scan_column = next((columns[c] for c in _SCAN_COLUMNS if c in columns), None)
    if scan_column is None:
        raise InputError(
            f"the scan list {path} needs a 'scan' column (it has: {', '.join(columns) or 'none'})"
        )
    mask_column = next((columns[c] for c in _MASK_COLUMNS if c in columns), None)
    id_column = next((columns[c] for c in _ID_COLUMNS if c in columns), None)
    scans = []
    for number, row in enumerate(rows, start=2):
        value = (row.get(scan_column) or "").strip()
        if not value:
            raise InputError(f"{path}, line {number}: the scan column is empty")
        scan = _relative_to(path.parent, value)
        mask = (row.get(mask_column) or "").strip() if mask_column else ""
        key = (row.get(id_column) or "").strip() if id_column else ""
        if key and ("/" in key or key.startswith(".")):
            raise InputError(f"{path}, line {number}: the id {key!r} must be a plain name")
        scans.append(
            CohortScan(
                path=scan,
                brain_mask=_relative_to(path.parent, mask) if mask and mask != "auto" else None,
                key=key or nifti_stem(scan),
                source=value,
            )
        )
    return scans


def _relative_to(folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def collect_scans(
    inputs, *, brain_masks=(), participants=None
) -> tuple[list[CohortScan], Path | None]:
    """The scans a ``restore`` command line names, and the BIDS root when it names one.

    Parameters
    ----------
    inputs : sequence of path
        Scan files or DICOM series; or one BIDS dataset folder; or CSV/TSV lists.
    brain_masks : sequence of str
        ``--brain-mask`` values for plain files (one per input, or one ``auto``).
    participants : sequence of str, optional
        ``--participant-label`` values (BIDS only).

    Returns
    -------
    scans : list of CohortScan
    bids_root : Path or None
    """
    inputs = [Path(p) for p in inputs]
    bids = [p for p in inputs if is_bids_dataset(p)]
    if bids:
        if len(inputs) > 1:
            raise InputError("give one BIDS dataset folder, or scan files, not both")
        if any(m != "auto" for m in brain_masks):
            raise InputError(
                "--brain-mask is for single scans: a BIDS dataset's brain masks are read from "
                "its derivatives (*_desc-brain_mask.nii.gz)"
            )
        return find_bids_scans(bids[0], participants), bids[0]
    if participants:
        raise InputError("--participant-label needs a BIDS dataset folder as the input")
    scans: list[CohortScan] = []
    lists = [p for p in inputs if is_scan_list(p)]
    if lists and any(m != "auto" for m in brain_masks):
        raise InputError("--brain-mask is for scan files: give a brain_mask column in the list")
    for path in inputs:
        if is_scan_list(path):
            scans += read_scan_list(path)
    files = [p for p in inputs if not is_scan_list(p)]
    masks = list(brain_masks)
    for index, path in enumerate(files):
        mask = masks[index] if len(masks) == len(files) else (masks[0] if masks else "auto")
        scans.append(
            CohortScan(
                path=path,
                brain_mask=None if mask == "auto" else Path(mask),
                key=nifti_stem(path),
                source=str(path),
            )
        )
    return scans, None


def read_description(root) -> dict:
    """A BIDS dataset's ``dataset_description.json`` (empty when unreadable)."""
    try:
        return json.loads((Path(root) / DESCRIPTION_FILE).read_text())
    except (OSError, ValueError):
        return {}

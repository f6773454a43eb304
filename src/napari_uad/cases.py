"""Loading a case (scan, brain mask, truth) and browsing a cohort of cases, without any GUI.

The "Load scan" and "Case browser" dock widgets are thin layers over this module:

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

import csv
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .io.errors import InputError
from .io.nifti import NIFTI_EXTENSIONS, nifti_stem
from .io.scan import Scan

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


# --------------------------------------------------------------------------------------------
# Loading one case
# --------------------------------------------------------------------------------------------


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

    from .io import read_mask, read_scan
    from .preprocess import slices_with_brain, to_canonical

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
    from .io import read_scan

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
    from .checks import skull_warning
    from .preprocess import canonical_affine, estimate_brain_mask, to_canonical

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
    from .checks import skull_warning
    from .preprocess import canonical_affine, estimate_brain_mask, from_canonical, to_canonical

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


# --------------------------------------------------------------------------------------------
# Listing cases
# --------------------------------------------------------------------------------------------


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
    from .io.dicom import looks_like_dicom

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


# --------------------------------------------------------------------------------------------
# Review state
# --------------------------------------------------------------------------------------------


class ReviewState:
    """Per-case review status, kept in ``<results>/napari-uad-review.json``.

    Every change is written at once, atomically (temporary file, then rename), so closing
    napari at any moment keeps the review. Unknown case ids in the file are kept (a case list
    may be filtered and widened again).

    Parameters
    ----------
    results : str or path-like
        Results folder; created on the first write.

    Examples
    --------
    >>> state = ReviewState(tmp_folder)  # doctest: +SKIP
    >>> state.set_status("sub-01", "reviewed")  # doctest: +SKIP
    >>> ReviewState(tmp_folder).status("sub-01")  # doctest: +SKIP
    'reviewed'
    """

    version = 1

    def __init__(self, results: str | os.PathLike) -> None:
        self.results = Path(results)
        self.cases: dict[str, dict[str, Any]] = {}
        self.current: str | None = None
        self._read()

    @property
    def path(self) -> Path:
        """The JSON file."""
        return self.results / STATE_FILE

    def _read(self) -> None:
        if not self.path.exists():
            return
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"Cannot read the review file {self.path}: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("cases", {}), dict):
            raise InputError(f"{self.path} is not a napari-uad review file")
        self.cases = {
            str(k): dict(v) for k, v in record.get("cases", {}).items() if isinstance(v, dict)
        }
        self.current = record.get("current")

    def status(self, case_id: str) -> str:
        """The status of a case (``"not run"`` when unknown)."""
        status = self.cases.get(case_id, {}).get("status", "not run")
        return status if status in STATUSES else "not run"

    def set_status(self, case_id: str, status: str, *, scan: str | os.PathLike | None = None):
        """Set a case's status and save.

        Parameters
        ----------
        case_id : str
        status : {'not run', 'done', 'reviewed'}
        scan : str or path-like, optional
            Recorded beside the status, for people reading the file.
        """
        if status not in STATUSES:
            raise InputError(f"Unknown status {status!r}: choose one of {', '.join(STATUSES)}")
        entry = self.cases.setdefault(case_id, {})
        entry["status"] = status
        entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if scan is not None:
            entry["scan"] = str(scan)
        self.save()

    def set_current(self, case_id: str | None) -> None:
        """Remember the case being viewed, and save."""
        self.current = case_id
        self.save()

    def counts(self, case_ids) -> dict[str, int]:
        """How many of ``case_ids`` have each status."""
        counts = dict.fromkeys(STATUSES, 0)
        for case_id in case_ids:
            counts[self.status(case_id)] += 1
        return counts

    def save(self) -> Path:
        """Write the JSON file atomically; returns its path."""
        from .io.atomic import atomic_write_text

        record = {
            "format": "napari-uad review",
            "version": self.version,
            "current": self.current,
            "cases": self.cases,
        }
        try:
            self.results.mkdir(parents=True, exist_ok=True)
            return atomic_write_text(self.path, json.dumps(record, indent=2) + "\n")
        except OSError as err:
            raise InputError(f"Cannot save the review file {self.path}: {err}") from err


# --------------------------------------------------------------------------------------------
# Per-case result storage
# --------------------------------------------------------------------------------------------


@dataclass
class StoredLayer:
    """A layer's content as plain data, independent of napari.

    Attributes
    ----------
    name : str
    kind : {'image', 'labels'}
    data : (Z, Y, X) ndarray
        Display array (see :func:`napari_uad.display.to_display`).
    properties : dict
        JSON-compatible display properties (``colormap`` name, ``contrast_limits``, ``opacity``,
        ``blending``, ``visible``, ...), passed back to ``viewer.add_<kind>``.
    metadata : dict
        JSON-compatible part of ``metadata["napari_uad"]`` (role, provenance, threshold, ...).
    """

    name: str
    kind: str
    data: np.ndarray
    properties: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def case_folder(results: str | os.PathLike, case_id: str) -> Path:
    """The folder that holds one case's stored results."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id).strip("._") or "case"
    return Path(results) / safe


def save_case_layers(folder: str | os.PathLike, layers: list[StoredLayer], *, like: Scan) -> Path:
    """Store layers as NIfTI files on the scan's grid plus a ``layers.json`` index.

    Files of layers no longer present are removed; the index is written last and atomically, so
    an interrupted save leaves the previous index readable.

    Parameters
    ----------
    folder : str or path-like
        The case's results folder (see :func:`case_folder`); created if needed.
    layers : list of StoredLayer
        Display arrays with the scan's display shape.
    like : Scan
        The case's scan (grid, affine, header).

    Returns
    -------
    Path
        The index file.
    """
    from .display import from_display
    from .io import write_nifti
    from .io.atomic import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index, used = [], set()
    for layer in layers:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", layer.name).strip("._") or "layer"
        file = f"{base}.nii.gz"
        while file in used:
            base += "_"
            file = f"{base}.nii.gz"
        used.add(file)
        volume = from_display(np.asarray(layer.data), like.affine)
        if layer.kind == "labels":
            dtype = np.uint8 if volume.max(initial=0) < 256 else np.int32
        else:
            dtype = np.float32
        write_nifti(folder / file, volume, like=like, dtype=dtype)
        index.append(
            {
                "file": file,
                "name": layer.name,
                "kind": layer.kind,
                "properties": to_jsonable(layer.properties),
                "metadata": to_jsonable(layer.metadata),
            }
        )
    for old in folder.glob("*.nii.gz"):
        if old.name not in used:
            old.unlink(missing_ok=True)
    return atomic_write_text(folder / LAYERS_FILE, json.dumps(index, indent=2) + "\n")


def load_case_layers(folder: str | os.PathLike, *, like: Scan) -> list[StoredLayer]:
    """Read the layers stored by :func:`save_case_layers` (an empty list when there are none).

    Parameters
    ----------
    folder : str or path-like
    like : Scan
        The case's scan; stored files of another shape are skipped.

    Returns
    -------
    list of StoredLayer
    """
    from .display import to_display
    from .io import read_scan

    index_file = Path(folder) / LAYERS_FILE
    if not index_file.exists():
        return []
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"Cannot read the stored results {index_file}: {err}") from err
    layers = []
    for entry in index:
        stored = read_scan(Path(folder) / entry["file"])
        if stored.shape != like.shape:
            continue
        data, _ = to_display(stored.data, like.affine)
        if entry.get("kind") == "labels":
            data = np.rint(data).astype(np.int32 if data.max(initial=0) > 255 else np.uint8)
        layers.append(
            StoredLayer(
                name=entry["name"],
                kind=entry.get("kind", "image"),
                data=np.ascontiguousarray(data),
                properties=dict(entry.get("properties") or {}),
                metadata=dict(entry.get("metadata") or {}),
            )
        )
    return layers


def to_jsonable(value: Any) -> Any:
    """A JSON-compatible copy of ``value``; what cannot be stored is dropped.

    numpy scalars and small arrays (up to 10,000 values) become numbers and lists, dataclasses
    dicts, paths strings; nibabel headers, large arrays and other objects are left out.
    """
    if isinstance(value, (str, bool, int, type(None))):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist()) if value.size <= 10_000 else _DROP
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = to_jsonable(item)
            if item is not _DROP:
                out[str(key)] = item
        return out
    if isinstance(value, (list, tuple)):
        items = [to_jsonable(item) for item in value]
        return [item for item in items if item is not _DROP]
    return _DROP


class _Drop:
    def __repr__(self) -> str:
        return "<dropped>"


_DROP = _Drop()

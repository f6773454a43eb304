"""Healthy training slices from a folder of scans, prepared exactly as at inference.

A folder is searched recursively for NIfTI scans. A brain mask is taken from a file beside the
scan named ``<stem>_mask``, ``<stem>_brainmask`` or ``<stem>_brain_mask`` (``.nii``/``.nii.gz``);
such files, and lesion/label files (``*_seg``, ``*_label``, ``*_labels``, ``*_lesion``), are not
scans. Without a mask the brain is estimated (the scans should be skull-stripped). Each scan is
reoriented, normalised and resampled to the model grid by
:func:`napari_uad.preprocess.prepare_volume`, and its axial slices with enough brain are kept
in memory (and, optionally, in a ``.npz`` cache keyed by the files' paths, sizes and times), so
an epoch never re-reads NIfTI files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import InputError, nifti_stem, read_mask, read_scan
from ..io.atomic import atomic_write
from ..preprocess import prepare_volume

MASK_SUFFIXES = ("_mask", "_brainmask", "_brain_mask")
NOT_SCAN_SUFFIXES = MASK_SUFFIXES + ("_seg", "_label", "_labels", "_lesion", "_truth")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class DatasetReport:
    """What a folder held: scans used (with their slice counts) and files skipped, with why."""

    folder: str
    used: list[tuple[str, int, bool]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return sum(count for _, count, _ in self.used)

    def summary(self) -> str:
        """A few human-readable lines: counts, then one line per skipped file."""
        with_mask = sum(1 for *_, given in self.used if given)
        lines = [
            f"{len(self.used)} scans used ({with_mask} with a brain mask, "
            f"{len(self.used) - with_mask} estimated), {self.num_slices} slices; "
            f"{len(self.skipped)} files skipped"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "scans": len(self.used),
            "slices": self.num_slices,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


@dataclass
class HealthySlices:
    """Axial slices on the model grid.

    Attributes
    ----------
    images : ndarray of float32, shape (N, grid, grid)
        Intensities in [0, 1], 0 outside the brain.
    masks : ndarray of bool, shape (N, grid, grid)
        Brain masks.
    subjects : ndarray of int, shape (N,)
        Index of the scan each slice came from (to hold out whole subjects).
    report : DatasetReport
    """

    images: np.ndarray
    masks: np.ndarray
    subjects: np.ndarray
    report: DatasetReport

    def __len__(self) -> int:
        return len(self.images)

    @property
    def grid(self) -> int:
        return self.images.shape[-1]

    def split(self, holdout: float = 0.1, *, seed: int = 0) -> tuple[HealthySlices, HealthySlices]:
        """Split into training and held-out slices.

        Whole subjects are held out when there are at least three; with fewer, every k-th
        slice is (neighbouring slices are then in training, so calibration is optimistic).
        """
        if not 0 < holdout < 1:
            raise ValueError("holdout must be between 0 and 1")
        subjects = np.unique(self.subjects)
        if len(subjects) >= 3:
            rng = np.random.default_rng(seed)
            count = max(1, round(holdout * len(subjects)))
            held = np.isin(self.subjects, rng.choice(subjects, count, replace=False))
        else:
            every = max(2, round(1 / holdout))
            held = np.arange(len(self)) % every == every // 2
        return self._subset(~held), self._subset(held)

    def _subset(self, keep: np.ndarray) -> HealthySlices:
        return HealthySlices(self.images[keep], self.masks[keep], self.subjects[keep], self.report)


def find_scans(folder) -> tuple[list[tuple[Path, Path | None]], list[tuple[str, str]]]:
    """Scans under ``folder`` (recursively) with their brain masks, and skipped files.

    Returns
    -------
    scans : list of (scan path, mask path or None), sorted by path
    skipped : list of (path, reason) for files that are neither scans nor their masks
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    scans, skipped = [], []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        name = path.name.lower()
        if not name.endswith(NIFTI_SUFFIXES):
            if not name.startswith(".") and name not in ("cache.npz",):
                skipped.append((str(path), "not a NIfTI file"))
            continue
        stem = nifti_stem(path)
        if stem.lower().endswith(NOT_SCAN_SUFFIXES):
            continue
        mask = next(
            (
                path.with_name(stem + suffix + ext)
                for suffix in MASK_SUFFIXES
                for ext in NIFTI_SUFFIXES
                if path.with_name(stem + suffix + ext).is_file()
            ),
            None,
        )
        scans.append((path, mask))
    return scans, skipped


def load_healthy_folder(
    folder,
    *,
    grid: int = 128,
    min_brain_fraction: float = 0.35,
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
    cache_dir=None,
    progress: Callable[[int, int, str], None] | None = None,
) -> HealthySlices:
    """Read every scan of a folder into model-grid slices.

    Parameters
    ----------
    folder : path
        Searched recursively (see the module docstring for the naming conventions).
    grid : int
        Model grid size.
    min_brain_fraction : float
        Keep a slice when its brain area is at least this fraction of the scan's largest.
    lower_percentile, upper_percentile : float
        Intensity normalisation inside the brain (as stored in the model config).
    cache_dir : path, optional
        Where to keep a ``.npz`` cache of the prepared slices; reused when no file changed.
    progress : callable(done, total, path), optional
        Called after each scan.

    Returns
    -------
    HealthySlices

    Raises
    ------
    InputError
        When the folder holds no usable scan (the message lists why each was skipped).
    """
    scans, skipped = find_scans(folder)
    report = DatasetReport(folder=str(folder), skipped=list(skipped))
    options = (grid, min_brain_fraction, lower_percentile, upper_percentile)
    cache = _cache_path(cache_dir, scans, options) if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            return _read_cache(cache, report)
        except (OSError, ValueError, KeyError):
            pass  # a stale or broken cache is rebuilt
    images, masks, subjects = [], [], []
    for index, (path, mask_path) in enumerate(scans):
        try:
            scan = read_scan(path)
            if scan.data.ndim != 3 or min(scan.data.shape) < 2:
                raise InputError(f"not a 3-D volume (shape {scan.data.shape})")
            mask = read_mask(mask_path, like=scan) if mask_path else None
            prepared = prepare_volume(
                scan,
                brain_mask=mask,
                grid=grid,
                lower_percentile=lower_percentile,
                upper_percentile=upper_percentile,
            )
        except (InputError, ValueError, OSError) as error:
            report.skipped.append((str(path), _one_line(error)))
        else:
            areas = prepared.mask_model.sum(axis=(1, 2))
            keep = areas >= min_brain_fraction * areas.max()
            if not keep.any():
                report.skipped.append((str(path), "no slice with enough brain"))
            else:
                images.append(prepared.model_slices[keep].astype(np.float32))
                masks.append(prepared.mask_model[keep])
                subjects.append(np.full(int(keep.sum()), len(report.used)))
                report.used.append((str(path), int(keep.sum()), mask_path is not None))
        if progress is not None:
            progress(index + 1, len(scans), str(path))
    if not images:
        reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in report.skipped[:5])
        raise InputError(f"no usable scan in {folder}" + (f" ({reasons})" if reasons else ""))
    data = HealthySlices(
        np.concatenate(images), np.concatenate(masks), np.concatenate(subjects), report
    )
    if cache is not None:
        _write_cache(cache, data)
    return data


def slices_from_arrays(images, masks=None) -> HealthySlices:
    """Wrap ready model-grid slices (e.g. from a script) as :class:`HealthySlices`."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError("images must be (N, grid, grid)")
    masks = images > 0 if masks is None else np.asarray(masks, dtype=bool)
    report = DatasetReport(folder="<arrays>", used=[("<arrays>", len(images), True)])
    return HealthySlices(images, masks, np.zeros(len(images), dtype=int), report)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _cache_path(cache_dir, scans, options) -> Path:
    digest = hashlib.sha256(repr(options).encode())
    for path, mask in scans:
        for item in (path, mask):
            if item is not None:
                stat = os.stat(item)
                digest.update(f"{Path(item).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return Path(cache_dir) / f"slices-{digest.hexdigest()[:16]}.npz"


def _write_cache(path: Path, data: HealthySlices) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    report = json.dumps({"used": data.report.used, "skipped": data.report.skipped})

    def write(target):
        with open(target, "wb") as handle:
            np.savez(
                handle,
                images=data.images,
                masks=data.masks,
                subjects=data.subjects,
                report=np.array(report),
            )

    atomic_write(path, write)


def _read_cache(path: Path, report: DatasetReport) -> HealthySlices:
    with np.load(path, allow_pickle=False) as cached:
        stored = json.loads(str(cached["report"]))
        report.used = [tuple(item) for item in stored["used"]]
        report.skipped = [tuple(item) for item in stored["skipped"]]
        return HealthySlices(
            cached["images"].astype(np.float32),
            cached["masks"].astype(bool),
            cached["subjects"],
            report,
        )

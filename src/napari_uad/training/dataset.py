"""Healthy training slices from a folder of scans, prepared exactly as at inference.

A folder is searched recursively for NIfTI scans. A brain mask is taken from a file beside the
scan named ``<stem>_mask``, ``<stem>_brainmask`` or ``<stem>_brain_mask`` (``.nii``/``.nii.gz``);
such files, and lesion/label files (``*_seg``, ``*_label``, ``*_labels``, ``*_lesion``), are not
scans. Without a mask the brain is estimated (the scans should be skull-stripped). Volumes that
are plainly not T1 scans (label maps and masks, pure noise: see :func:`not_a_t1_scan`) are
skipped with a warning. Each scan is
reoriented, normalised and resampled to the model grid by
:func:`napari_uad.preprocess.prepare_volume`, and its axial slices with enough brain are kept
in memory (and, optionally, in a ``.npz`` cache keyed by the files' paths, sizes and times), so
an epoch never re-reads NIfTI files.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import LABEL_MAX_VALUES, TRAINED_MIN_BRAIN_FRACTION, is_piecewise_constant
from ..io import InputError, nifti_stem, read_mask, read_scan
from ..io.atomic import atomic_write
from ..preprocess import prepare_volume

MASK_SUFFIXES = ("_mask", "_brainmask", "_brain_mask")
NOT_SCAN_SUFFIXES = MASK_SUFFIXES + ("_seg", "_label", "_labels", "_lesion", "_truth")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Label maps and masks (LABEL_MAX_VALUES, is_piecewise_constant): the rule of napari_uad.checks.
#: Below this correlation between neighbouring voxels (along every axis) a volume is noise
#: (brain scans: > 0.85; white noise: about 0).
NOISE_MAX_CORRELATION = 0.3
NOT_A_T1 = "not a T1 scan"


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
    min_brain_fraction: float = TRAINED_MIN_BRAIN_FRACTION,
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
            data = _read_cache(cache, report)
        except (OSError, ValueError, KeyError):
            pass  # a stale or broken cache is rebuilt
        else:
            for path, reason in data.report.skipped:
                if reason.endswith(NOT_A_T1):
                    _warn_skipped(path, reason, folder)
            return data
    images, masks, subjects = [], [], []
    for index, (path, mask_path) in enumerate(scans):
        try:
            scan = read_scan(path)
            if scan.data.ndim != 3 or min(scan.data.shape) < 2:
                raise InputError(f"not a 3-D volume (shape {scan.data.shape})")
            problem = not_a_t1_scan(scan.data)
            if problem is not None:
                raise _NotAScan(problem)
            mask = read_mask(mask_path, like=scan) if mask_path else None
            prepared = prepare_volume(
                scan,
                brain_mask=mask,
                grid=grid,
                lower_percentile=lower_percentile,
                upper_percentile=upper_percentile,
            )
        except _NotAScan as error:
            report.skipped.append((str(path), str(error)))
            _warn_skipped(path, str(error), folder)
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
        raise _no_usable_scan(folder, report)
    data = HealthySlices(
        np.concatenate(images), np.concatenate(masks), np.concatenate(subjects), report
    )
    if cache is not None:
        _write_cache(cache, data)
    return data


def not_a_t1_scan(data: np.ndarray) -> str | None:
    """Why a volume is plainly not a T1 scan (a label map or mask, pure noise), or None.

    Parameters
    ----------
    data : ndarray of float, 3-D
        Finite intensities (as :func:`napari_uad.io.read_scan` returns them).

    Returns
    -------
    str or None
        ``"looks like a label map (33 integer values), not a T1 scan"``, ``"looks like pure
        noise (...), not a T1 scan"``, or None for anything that may be a scan (constant
        volumes are left to :func:`~napari_uad.preprocess.prepare_volume`).
    """
    data = np.asarray(data)
    flat = data.ravel()
    if flat.size < 8:
        return None
    sample = flat[:: max(1, flat.size // 200_000)]
    if np.array_equal(flat, np.round(flat)):
        count = len(np.unique(flat)) if len(np.unique(sample)) <= LABEL_MAX_VALUES else None
        if count is not None and count <= LABEL_MAX_VALUES:
            label = count >= 2  # a constant volume is left to prepare_volume
        else:
            label = is_piecewise_constant(data)
        if label:
            count = count if count is not None else len(np.unique(flat))
            return f"looks like a label map ({count} integer values), {NOT_A_T1}"
    # Clip to robust percentiles so that a few extreme voxels cannot hide the structure.
    low, high = np.percentile(sample, [0.5, 99.5])
    if high <= low:
        low, high = flat.min(), flat.max()
    if high <= low:
        return None
    x = np.clip(data, low, high).astype(np.float32, copy=False)
    x -= x.mean(dtype=np.float64)
    variance = np.mean(x * x, dtype=np.float64)
    correlations = []
    for axis in range(x.ndim):
        if x.shape[axis] < 2:
            continue
        before = (slice(None),) * axis
        ahead, behind = x[before + (slice(1, None),)], x[before + (slice(None, -1),)]
        correlations.append(np.mean(ahead * behind, dtype=np.float64) / variance)
    best = max(correlations, default=1.0)
    if best < NOISE_MAX_CORRELATION:
        return f"looks like pure noise (neighbouring voxels correlate {best:.2f}), {NOT_A_T1}"
    return None


class _NotAScan(Exception):
    """A readable volume that is not a T1 scan (skipped with a warning)."""


def _warn_skipped(path, reason: str, folder) -> None:
    try:
        name = Path(path).relative_to(folder)
    except ValueError:
        name = Path(path)
    warnings.warn(f"{name} {reason}: skipped", stacklevel=3)


def _no_usable_scan(folder, report: DatasetReport) -> InputError:
    reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in report.skipped[:5])
    message = f"no usable scan in {folder}" + (f" ({reasons})" if reasons else "")
    if any(reason.endswith(NOT_A_T1) for _, reason in report.skipped):
        message += ": give a folder of healthy T1 scans"
    return InputError(message)


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

"""Calibrate a model's lesion threshold on a site's own healthy controls.

A model's stored threshold (``config.calibration``, see :mod:`napari_uad.training.calibrate`)
was computed on its training data, and it does not transfer between scanners, sequences or
preparations: on one real healthy brain prepared three harmless ways the volume flagged at the
shipped threshold ranged from 18 to 81 mL. :func:`calibrate_on_controls` runs a method on the
user's own healthy scans, exactly as ``restore`` would, and takes the threshold at a high
percentile of their anomaly maps; :func:`save_site_model` saves a copy of the model that
carries it, so that ``napari-uad restore --model NAME --threshold auto`` uses it.

Estimator: the percentile of the **pooled** brain voxels of all controls (every scored voxel
counts once). It is what "flag ``100 - percentile`` % of healthy brain" means across the
controls, it matches how the shipped thresholds were computed (pooled held-out slices), and
with similar controls it has the smallest sampling error: a 99.5th percentile of one scan rests
on the top 0.5 % of its voxels, the pooled one on the top 0.5 % of all of them. Larger brains
and finer grids weigh more, as they do in the flagged volume of a restore. Its weakness is one
odd control (an artefact, a lesion, another preparation), whose voxels can make up most of the
pooled tail; the median of per-control percentiles would resist that, but with three controls
it is just the middle scan, and it hides the problem instead of showing it. So the pooled
percentile is used, and each control is checked against the others instead: with three or
more, the threshold of the *other* controls is applied to it (leave-one-out). The share it
flags is what a new healthy scan from the site would get (it should be near
``100 - percentile``); a control flagged far more than that (:data:`OUTLIER_FACTOR` times)
gets a warning: look at it, and calibrate without it if it is not a clean healthy scan.

The anomaly values are those ``restore`` thresholds: on each control's own voxel grid, inside
the scored brain mask (eroded with ``erode_brain``), voxels of slices too small to process
counting as 0, exactly as they do in a restore. torch is imported only when a calibration runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .io import InputError

DEFAULT_PERCENTILE = 99.5
#: Fewer controls than this give a warning: a high percentile of one or two scans is noisy.
RECOMMENDED_CONTROLS = 3
#: A control of which the threshold of the other controls flags more than this many times the
#: intended share (2 % for the 99.5th percentile) gives a warning: it is unlike the others.
#: (Healthy phantoms with a tiny test model: 0.1-1.1 %; an inverted contrast: 11 %.)
OUTLIER_FACTOR = 4.0
#: Controls needed for the held-out check (with two, neither can be told to be the odd one).
HELD_OUT_MIN_CONTROLS = 3
#: ``calibration`` entries written here carry ``"kind": SITE_KIND``.
SITE_KIND = "site"
#: Keyword arguments of :func:`~napari_uad.pipeline.iter_detect` that are not method
#: parameters but change the anomaly values (recorded under ``options``).
RUN_OPTIONS = ("seed", "samples", "erode_brain", "batch_size")
#: Arguments that make no sense for a calibration.
_REFUSED = ("threshold", "slices", "min_size", "min_volume_mm3")
#: Stems of what ``restore`` writes: not scans (skipped in folders, refused as files).
RESTORE_OUTPUT_SUFFIXES = ("_healthy", "_anomaly", "_uncertainty")
#: Provenance parameters of a run that are not the method's (left out of the record).
_NOT_RECORDED = ("threshold", "threshold_source", "min_size", "min_volume_mm3", "brain_mask")
#: A threshold no anomaly value reaches: the calibration runs skip lesion labelling.
_NO_LESIONS = 1e30


@dataclass(frozen=True)
class Control:
    """One healthy control: a scan (path or :class:`~napari_uad.io.Scan`) and its brain mask
    (a path, a boolean array on the scan's grid, or None to estimate it)."""

    scan: Any
    brain_mask: Any = None

    @property
    def name(self) -> str:
        from .io import nifti_stem

        source = self.scan if isinstance(self.scan, (str, os.PathLike)) else self.scan.source
        return nifti_stem(source) if source is not None else "scan"


@dataclass
class CalibrationProgress:
    """One progress update: network evaluations ``done`` of ``total`` for control ``control``
    (0-based) of ``controls``; ``total`` is 0 while a control is being read."""

    control: int
    controls: int
    name: str
    done: int = 0
    total: int = 0
    message: str = ""

    @property
    def fraction(self) -> float:
        """Share of the whole calibration done, in [0, 1]."""
        within = self.done / self.total if self.total else 0.0
        return (self.control + within) / max(self.controls, 1)


@dataclass
class ControlFigures:
    """What one control gives: its scored brain, its own percentile, and what would be
    flagged at the new (site) and the old (model's) threshold."""

    name: str
    scan: str | None
    brain_mask: str
    voxels: int
    voxel_ml: float
    own_threshold: float
    flagged_new: int
    flagged_old: int | None
    #: Voxels at or above the threshold of the *other* controls (None with fewer than
    #: :data:`HELD_OUT_MIN_CONTROLS`): what a new healthy scan like this one would get.
    flagged_held_out: int | None = None

    @property
    def brain_ml(self) -> float:
        return self.voxels * self.voxel_ml

    @property
    def flagged_new_ml(self) -> float:
        return self.flagged_new * self.voxel_ml

    @property
    def flagged_new_percent(self) -> float:
        return 100.0 * self.flagged_new / max(self.voxels, 1)

    @property
    def held_out_percent(self) -> float | None:
        if self.flagged_held_out is None:
            return None
        return 100.0 * self.flagged_held_out / max(self.voxels, 1)

    @property
    def flagged_old_ml(self) -> float | None:
        return None if self.flagged_old is None else self.flagged_old * self.voxel_ml

    @property
    def flagged_old_percent(self) -> float | None:
        if self.flagged_old is None:
            return None
        return 100.0 * self.flagged_old / max(self.voxels, 1)


@dataclass
class SiteCalibration:
    """The result of :func:`calibrate_on_controls`.

    Attributes
    ----------
    threshold : float
        The ``percentile`` of the pooled brain anomaly values of all controls (6 decimals).
    old_threshold : float or None
        The model's stored threshold for ``method`` (None when it has none).
    controls : list of ControlFigures
    parameters : dict
        The method parameters used (defaults filled in).
    options : dict
        ``seed``, ``samples``, ``erode_brain``, ``batch_size`` of the runs.
    given : dict
        The method parameters given explicitly (they become the site model's defaults).
    warnings : list of str
        What was warned about (too few controls, an outlying control).
    """

    method: str
    model_name: str
    model_path: Path
    model_sha256: str
    threshold: float
    old_threshold: float | None
    percentile: float
    controls: list[ControlFigures]
    parameters: dict
    options: dict
    given: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    date: str = ""

    @property
    def voxels(self) -> int:
        return sum(c.voxels for c in self.controls)

    def entry(self) -> dict:
        """The ``calibration`` entry of the site model (see :func:`save_site_model`)."""
        from . import __version__

        return {
            "threshold": self.threshold,
            "percentile": self.percentile,
            "kind": SITE_KIND,
            "data": f"{len(self.controls)} healthy site controls, pooled brain voxels",
            "count": len(self.controls),
            "voxels": self.voxels,
            "controls": [
                {
                    "scan": c.scan or c.name,
                    "brain_mask": c.brain_mask,
                    "voxels": c.voxels,
                    "brain_ml": round(c.brain_ml, 3),
                    "own_threshold": c.own_threshold,
                    "held_out_percent": None
                    if c.held_out_percent is None
                    else round(c.held_out_percent, 3),
                }
                for c in self.controls
            ],
            "date": self.date,
            "parameters": _jsonable(self.parameters),
            "options": _jsonable(self.options),
            "previous_threshold": self.old_threshold,
            "source_model": {
                "name": self.model_name,
                "path": str(self.model_path),
                "sha256": self.model_sha256,
            },
            "napari_uad_version": __version__,
        }

    def rows(self) -> list[dict]:
        """One table row per control, then one for all of them: brain volume, the control's
        own percentile, and the volume (mL) and share of brain (%) flagged at the old and at
        the new threshold."""
        rows = []
        for c in self.controls:
            rows.append(
                _row(c.name, c.brain_ml, c.flagged_old_ml, c.flagged_new_ml)
                | {
                    "own_threshold": f"{c.own_threshold:.4f}",
                    "held_out_%": _percent_text(c.held_out_percent),
                }
            )
        if len(self.controls) > 1:
            old = (
                None if self.old_threshold is None else sum(c.flagged_old_ml for c in self.controls)
            )
            brain = sum(c.brain_ml for c in self.controls)
            new = sum(c.flagged_new_ml for c in self.controls)
            rows.append(_row(f"all {len(self.controls)}", brain, old, new))
        return rows

    def summary(self) -> str:
        """The new threshold against the old one, and what the table of :meth:`rows` shows."""
        old = "none" if self.old_threshold is None else f"{self.old_threshold:.4g}"
        count = len(self.controls)
        controls = f"{count} control{'s' if count != 1 else ''}"
        return (
            f"new {self.method} threshold {self.threshold:.4g}: the {_ordinal(self.percentile)} "
            f"percentile of {self.voxels:,} brain voxels of {controls}; old threshold {old} "
            f"(model {self.model_name!r}). Volume (mL) and share of brain (%) each would flag:"
        )

    def save(self, out, *, overwrite: bool = False) -> Path:
        """:func:`save_site_model` of this calibration; returns the model folder."""
        return save_site_model(
            self.model_path,
            out,
            self.method,
            self.entry(),
            overwrite=overwrite,
            defaults=self.given,
        )


def check_percentile(percentile) -> float:
    """The percentile as a float in [50, 100); :class:`~napari_uad.io.InputError` otherwise."""
    try:
        value = float(percentile)
    except (TypeError, ValueError):
        raise InputError(f"percentile must be a number, got {percentile!r}") from None
    if not 50 <= value < 100:
        raise InputError(
            f"percentile must be at least 50 and below 100, got {percentile}: it is the share "
            "of healthy brain below the threshold (99.5 flags 0.5 %)"
        )
    return value


def find_controls(paths: Sequence, brain_masks: Sequence | None = None) -> list[Control]:
    """The control scans of files and folders, each with its brain mask.

    A folder is searched recursively for NIfTI scans as for training
    (:func:`napari_uad.training.dataset.find_scans`), or is one DICOM series when it holds no
    NIfTI file. A brain mask beside a scan (``<stem>_mask``, ``_brainmask``, ``_brain_mask``)
    is used; a mask file given among the scans (a shell glob) goes with its scan.

    Parameters
    ----------
    paths : sequence of path
    brain_masks : sequence of (path or 'auto'), optional
        One per control found (in order), overriding the masks beside the scans; 'auto'
        estimates that control's mask.

    Raises
    ------
    InputError
        No controls, a missing file, a folder without scans, a file given twice, a lone mask
        or label file, or a number of brain masks that does not match.
    """
    from .io import nifti_stem
    from .training.dataset import MASK_SUFFIXES, NIFTI_SUFFIXES, NOT_SCAN_SUFFIXES, find_scans

    if not paths:
        raise InputError("give at least one healthy control scan (3 or more are better)")
    found: list[tuple[Path, Path | None]] = []
    lone_masks: list[Path] = []
    for value in paths:
        path = Path(value).expanduser()
        if not path.exists():
            raise InputError(f"control scan not found: {path}")
        if path.is_dir():
            scans, _ = find_scans(path)
            scans = [s for s in scans if not _is_output(nifti_stem(s[0]))]
            if scans:
                found.extend(scans)
                continue
            from .io.dicom import looks_like_dicom

            if not looks_like_dicom(path):
                raise InputError(f"no NIfTI scans (nor a DICOM series) in the folder {path}")
            found.append((path, None))
            continue
        stem = nifti_stem(path)
        if stem.lower().endswith(MASK_SUFFIXES):
            lone_masks.append(path)
            continue
        if stem.lower().endswith(NOT_SCAN_SUFFIXES) or _is_output(stem):
            raise InputError(
                f"{path.name} looks like a label, lesion or restore output file, not a healthy "
                "control scan"
            )
        beside = [
            path.with_name(stem + suffix + ext)
            for suffix in MASK_SUFFIXES
            for ext in NIFTI_SUFFIXES
        ]
        found.append((path, next((p for p in beside if p.is_file()), None)))
    for mask in lone_masks:
        if not any(m is not None and _same(m, mask) for _, m in found):
            raise InputError(
                f"{mask.name} looks like a brain mask, not a scan: give it with --brain-mask, or "
                "put it beside its scan"
            )
    seen: dict[str, Path] = {}
    for scan, _ in found:
        key = os.path.realpath(scan)
        if key in seen:
            raise InputError(f"{scan} is given twice: each control must count once")
        seen[key] = scan
    if brain_masks:
        if len(brain_masks) != len(found):
            raise InputError(
                f"give one brain mask per control ({len(found)} found, {len(brain_masks)} "
                "given), or none to use the <stem>_mask files beside the scans"
            )
        masks = [None if str(m) == "auto" else Path(m).expanduser() for m in brain_masks]
        for mask in masks:
            if mask is not None and not mask.is_file():
                raise InputError(f"brain mask not found: {mask}")
        found = [(scan, mask) for (scan, _), mask in zip(found, masks, strict=True)]
    return [Control(scan, mask) for scan, mask in found]


def calibrate_on_controls(
    scans,
    *,
    method: str,
    model=None,
    brain_masks=None,
    percentile: float = DEFAULT_PERCENTILE,
    device: str = "auto",
    progress: Callable[[CalibrationProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **params,
) -> SiteCalibration:
    """Healthy threshold of ``method`` on the user's own control scans.

    :func:`iter_calibrate_on_controls` run to its end, calling ``progress`` with each
    :class:`CalibrationProgress`; takes the same arguments.
    """
    from .progress import run_to_completion

    run = iter_calibrate_on_controls(
        scans,
        method=method,
        model=model,
        brain_masks=brain_masks,
        percentile=percentile,
        device=device,
        should_stop=should_stop,
        **params,
    )
    return run_to_completion(run, progress)


def iter_calibrate_on_controls(
    scans,
    *,
    method: str,
    model=None,
    brain_masks=None,
    percentile: float = DEFAULT_PERCENTILE,
    device: str = "auto",
    should_stop: Callable[[], bool] | None = None,
    **params,
) -> Generator[CalibrationProgress, None, SiteCalibration]:
    """Run ``method`` on each healthy control as ``restore`` would and return the threshold at
    ``percentile`` of their pooled brain anomaly values, as a generator of progress updates.

    Parameters
    ----------
    scans : sequence of path, Scan or Control
        Healthy control scans (NIfTI, DICOM, or scans already read).
    method : str
    model : str or path, optional
        Model name or folder; the method's shipped default when None.
    brain_masks : sequence, optional
        Per scan: a path, a boolean array on its grid, or None/'auto' to estimate it (for
        :class:`Control` items their own mask is used).
    percentile : float
        In [50, 100): 99.5 means 0.5 % of the controls' brain voxels lie at or above the
        threshold.
    device : str
    should_stop : callable, optional
        Cooperative cancellation within one denoising step
        (:class:`~napari_uad.methods.base.Cancelled` is raised); closing the generator stops
        it too.
    **params
        Method parameters (``noise``, ``noise_level``, ``steps``, ...) and ``seed``,
        ``samples``, ``erode_brain``, ``batch_size``: use those you will restore with.

    Returns
    -------
    SiteCalibration

    Warns
    -----
    UserWarning
        With fewer than :data:`RECOMMENDED_CONTROLS` controls, and for a control with more
        than :data:`OUTLIER_FACTOR` times the intended share of its brain flagged at the
        threshold of the other controls.
    """
    from .io import read_mask, read_scan
    from .pipeline import iter_detect, load_method
    from .progress import Cancelled

    percentile = check_percentile(percentile)
    refused = sorted(set(params) & set(_REFUSED))
    if refused:
        raise ValueError(f"a calibration takes no {', '.join(refused)}")
    controls = _as_controls(scans, brain_masks)
    notes: list[str] = []
    if len(controls) < RECOMMENDED_CONTROLS:
        notes.append(
            f"calibrating on {len(controls)} control(s): a threshold from so few scans is "
            f"noisy; use {RECOMMENDED_CONTROLS} or more healthy scans from this scanner"
        )
        warnings.warn(notes[-1], stacklevel=2)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    loaded = load_method(method, model, noise=params.get("noise"), device=device)
    old = loaded.method.calibrated_threshold()
    given = {k: v for k, v in params.items() if k not in RUN_OPTIONS and v is not None}
    options = {"seed": 0, "samples": 1, "erode_brain": 0, "batch_size": 8}
    options.update({k: params[k] for k in RUN_OPTIONS if params.get(k) is not None})
    values: list[np.ndarray] = []
    figures: list[dict] = []
    parameters: dict = {}
    for index, control in enumerate(controls):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled by the user")
        name = control.name
        yield CalibrationProgress(index, len(controls), name, message=f"reading {name}")
        scan = control.scan
        if isinstance(scan, (str, os.PathLike)):
            scan = read_scan(scan)
        mask = control.brain_mask
        if isinstance(mask, (str, os.PathLike)):
            mask = read_mask(mask, like=scan)
        run = iter_detect(
            scan,
            method=method,
            model=loaded.model_path,
            brain_mask=mask,
            device=device,
            threshold=_NO_LESIONS,
            should_stop=should_stop,
            **{k: v for k, v in params.items() if v is not None},
        )
        detection = yield from _relay(run, index, len(controls), name)
        inside = np.asarray(detection.anomaly[detection.brain_mask], dtype=np.float32)
        if inside.size == 0:
            raise InputError(f"control {name} has no brain voxels to score: check its mask")
        if not parameters:
            parameters = {
                k: v
                for k, v in detection.provenance["parameters"].items()
                if k not in (*RUN_OPTIONS, *_NOT_RECORDED)
            }
        figures.append(
            {
                "name": name,
                "scan": _source_text(control.scan),
                "brain_mask": _mask_text(control.brain_mask),
                "voxel_ml": float(np.prod(scan.spacing)) / 1000.0,
                "own_threshold": round(float(np.percentile(inside, percentile)), 6),
            }
        )
        values.append(inside)
        del detection
    pooled = np.concatenate(values)
    threshold = round(float(np.percentile(pooled, percentile)), 6)
    del pooled
    results = [
        ControlFigures(
            voxels=int(v.size),
            flagged_new=int(np.count_nonzero(v >= threshold)),
            flagged_old=None if old is None else int(np.count_nonzero(v >= old)),
            **figure,
        )
        for figure, v in zip(figures, values, strict=True)
    ]
    intended = 100.0 - percentile
    if len(results) >= HELD_OUT_MIN_CONTROLS:
        for index, figures_of in enumerate(results):
            others = np.concatenate(values[:index] + values[index + 1 :])
            cut = float(np.percentile(others, percentile))
            del others
            figures_of.flagged_held_out = int(np.count_nonzero(values[index] >= cut))
            if figures_of.held_out_percent > OUTLIER_FACTOR * intended:
                notes.append(
                    f"control {figures_of.name}: the threshold of the other controls flags "
                    f"{figures_of.held_out_percent:.2f} % of its brain (theirs: {intended:.2g} "
                    "%); it is unlike them: check that it is healthy and prepared like the "
                    "others, or calibrate without it"
                )
                warnings.warn(notes[-1], stacklevel=2)
    return SiteCalibration(
        method=method,
        model_name=loaded.model_name,
        model_path=Path(loaded.model_path),
        model_sha256=loaded.model_sha256,
        threshold=threshold,
        old_threshold=None if old is None else float(old),
        percentile=percentile,
        controls=results,
        parameters=parameters,
        options=options,
        given=given,
        warnings=notes,
        date=started,
    )


def _relay(run, index: int, count: int, name: str):
    """Yield a detection's progress as :class:`CalibrationProgress`; return its result."""
    while True:
        try:
            update = next(run)
        except StopIteration as finished:
            return finished.value
        yield CalibrationProgress(index, count, name, update.done, update.total, update.message)


def _as_controls(scans, brain_masks) -> list[Control]:
    if isinstance(scans, (str, os.PathLike)):
        scans = [scans]
    scans = list(scans or [])
    if not scans:
        raise InputError("give at least one healthy control scan (3 or more are better)")
    if brain_masks is not None and len(brain_masks) != len(scans):
        raise InputError(
            f"give one brain mask per control scan ({len(scans)} scans, {len(brain_masks)} masks)"
        )
    controls = []
    for index, scan in enumerate(scans):
        if isinstance(scan, Control):
            controls.append(scan)
            continue
        mask = None if brain_masks is None else brain_masks[index]
        if isinstance(mask, str) and mask == "auto":
            mask = None
        controls.append(Control(scan, mask))
    seen = set()
    for control in controls:
        for value, what in ((control.scan, "control scan"), (control.brain_mask, "brain mask")):
            if isinstance(value, (str, os.PathLike)) and not Path(value).exists():
                raise InputError(f"{what} not found: {value}")
        if isinstance(control.scan, (str, os.PathLike)):
            key = os.path.realpath(control.scan)
            if key in seen:
                raise InputError(f"{control.scan} is given twice: each control must count once")
            seen.add(key)
    return controls


def _source_text(scan) -> str | None:
    if isinstance(scan, (str, os.PathLike)):
        return str(Path(scan).resolve())
    source = getattr(scan, "source", None)
    return str(Path(source).resolve()) if source is not None else None


def _mask_text(mask) -> str:
    if mask is None:
        return "estimated"
    if isinstance(mask, (str, os.PathLike)):
        return str(Path(mask).resolve())
    return "given"


def _percent_text(value) -> str | None:
    return None if value is None else f"{value:.2f}"


def _row(name, brain_ml, old_ml, new_ml) -> dict:
    def percent(ml):
        return None if ml is None else f"{100.0 * ml / max(brain_ml, 1e-12):.2f}"

    return {
        "control": name,
        "brain_mL": f"{brain_ml:.1f}",
        "old_mL": None if old_ml is None else f"{old_ml:.2f}",
        "old_%": percent(old_ml),
        "new_mL": f"{new_ml:.2f}",
        "new_%": percent(new_ml),
    }


def _is_output(stem: str) -> bool:
    return stem.lower().endswith(RESTORE_OUTPUT_SUFFIXES)


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _ordinal(value: float) -> str:
    return f"{value:g}th"


def _jsonable(params: dict) -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


# ------------------------------------------------------------------------------- saving
def site_entry_of(config, method: str) -> dict | None:
    """The site calibration entry of ``method`` in a model ``config`` (None when its
    threshold is not a site calibration)."""
    from .methods import get_method_class

    calibration = config.calibration or {}
    per_method = calibration.get("methods", {})
    if isinstance(per_method, dict) and isinstance(per_method.get(method), dict):
        entry = per_method[method]
    elif get_method_class(method).is_own_model(config):
        entry = calibration
    else:
        return None
    return entry if entry.get("kind") == SITE_KIND else None


def site_model_folder(out) -> Path:
    """Where :func:`save_site_model` writes ``out``: a bare name in the user models folder
    (as ``train --out``), a value with a path separator that folder.

    Raises
    ------
    InputError
        An empty or invalid name, or a folder among the package's shipped models.
    """
    from .models.registry import PACKAGE_MODELS, model_output_folder

    try:
        folder = model_output_folder(out)
    except ValueError as error:
        raise InputError(str(error)) from None
    if _is_within(folder, PACKAGE_MODELS):
        raise InputError(
            f"{folder} is inside the package's shipped models: give a new model name "
            "(it goes into the user models folder)"
        )
    return folder


def check_site_model_out(out, *, overwrite: bool = False) -> Path:
    """The folder of ``out`` (see :func:`site_model_folder`), refused when it exists and
    ``overwrite`` is False, or when it is a file. Call it before a calibration runs."""
    folder = site_model_folder(out)
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise InputError(f"{folder} exists and is not a model folder: choose another name")
        if not overwrite:
            raise InputError(
                f"model {folder.name!r} exists ({folder}); pass --overwrite to replace it, or "
                "choose another name"
            )
    return folder


def save_site_model(
    source_model_path,
    out,
    method: str,
    entry: dict,
    *,
    overwrite: bool = False,
    defaults: dict | None = None,
) -> Path:
    """Save a copy of a model whose calibration for ``method`` is ``entry``.

    The weights (and further networks) are copied, ``config.json`` is rewritten with the new
    name, ``entry`` in place of the method's calibration entry (the entries of other methods
    are kept), the ``defaults`` as the method's defaults, and ``training["origin"]`` saying
    where it came from. Everything is staged in a hidden folder beside ``out`` and renamed into
    place when complete, so an interrupted save leaves no partial model; an existing ``out``
    (with ``overwrite``) is replaced only then.

    Parameters
    ----------
    source_model_path : str or path
        Model name or folder (the shipped models are read, never written).
    out : str or path
        New model name (saved in :func:`~napari_uad.models.registry.user_models_dir`) or folder.
    method : str
    entry : dict
        :meth:`SiteCalibration.entry`.
    overwrite : bool
        Replace an existing model ``out``.
    defaults : dict, optional
        Method parameters that become the model's defaults for ``method`` (those the
        threshold was calibrated with).

    Returns
    -------
    Path
        The new model folder.

    Raises
    ------
    InputError
        An existing ``out`` without ``overwrite``, an invalid name, a write that fails.
    """
    from .methods import get_method_class
    from .models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_config
    from .models.config import ModelConfig
    from .models.registry import PACKAGE_MODELS, resolve_model

    method_class = get_method_class(method)
    source = resolve_model(source_model_path).resolve()
    folder = check_site_model_out(out, overwrite=overwrite)
    config = load_config(source)
    if not method_class.accepts(config.method):
        raise InputError(f"model {config.name!r} ({config.method}) does not run {method}")
    if "threshold" not in entry:
        raise ValueError("a calibration entry needs a threshold")
    _replace_calibration(config, method_class, dict(entry))
    _set_defaults(config, method_class, defaults or {})
    count = entry.get("count")
    config.training = dict(config.training or {})
    config.training["origin"] = (
        f"site calibration of {entry.get('source_model', {}).get('name', config.name)} "
        f"({method}: {count} control{'s' if count != 1 else ''}, "
        f"{str(entry.get('date', ''))[:10]})"
    )
    config.name = folder.name
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    ModelConfig.from_dict(json.loads(text))  # what is written must load
    if (PACKAGE_MODELS / folder.name).is_dir():
        warnings.warn(
            f"the new model {folder.name!r} hides the shipped model of that name; "
            "choose another name to keep both",
            stacklevel=2,
        )
    files = [WEIGHTS_NAME, *(f"{name}.safetensors" for name in config.components)]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".staging", dir=folder.parent)
        )
    except OSError as error:
        raise InputError(f"cannot write into {folder.parent}: {error.strerror or error}") from None
    try:
        os.chmod(staging, 0o777 & ~_umask())
        for name in files:
            shutil.copyfile(source / name, staging / name)  # a fresh file: fresh time stamp
        (staging / CONFIG_NAME).write_text(text, encoding="utf-8")
        load_config(staging)
        _swap_into_place(staging, folder, overwrite=overwrite)
    except OSError as error:
        raise InputError(f"cannot save the model {folder}: {error.strerror or error}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _replace_calibration(config, method_class, entry: dict) -> None:
    """Put ``entry`` in place of the method's calibration entry: the top level for the method
    the model was trained for (keeping ``methods``), ``methods[name]`` for the others."""
    calibration = dict(config.calibration or {})
    methods = calibration.get("methods")
    if method_class.is_own_model(config):
        calibration = dict(entry)
        if methods:
            calibration["methods"] = methods
    else:
        calibration["methods"] = {**(methods or {}), method_class.name: entry}
    config.calibration = calibration


def _set_defaults(config, method_class, defaults: dict) -> None:
    known = {k: v for k, v in defaults.items() if k in method_class.defaults}
    if not known:
        return
    stored = dict(config.defaults or {})
    if method_class.is_own_model(config):
        stored.update(_jsonable(known))
    else:
        nested = stored.get(method_class.name)
        stored[method_class.name] = {**(nested if isinstance(nested, dict) else {}), **known}
    config.defaults = stored


def _swap_into_place(staging: Path, folder: Path, *, overwrite: bool) -> None:
    if not (folder.exists() or folder.is_symlink()):
        try:
            os.rename(staging, folder)
        except OSError:
            if folder.exists():
                raise InputError(
                    f"model {folder.name!r} appeared in {folder.parent} meanwhile; pass "
                    "--overwrite to replace it"
                ) from None
            raise
        return
    if not overwrite:
        raise InputError(f"model {folder.name!r} exists ({folder}); pass --overwrite to replace it")
    previous = Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".replaced", dir=folder.parent)
    )
    previous.rmdir()
    os.rename(folder, previous)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(previous, folder)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def _umask() -> int:
    from .io.atomic import _umask as umask

    return umask()


def restore_hint(calibration: SiteCalibration, name: str) -> str:
    """The ``napari-uad restore`` command that uses a saved site model with the options the
    threshold was calibrated with."""
    parts = ["napari-uad restore SCAN...", f"--method {calibration.method}", f"--model {name}"]
    options = calibration.options
    if options.get("erode_brain"):
        parts.append(f"--erode-brain {options['erode_brain']}")
    if options.get("samples", 1) != 1:
        parts.append(f"--samples {options['samples']}")
    parts.append("--out DIR")
    return " ".join(parts)

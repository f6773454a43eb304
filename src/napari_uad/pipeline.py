"""Scan in, pseudo-healthy image and anomaly map out, on the scan's own grid.

io -> preprocess -> method (model + sampler) -> postprocess. The CLI, the napari widgets and the
benchmarks all call :func:`detect` (or its generator form :func:`iter_detect`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .checks import (
    ScanWarning,
    check_not_label_map,
    scan_warnings,
    trained_brain_fraction,
    trained_slices,
)
from .io import InputError, Scan
from .methods import get_method_class
from .methods.base import Method, is_out_of_memory
from .postprocess import binarise, erode_mask, lesion_summary, lesion_table, min_voxels
from .preprocess import PreparedVolume, from_canonical, prepare_volume, to_canonical
from .progress import Progress, ProgressCallback, StopCallback, run_to_completion


@dataclass
class Detection:
    """Result of :func:`detect`, everything on the input scan's voxel grid.

    Attributes
    ----------
    healthy : (X, Y, Z) float32 ndarray
        Pseudo-healthy image in the scan's own intensity units (0 outside the brain).
    anomaly : (X, Y, Z) float32 ndarray
        Anomaly map in normalised intensity units, 0 outside the brain and outside processed
        slices.
    lesion_mask : (X, Y, Z) uint8 ndarray
        ``anomaly >= threshold`` inside the brain, small components removed.
    brain_mask : (X, Y, Z) bool ndarray
        The region scored: the brain mask, eroded when ``erode_brain > 0`` (the
        pseudo-healthy image keeps the whole brain).
    threshold : float
    provenance : dict
        Method, model, parameters, version, device, timings and NFE (written as JSON).
    lesions : list of :class:`~napari_uad.postprocess.Lesion`
        Connected lesions of ``lesion_mask``, largest first, volumes in mL.
    uncertainty : (X, Y, Z) float32 ndarray or None
        With ``samples > 1``: the per-voxel standard deviation of the anomaly map over the
        runs (``anomaly`` is then their mean); None otherwise.
    """

    healthy: np.ndarray
    anomaly: np.ndarray
    lesion_mask: np.ndarray
    brain_mask: np.ndarray
    threshold: float
    provenance: dict[str, Any]
    lesions: list = field(default_factory=list)
    uncertainty: np.ndarray | None = None


@dataclass
class LoadedMethod:
    method: Method
    model_name: str
    model_path: Path
    model_sha256: str


def load_method(method: str, model=None, *, noise: str | None = None, device="auto"):
    """Load (and cache) a method with its model.

    Parameters
    ----------
    method : str
        Method name, e.g. ``"anoddpm"``.
    model : str or path, optional
        Model name or checkpoint folder; None picks the method's shipped default.
    noise : str, optional
        For ``anoddpm``: picks the default model trained with this noise.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    """
    from .device import resolve_device
    from .methods import default_model_name
    from .models.checkpoint import CheckpointError
    from .models.registry import resolve_model

    method_class = get_method_class(method)
    try:
        path = resolve_model(model or default_model_name(method, noise=noise)).resolve()
    except CheckpointError:
        if model is not None:
            raise
        family = "ddpm" if method == "anoddpm" else method
        raise CheckpointError(
            f"no {method} model is installed: train one with 'napari-uad train DIR --method "
            f"{family} --out NAME', then pass --model NAME"
        ) from None
    torch_device = resolve_device(device)
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns if weights.exists() else 0
    return _load_method_cached(method_class, str(path), stamp, str(torch_device))


@lru_cache(maxsize=4)
def _load_method_cached(method_class, path: str, stamp: int, device: str) -> LoadedMethod:
    from .models.checkpoint import load_config, weights_sha256

    config = load_config(path)
    if not method_class.accepts(config.method):
        warnings.warn(
            f"model {config.name!r} was trained for {config.method!r}, "
            f"used here with {method_class.name!r}",
            stacklevel=3,
        )
    method_instance = method_class.from_checkpoint(path, device=device)
    digest = weights_sha256(path)
    return LoadedMethod(
        method=method_instance,
        model_name=config.name,
        model_path=Path(path),
        model_sha256=digest,
    )


def detect(scan: Scan, *, progress: ProgressCallback | None = None, **kwargs) -> Detection:
    """Detect anomalies in a scan: :func:`iter_detect` run to its end.

    Takes the same keyword arguments as :func:`iter_detect`; ``progress`` is called with every
    :class:`~napari_uad.methods.base.Progress` update.
    """
    return run_to_completion(iter_detect(scan, **kwargs), progress)


def iter_detect(
    scan: Scan,
    *,
    method: str = "anoddpm",
    model=None,
    brain_mask: np.ndarray | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    threshold: float | str = "auto",
    min_size: int = 0,
    min_volume_mm3: float = 0.0,
    erode_brain: int = 0,
    slices=None,
    samples: int = 1,
    should_stop: StopCallback | None = None,
    **params,
) -> Generator[Progress, None, Detection]:
    """Detect anomalies in a scan, as a generator of progress updates returning the result.

    Yields a :class:`~napari_uad.methods.base.Progress` after every network evaluation (with
    a preview of the current restoration) and returns a :class:`Detection`. Closing the
    generator, or ``should_stop()`` returning True, stops within one denoising step.

    Out of memory on a GPU, the batch is halved (down to one slice), then the run starts again
    on the CPU; each step gives a warning, and the provenance records ``batch_size_used`` and
    ``device_fallback``. Out of memory on the CPU with one slice per batch raises
    :class:`~napari_uad.io.InputError`. NaN and Inf voxels are set to 0 with a warning; scans
    above the size limit (:mod:`napari_uad.io.limits`) are refused.

    The scan is checked once (:mod:`napari_uad.checks`): a label map or mask passed as the scan
    raises :class:`~napari_uad.io.InputError`; skull and neck inside the brain mask, or a
    contrast unlike T1, give a one-line :class:`~napari_uad.checks.ScanWarning`, also recorded
    in the provenance (``"warnings"``).

    Slices are chosen as in training: only axial slices whose brain area (on the model grid)
    is at least the model's ``preprocessing.min_brain_fraction`` (0.35 when the config does not
    store one) of the largest slice's are processed; the others, thin end slices the model never
    saw, get anomaly 0. The provenance records ``min_brain_fraction`` and ``slices_skipped``
    (slices with brain left out by this rule).

    Parameters
    ----------
    scan : Scan
    method : str
        Method name (see ``napari-uad models`` and docs/methods.md).
    model : str or path, optional
        Model name or checkpoint folder; the method's shipped default when None.
    brain_mask : (X, Y, Z) bool ndarray, optional
        On the scan's grid; estimated when None.
    device, seed, batch_size :
        Where to run, the seed of all randomness, slices per network evaluation.
    threshold : float or 'auto'
        Lesion threshold on the anomaly map; 'auto' uses the model's calibrated healthy
        threshold.
    min_size : int
        Lesion components smaller than this many voxels are dropped.
    min_volume_mm3 : float
        Lesion components smaller than this volume in mm³ are dropped (on the scan's voxels;
        with ``min_size`` too, the larger of the two applies).
    erode_brain : int
        Erode the brain mask by this many voxels (per axial slice) before scoring, which
        silences the brain edge where reconstructions are least reliable.
    slices : sequence of int, optional
        Restrict to these axial slices (indices in RAS+ orientation, see
        :func:`napari_uad.preprocess.to_canonical`); all slices with enough brain (the slice rule
        above, which also applies to these) when None.
    samples : int
        Run the method with ``samples`` seeds (``seed``, ``seed + 1``, ...) and return the mean
        maps and the per-voxel standard deviation (``Detection.uncertainty``).
    should_stop : callable, optional
        Cooperative cancellation (see :meth:`~.methods.base.Method.iter_restore`).
    **params
        Method parameters (``noise``, ``noise_level``, ``steps``, ...).
    """
    threshold = parse_threshold(threshold)
    _check_run_arguments(params, erode_brain=erode_brain, min_size=min_size)
    min_voxels(min_volume_mm3, scan.spacing)  # a bad volume fails before the model loads
    timings: dict[str, float] = {}
    started = time.perf_counter()
    loaded = load_method(method, model, noise=params.get("noise"), device=device)
    _check_filter_sizes(params, grid=loaded.method.config.grid)
    timings["load_model_s"] = time.perf_counter() - started

    tick = time.perf_counter()
    config = loaded.method.config
    check_not_label_map(scan.data)
    prepared = prepare_volume(
        scan,
        brain_mask=brain_mask,
        grid=config.grid,
        lower_percentile=config.preprocessing.get("lower_percentile", 1.0),
        upper_percentile=config.preprocessing.get("upper_percentile", 99.0),
    )
    _check_axial_slices(prepared.brain_mask_ras.shape)
    scan_notes = _scan_warnings(scan, prepared, mask_given=brain_mask is not None)
    fraction = trained_brain_fraction(config.preprocessing)
    keep, skipped = _select_slices(prepared, slices, fraction=fraction)
    timings["preprocess_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    restore_args = dict(
        seed=seed,
        batch_size=batch_size,
        slice_ids=prepared.slice_indices[keep],
        should_stop=should_stop,
        samples=samples,
        **params,
    )
    images, masks = prepared.model_slices[keep], prepared.mask_model[keep]
    fallback = None
    try:
        result = yield from loaded.method.iter_restore(images, masks, **restore_args)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        where = loaded.method.device
        if where.type == "cpu":
            raise InputError(
                "Out of memory on the CPU even with one slice per batch: close other programs, "
                "or crop or downsample the scan"
            ) from error
        fallback = f"out of memory on {where} with one slice per batch; ran on the CPU"
        warnings.warn(f"{fallback[0].upper()}{fallback[1:]}", stacklevel=2)
        loaded = load_method(method, model, noise=params.get("noise"), device="cpu")
        result = yield from loaded.method.iter_restore(images, masks, **restore_args)
    timings["restore_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    healthy_model = np.zeros_like(prepared.model_slices)
    anomaly_model = np.zeros_like(prepared.model_slices)
    healthy_model[keep] = result.healthy
    anomaly_model[keep] = result.anomaly
    brain_mask_input = prepared.brain_mask_input
    scored = brain_mask_input
    if erode_brain > 0:
        eroded = erode_mask(prepared.brain_mask_ras, iterations=erode_brain)
        if not eroded.any():
            raise InputError(
                f"eroding the brain mask by {erode_brain} voxels leaves no brain to score: "
                "use a smaller --erode-brain (1 to 3 silences the brain edge)"
            )
        scored = from_canonical(eroded, prepared.orientation)
    anomaly = prepared.to_input_grid(anomaly_model).clip(min=0) * scored
    healthy = _to_scan_intensity(prepared, prepared.to_input_grid(healthy_model))
    healthy *= brain_mask_input
    uncertainty = None
    if result.uncertainty is not None:
        uncertainty_model = np.zeros_like(prepared.model_slices)
        uncertainty_model[keep] = result.uncertainty
        uncertainty = (prepared.to_input_grid(uncertainty_model).clip(min=0) * scored).astype(
            np.float32
        )
    threshold_value, threshold_source = _resolve_threshold(
        threshold, loaded.method, anomaly, scored
    )
    min_size_used = max(int(min_size), min_voxels(min_volume_mm3, scan.spacing))
    lesion_mask = binarise(anomaly, threshold_value, brain_mask=scored, min_size=min_size_used)
    lesions = lesion_table(lesion_mask, anomaly, spacing=scan.spacing)
    timings["postprocess_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    n_slices = int(np.count_nonzero(keep))
    timings["seconds_per_slice"] = timings["restore_s"] / max(n_slices, 1)

    provenance = {
        "method": method,
        "model": loaded.model_name,
        "model_path": str(loaded.model_path),
        "model_sha256": loaded.model_sha256,
        "parameters": {
            **result.parameters,
            "seed": seed,
            "samples": samples,
            "batch_size": batch_size,
            "threshold": threshold_value,
            "threshold_source": threshold_source,
            "min_size": min_size_used,
            "min_volume_mm3": float(min_volume_mm3),
            "erode_brain": erode_brain,
            "brain_mask": "given" if brain_mask is not None else "estimated",
        },
        "napari_uad_version": __version__,
        "device": str(loaded.method.device),
        "device_fallback": fallback,
        "batch_size_used": result.batch_size or batch_size,
        "nfe_per_slice": result.nfe,
        "slices_processed": n_slices,
        "slices_skipped": skipped,
        "min_brain_fraction": fraction,
        "warnings": scan_notes,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "lesions": lesion_summary(lesions, brain_voxels=int(np.count_nonzero(scored))),
    }
    return Detection(
        healthy=healthy.astype(np.float32),
        anomaly=anomaly.astype(np.float32),
        lesion_mask=lesion_mask.astype(np.uint8),
        brain_mask=scored,
        threshold=threshold_value,
        provenance=provenance,
        lesions=lesions,
        uncertainty=uncertainty,
    )


#: Axial slices narrower than this (in voxels, either in-plane axis) are not images.
MIN_INPLANE_VOXELS = 8


def _check_run_arguments(params: dict, *, erode_brain, min_size) -> None:
    """Refuse values no run can use before any work starts (one-line errors)."""
    for key, value in params.items():
        number = value
        if isinstance(value, str):  # "inf" and "nan" are not JSON: they arrive as text
            try:
                number = float(value)
            except ValueError:
                continue
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"{key} must be a finite number, got {value}")
    if int(erode_brain) < 0 or int(erode_brain) > 100:
        raise ValueError(f"erode_brain must be between 0 and 100 voxels, got {erode_brain}")
    if int(min_size) < 0:
        raise ValueError(f"min_size must be >= 0 voxels, got {min_size}")


def _check_filter_sizes(params: dict, *, grid: int) -> None:
    """Median/closing filter sizes act on the model grid: at most half of it."""
    for key in ("smoothing", "kernel"):
        value = params.get(key)
        if isinstance(value, (int, float)) and not 0 <= value <= grid // 2:
            raise ValueError(
                f"{key} must be between 0 and {grid // 2} pixels (half the model's {grid}-pixel "
                f"grid), got {value}"
            )


def _check_axial_slices(ras_shape) -> None:
    """A slab stored sagittally or coronally would give axial "slices" a voxel or two wide."""
    nx, ny = int(ras_shape[0]), int(ras_shape[1])
    if min(nx, ny) < MIN_INPLANE_VOXELS:
        raise InputError(
            f"the axial slices of this scan are {nx} x {ny} voxels: the models need axial "
            f"slices at least {MIN_INPLANE_VOXELS} voxels wide in both directions (is it a "
            "sagittal or coronal slab, or a wrong affine?); give a volume covering the brain"
        )


def _scan_warnings(scan: Scan, prepared: PreparedVolume, *, mask_given: bool) -> list[str]:
    """Issue the scan's :class:`ScanWarning` s (skull, contrast) and return their texts."""
    data_ras = to_canonical(scan.data, scan.affine)[0]
    if not np.isfinite(data_ras).all():  # prepare_volume has warned already
        data_ras = np.where(np.isfinite(data_ras), data_ras, 0)
    notes = scan_warnings(
        data_ras, prepared.brain_mask_ras, prepared.spacing_ras, mask_given=mask_given
    )
    for note in notes:
        warnings.warn(note, ScanWarning, stacklevel=3)
    return notes


def _select_slices(prepared: PreparedVolume, slices, *, fraction: float) -> tuple[np.ndarray, int]:
    """Boolean selector over ``prepared.slice_indices`` for the requested RAS slices that the
    training's slice rule keeps (brain area >= ``fraction`` of the largest slice's), and the
    number of requested slices with brain that the rule leaves out."""
    wanted = np.ones(len(prepared.slice_indices), dtype=bool)
    with_brain = np.flatnonzero(prepared.brain_mask_ras.any(axis=(0, 1)))
    if slices is not None:
        requested = np.asarray(list(slices), dtype=int)
        wanted = np.isin(prepared.slice_indices, requested)
        if not wanted.any():
            raise ValueError("none of the requested slices contains brain")
        with_brain = np.intersect1d(with_brain, requested)
    keep = wanted & trained_slices(prepared.mask_model, fraction)
    if not keep.any():
        raise InputError(
            f"the requested slices hold too little brain for this model: it was trained on "
            f"axial slices with at least {100 * fraction:.0f} % of the largest slice's brain "
            "area; choose slices nearer the middle of the brain"
        )
    return keep, int(with_brain.size - np.count_nonzero(keep))


def _to_scan_intensity(prepared: PreparedVolume, healthy01: np.ndarray) -> np.ndarray:
    """Undo the percentile normalisation so the pseudo-healthy image shares the scan's units."""
    low, high = prepared.intensity_range
    return (healthy01 * (high - low) + low).astype(np.float32)


def parse_threshold(value) -> float | str:
    """``'auto'`` or a float, from a number or a string; ``ValueError`` otherwise."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be 'auto' or a number, got {value!r}") from None
    if not np.isfinite(number):
        raise ValueError(f"threshold must be a finite number, got {value!r}")
    return number


def _resolve_threshold(threshold, method: Method, anomaly, brain_mask) -> tuple[float, str]:
    if threshold != "auto":
        return float(threshold), "given"
    calibrated = method.calibrated_threshold()
    if calibrated is not None:
        return float(calibrated), "model calibration"
    warnings.warn(
        f"model {method.config.name!r} has no calibrated threshold for {method.name}; using "
        "the 99th percentile "
        "of this scan's anomaly map (pass a number to choose one)",
        stacklevel=3,
    )
    return float(np.percentile(anomaly[brain_mask], 99.0)), "scan 99th percentile"

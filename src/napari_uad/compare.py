"""Several methods on one scan: detections side by side, with metrics against a truth mask.

GUI-free: ``napari-uad compare`` and the napari Compare widget both use it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io.atomic import atomic_write_text
from .methods import METHOD_NAMES
from .progress import Progress, run_to_completion

#: Columns of the comparison table, in order.
TABLE_COLUMNS = (
    "method",
    "model",
    "auroc",
    "ap",
    "best_dice",
    "dice_at_threshold",
    "threshold",
    "lesions",
    "volume_ml",
    "nfe_per_slice",
    "seconds_per_slice",
)


@dataclass
class MethodRun:
    """One method's detection in a comparison, with its metrics (None without a truth)."""

    method: str
    detection: Any
    metrics: dict[str, float] | None = None

    @property
    def label(self) -> str:
        provenance = self.detection.provenance
        return f"{self.method} ({provenance['model']}, {provenance['nfe_per_slice']} NFE)"

    def row(self) -> dict[str, Any]:
        """This run as a row of the comparison table."""
        provenance = self.detection.provenance
        row = {
            "method": self.method,
            "model": provenance["model"],
            "threshold": round(float(self.detection.threshold), 6),
            "lesions": provenance["lesions"]["count"],
            "volume_ml": provenance["lesions"]["total_volume_ml"],
            "nfe_per_slice": provenance["nfe_per_slice"],
            "seconds_per_slice": round(provenance["timings"]["seconds_per_slice"], 3),
        }
        if self.metrics is not None:
            row.update(
                {k: round(float(v), 4) for k, v in self.metrics.items() if k in TABLE_COLUMNS}
            )
        return row


@dataclass
class Comparison:
    """Result of :func:`compare_methods`."""

    runs: list[MethodRun] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [run.row() for run in self.runs]


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Method names from ``"a,b,c"`` (or a list), checked and without duplicates."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("give at least one method, e.g. --methods anoddpm,disyre")
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r}: available methods are {', '.join(METHOD_NAMES)}"
        )
    return list(dict.fromkeys(names))


def iter_compare(
    scan,
    methods: Sequence[str],
    *,
    models: dict[str, str] | None = None,
    truth: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    should_stop=None,
    **common,
) -> Generator[Progress, None, Comparison]:
    """Run each method on ``scan`` in turn, as a generator of progress; returns a
    :class:`Comparison`.

    Progress messages name the method; ``done``/``total`` count the network evaluations of the
    current method.

    Parameters
    ----------
    scan : Scan
    methods : sequence of str
    models : dict, optional
        Model name or folder per method (the shipped default otherwise).
    truth : (X, Y, Z) ndarray, optional
        Lesion truth on the scan's grid: each run gets AUROC, AP and Dice inside the brain.
    brain_mask : (X, Y, Z) bool ndarray, optional
        Shared by all methods (estimated once when None).
    params : dict, optional
        Method parameters per method name.
    **common
        Keyword arguments of :func:`napari_uad.pipeline.iter_detect` for every method
        (``device``, ``seed``, ``threshold``, ``slices``, ``samples``, ...).
    """
    from .metrics import evaluate
    from .pipeline import iter_detect
    from .preprocess import estimate_scan_brain_mask

    models = models or {}
    params = params or {}
    if brain_mask is None:
        # The brain Detect estimates: on the RAS+ volume, not the file's axis order.
        brain_mask = estimate_scan_brain_mask(scan.data, scan.affine)
    if truth is not None:
        inside = np.asarray(truth, dtype=bool) & np.asarray(brain_mask, dtype=bool)
        if not inside.any() or inside.all():
            raise ValueError(
                "the truth mask has no lesion voxel inside the brain"
                if not inside.any()
                else "the truth mask covers the whole brain: no healthy voxel to compare"
            )
    comparison = Comparison()
    for index, method in enumerate(methods):
        generator = iter_detect(
            scan,
            method=method,
            model=models.get(method),
            brain_mask=brain_mask,
            should_stop=should_stop,
            **common,
            **params.get(method, {}),
        )
        while True:
            try:
                update = next(generator)
            except StopIteration as finished:
                detection = finished.value
                break
            update.message = f"{method} ({index + 1}/{len(methods)})"
            yield update
        metrics = None
        if truth is not None:
            region = detection.brain_mask & processed_region(scan, common.get("slices"))
            metrics = evaluate(detection.anomaly, truth, mask=region, threshold=detection.threshold)
        comparison.runs.append(MethodRun(method, detection, metrics))
    return comparison


def compare_methods(scan, methods, *, progress=None, **kwargs) -> Comparison:
    """:func:`iter_compare` run to its end (``progress`` gets every update)."""
    return run_to_completion(iter_compare(scan, methods, **kwargs), progress)


def processed_region(scan, slices=None) -> np.ndarray:
    """Voxels of the axial slices that were processed: all, or the RAS+ axial ``slices``."""
    from .preprocess import from_canonical, to_canonical

    if slices is None:
        return np.ones(scan.shape, dtype=bool)
    ras, orientation = to_canonical(np.zeros(scan.shape, dtype=bool), scan.affine)
    ras[:, :, [int(z) for z in slices]] = True
    return from_canonical(ras, orientation)


def write_table(rows: list[dict[str, Any]], path) -> Path:
    """Write the comparison table as CSV (``.csv``) or JSON (``.json``), atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
    columns = [c for c in TABLE_COLUMNS if any(c in row for row in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())

"""One scan of a cohort run, start to finish: the unit a Dask worker (or this process) runs.

:func:`restore_scan` claims the scan's outputs (:class:`napari_uad.outputs.OutputSet`), reads
the scan, detects, writes every output complete-or-absent and returns the scan's row of the
group summary. Everything it needs travels in a picklable :class:`ScanJob`; the model is
loaded once per process (:func:`napari_uad.pipeline.load_method` caches it).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inputs import CohortScan
from .layout import NIFTI_ROLES, bids_sidecars, dumps


@dataclass(frozen=True)
class ScanJob:
    """Everything one scan's run needs (picklable, for Dask workers).

    Attributes
    ----------
    scan : CohortScan
    paths : dict of str to Path
        Role -> final output path (see :mod:`napari_uad.cohort.layout`).
    lock_stem : str
        Names the scan's lock file in its output folder.
    out : Path
        The run's ``--out`` (BIDS sidecars name files relative to it).
    bids : bool
        Write BIDS derivative sidecars.
    detect : dict
        Keyword arguments of :func:`napari_uad.pipeline.iter_detect` (method, model, device,
        seed, thresholds, method parameters, ...).
    prepare : PrepareOptions or None
        Prepare the raw scan first (``restore --prepare``).
    threads : int or None
        CPU threads for torch in this task.
    skip_existing : bool
        Keep complete outputs found once the scan is claimed.
    replaces : tuple of Path
        Files of earlier runs that this set replaces (an uncertainty map).
    """

    scan: CohortScan
    paths: dict[str, Path]
    lock_stem: str
    out: Path
    bids: bool = False
    detect: dict[str, Any] = field(default_factory=dict)
    prepare: Any = None
    threads: int | None = None
    skip_existing: bool = False
    replaces: tuple[Path, ...] = ()

    @property
    def folder(self) -> Path:
        return self.paths["provenance"].parent


def is_complete(paths: dict[str, Path]) -> bool:
    """True when every output exists and the provenance (renamed last) is readable JSON."""
    if not all(p.exists() for p in paths.values()):
        return False
    return read_provenance(paths["provenance"]) is not None


def read_provenance(path: Path) -> dict | None:
    """A scan's provenance JSON, or None when missing or unreadable."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def summary_row(job: ScanJob, provenance: dict, status: str, seconds: float | None) -> dict:
    """The group summary's row of a scan, from its provenance."""
    lesions = provenance.get("lesions") or {}
    parameters = provenance.get("parameters") or {}
    return {
        "scan": job.scan.key,
        "source": job.scan.source,
        "status": status,
        "lesions": lesions.get("count"),
        "total_ml": lesions.get("total_volume_ml"),
        "largest_ml": lesions.get("largest_volume_ml"),
        "brain_flagged_percent": lesions.get("brain_flagged_percent"),
        "threshold": parameters.get("threshold"),
        "method": provenance.get("method"),
        "model": provenance.get("model"),
        "seconds": round(seconds, 2) if seconds is not None else None,
        "warnings": "; ".join(str(w) for w in provenance.get("warnings") or []),
    }


def error_row(job: ScanJob, error: BaseException | str, seconds: float | None = None) -> dict:
    """The summary's row of a scan that failed."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return {
        "scan": job.scan.key,
        "source": job.scan.source,
        "status": "error",
        "seconds": round(seconds, 2) if seconds is not None else None,
        "error": message,
    }


def restore_scan(job: ScanJob, *, claim=None, progress=None, prepare_progress=None) -> dict:
    """Run a method on one scan and write its outputs; the scan's summary row.

    Parameters
    ----------
    job : ScanJob
    claim : OutputSet, optional
        The scan's outputs, already claimed by the caller (a sequential run claims every scan
        before it starts); claimed and released here when None.
    progress : callable, optional
        Called with every :class:`~napari_uad.methods.base.Progress` of the method.
    prepare_progress : callable, optional
        ``(done, total, step_name)`` of the preparation.

    Returns
    -------
    dict
        The summary row; its ``status`` is ``"done"`` or, with ``skip_existing`` and complete
        outputs, ``"skipped"``. ``"warnings_list"`` holds the run's warnings (not a column).

    Raises
    ------
    OutputsBusy
        Another live run holds the scan's outputs.
    InputError, ValueError, OSError
        Bad input; nothing of the scan is left half-written.
    """
    from ..device import cpu_threads
    from ..outputs import OutputSet

    started = time.perf_counter()
    own = claim is None
    relax_malloc_trim()
    with warnings.catch_warnings(record=True) as caught, cpu_threads(job.threads):
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if own:
            claim = OutputSet(job.folder, job.lock_stem, job.paths, replaces=job.replaces)
            job.folder.mkdir(parents=True, exist_ok=True)
            claim.claim()
        try:
            if job.skip_existing and is_complete(job.paths):
                row = summary_row(job, read_provenance(job.paths["provenance"]), "skipped", None)
            else:
                if own and claim.swept:  # a caller's own claim reports its sweep
                    warnings.warn(
                        f"removed what an interrupted run left: {', '.join(claim.swept[:4])}"
                        + (" …" if len(claim.swept) > 4 else ""),
                        stacklevel=2,
                    )
                provenance = _run_and_write(job, claim, progress, prepare_progress)
                row = summary_row(job, provenance, "done", time.perf_counter() - started)
        finally:
            if own:
                claim.release()
    row["warnings_list"] = [str(w.message) for w in caught]
    return row


def _run_and_write(job: ScanJob, claim, progress, prepare_progress) -> dict:
    from .. import __version__
    from ..io import read_mask, read_scan, write_nifti
    from ..io.atomic import atomic_write_text
    from ..pipeline import iter_detect
    from ..postprocess import lesions_to_csv
    from ..progress import run_to_completion

    detect_args = dict(job.detect)
    detect_args["device"] = worker_device(detect_args.get("device", "auto"))
    scan = read_scan(job.scan.path)
    if job.prepare is not None:
        from ..prepare import prepare_scan
        from ..prepare.core import check_preparable
        from ..prepare.detection import iter_detect_prepared

        check_preparable(scan)
        prepared = prepare_scan(scan, job.prepare, progress=prepare_progress)
        steps = iter_detect_prepared(scan, prepared=prepared, **detect_args)
    else:
        brain_mask = None
        if job.scan.brain_mask is not None:
            brain_mask = read_mask(job.scan.brain_mask, like=scan)
        steps = iter_detect(scan, brain_mask=brain_mask, **detect_args)
    result = run_to_completion(steps, progress)

    method, model = result.provenance["method"], result.provenance["model"]
    provenance = {
        "input": str(Path(job.scan.path).resolve()),
        "input_shape": list(scan.shape),
        "scan": job.scan.key,
        "outputs": {k: v.name for k, v in job.paths.items() if k != "provenance"},
        **result.provenance,
    }
    description = f"napari-uad {__version__} {method} model={model}"
    maps = {
        "healthy": result.healthy,
        "anomaly": result.anomaly,
        "mask": result.lesion_mask,
        "brain_mask": result.brain_mask,
        "uncertainty": result.uncertainty,
    }
    for role, (what, dtype, intent) in NIFTI_ROLES.items():
        if role in job.paths:
            write_nifti(
                claim.stage(role),
                maps[role],
                like=scan,
                dtype=dtype,
                description=f"{description} {what}",
                intent=intent,
            )
    lesions_to_csv(
        result.lesions,
        claim.stage("lesions"),
        affine=scan.affine,
        threshold=float(result.threshold),
        method=method,
        model=model,
        delimiter="\t",
    )
    if job.bids:
        sidecars = bids_sidecars(job.scan, provenance, job.paths, job.out)
        for role, content in sidecars.items():
            atomic_write_text(claim.stage(role), dumps(content))
    else:
        atomic_write_text(claim.stage("provenance"), dumps(provenance))
    claim.commit()
    return provenance


#: glibc ``mallopt`` parameters, and the values glibc's own dynamic threshold settles at.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def relax_malloc_trim() -> bool:
    """Undo Dask's ``MALLOC_TRIM_THRESHOLD_`` in this process (glibc only); True if it did.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that they hand memory
    back to the system. That also fixes glibc's mmap threshold at its 128 KiB minimum, so every
    large tensor is a fresh ``mmap`` and page faults: the networks ran at half speed (12 s
    instead of 6 s a scan on one CPU thread, measured). This sets the thresholds glibc would
    reach on its own; memory is still returned, in larger steps.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        done &= libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(done)


def worker_device(device: str) -> str:
    """``device``, except that ``"auto"`` in a Dask worker on a several-GPU machine takes the
    worker's own GPU (worker n -> ``cuda:(n mod GPUs)``), so local GPU workers do not share one."""
    # Not imported here unless Dask already is: a run in this process has no worker.
    if device != "auto" or "distributed" not in sys.modules:
        return device
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count <= 1:
        return device
    return f"cuda:{gpu_index(worker.name, count)}"


def gpu_index(worker_name, count: int) -> int:
    """The GPU of a worker: its number when the name is one (LocalCluster), else a hash."""
    text = str(worker_name)
    digits = text.rsplit("-", 1)[-1]
    if digits.isdigit():
        return int(digits) % count
    return sum(text.encode()) % count

"""Running a cohort: in this process, or as Dask tasks on worker processes or a cluster.

Either way each scan is one :func:`~napari_uad.cohort.task.restore_scan` call, and each
finished scan updates the group summary and the run log at once (from this process, the only
writer). On Dask, a worker that dies (killed, out of memory) has its scan rescheduled on
another worker by the scheduler; the new attempt takes over the scan's lock, removes what the
dead one left and starts the scan again, so nothing half-written survives.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence

from .summary import GroupSummary, RunLog
from .task import ScanJob, error_row, restore_scan

#: Scheduler option: how many workers may die running one scan before it is reported failed.
ALLOWED_FAILURES = 3


def run_sequential(
    jobs: Sequence[ScanJob],
    *,
    summary: GroupSummary,
    log: RunLog,
    claims=None,
    progress_for: Callable | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the scans one after the other in this process.

    Parameters
    ----------
    jobs : sequence of ScanJob
    summary, log :
        Updated after every scan.
    claims : sequence of OutputSet, optional
        Each job's outputs, claimed by the caller beforehand.
    progress_for : callable, optional
        ``progress_for(job) -> (progress, prepare_progress, close)`` for per-scan bars.
    on_row : callable, optional
        Called with each finished row (e.g. to print it).

    Returns
    -------
    list of dict
        The summary rows in job order; a failed scan's row has ``status="error"`` and the
        exception under ``"exception"``.
    """
    rows = []
    for index, job in enumerate(jobs):
        log.write(job.scan.key, "start", str(job.scan.path))
        started = time.perf_counter()
        progress = prepare_progress = None
        close = None
        if progress_for is not None:
            progress, prepare_progress, close = progress_for(job)
        try:
            row = restore_scan(
                job,
                claim=claims[index] if claims is not None else None,
                progress=progress,
                prepare_progress=prepare_progress,
            )
        except Exception as error:  # noqa: BLE001 - one scan's failure must not end the cohort
            row = error_row(job, error, time.perf_counter() - started)
            row["exception"] = error
        finally:
            if close is not None:
                close()
        _record(row, summary, log)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def run_dask(
    jobs: Sequence[ScanJob],
    *,
    summary: GroupSummary,
    log: RunLog,
    workers: int = 2,
    scheduler: str | None = None,
    threads: int | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the scans as Dask tasks.

    Parameters
    ----------
    jobs : sequence of ScanJob
    summary, log :
        Updated as each scan finishes (in this process).
    workers : int
        Worker processes of the local cluster started when ``scheduler`` is None (one thread
        each; torch gets ``cores / workers`` threads unless ``threads`` says otherwise).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``), e.g. a dask-jobqueue
        SLURM or PBS cluster's; its workers need napari-uad installed.
    threads : int, optional
        torch threads per task.
    on_row : callable, optional
        Called with each finished row.

    Returns
    -------
    list of dict
        The summary rows in job order (see :func:`run_sequential`).
    """
    import dask
    from distributed import Client, LocalCluster, as_completed
    from distributed.client import FutureCancelledError

    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            if threads is None:
                threads = max(1, (os.cpu_count() or 1) // workers)
        client = Client(cluster if cluster is not None else scheduler)
    try:
        if threads is not None:
            jobs = [_with_threads(job, threads) for job in jobs]
        futures = {}
        for index, job in enumerate(jobs):
            log.write(job.scan.key, "submitted", str(job.scan.path))
            future = client.submit(
                restore_scan, job, key=f"napari-uad-{index}-{job.scan.key}", pure=False
            )
            futures[future] = index
        rows: list[dict | None] = [None] * len(jobs)
        for future in as_completed(futures):
            index = futures[future]
            job = jobs[index]
            try:
                row = future.result()
            except FutureCancelledError as error:
                row = error_row(job, f"cancelled: {error}")
                row["exception"] = error
            except Exception as error:  # noqa: BLE001 - includes KilledWorker
                row = error_row(job, _explain(error))
                row["exception"] = error
            _record(row, summary, log)
            rows[index] = row
            if on_row is not None:
                on_row(row)
        return rows  # type: ignore[return-value]
    except BaseException:
        client.cancel(list(futures) if "futures" in locals() else [])
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _with_threads(job: ScanJob, threads: int) -> ScanJob:
    from dataclasses import replace

    return job if job.threads is not None else replace(job, threads=threads)


def _explain(error: BaseException) -> str:
    if type(error).__name__ == "KilledWorker":
        return f"the worker running it died {ALLOWED_FAILURES + 1} times (out of memory? killed?)"
    return str(error) or type(error).__name__


def _record(row: dict, summary: GroupSummary, log: RunLog) -> None:
    summary.update(row)
    detail = row.get("error") or ""
    if row["status"] == "done":
        detail = f"{row.get('lesions')} lesion(s), {row.get('total_ml')} mL, {row.get('seconds')} s"
    for message in row.get("warnings_list") or []:
        log.write(row["scan"], "warning", message)
    log.write(row["scan"], row["status"], detail)
    error = row.get("exception")
    if error is not None and not is_input_error(error):
        log.write(row["scan"], "traceback", "".join(traceback.format_exception(error)))


def is_input_error(error: BaseException) -> bool:
    """Whether an error is the user's input (reported in one line), not a bug."""
    from ..io import InputError
    from ..models.checkpoint import CheckpointError

    return isinstance(error, (InputError, CheckpointError, ValueError, OSError))

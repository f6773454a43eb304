"""The group summary (one row per scan, kept up to date as a run goes) and the run log.

The summary ``napari-uad_summary.tsv`` is rewritten atomically after every scan, under a lock
(``flock`` on the log, which is only ever appended to), merging the rows already there: runs on
other scans of the same folder, earlier runs, and runs resumed with ``--skip-existing`` all end
in one table. The log ``napari-uad_log.tsv`` gets one line per event (start, done, skipped,
error, ...), appended.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from pathlib import Path

from ..io.atomic import atomic_write_text

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

SUMMARY_COLUMNS = (
    "scan",
    "source",
    "status",
    "lesions",
    "total_ml",
    "largest_ml",
    "brain_flagged_percent",
    "threshold",
    "method",
    "model",
    "seconds",
    "warnings",
    "error",
    "finished",
)
LOG_COLUMNS = ("time", "scan", "event", "detail")


class GroupSummary:
    """The summary TSV of an output folder.

    Parameters
    ----------
    path : Path
        The TSV; created on the first :meth:`update`.
    lock : Path, optional
        A file that is never replaced (the run log), locked while the summary is rewritten;
        default: a hidden ``.<name>.lock`` beside the summary.
    """

    def __init__(self, path: Path, *, lock: Path | None = None):
        self.path = Path(path)
        self.lock = (
            Path(lock) if lock is not None else self.path.with_name(f".{self.path.name}.lock")
        )

    def rows(self) -> list[dict]:
        """The rows on disk (empty when there is no summary yet)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return list(csv.DictReader(io.StringIO(text), delimiter="\t"))

    def update(self, row: dict) -> None:
        """Add or replace (by ``scan``) one row and rewrite the file atomically."""
        row = {**row, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with self._locked():
            rows = {r["scan"]: r for r in self.rows()}
            rows[str(row["scan"])] = {c: _cell(row.get(c)) for c in SUMMARY_COLUMNS}
            buffer = io.StringIO()
            writer = csv.DictWriter(
                buffer, SUMMARY_COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore"
            )
            writer.writeheader()
            writer.writerows(rows[key] for key in sorted(rows))
            atomic_write_text(self.path, buffer.getvalue())

    @contextlib.contextmanager
    def _locked(self):
        if fcntl is None:  # pragma: no cover - Windows: one run per folder
            yield
            return
        handle = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)


class RunLog:
    """The run log TSV of an output folder: ``time, scan, event, detail`` lines, appended."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, scan: str, event: str, detail: str = "") -> None:
        """Append one line (one ``write`` call, so lines of concurrent runs do not mix)."""
        line = "\t".join(
            _clean(v) for v in (time.strftime("%Y-%m-%dT%H:%M:%S"), scan, event, detail)
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            new = os.fstat(fd).st_size == 0
            text = ("\t".join(LOG_COLUMNS) + "\n" if new else "") + line + "\n"
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return _clean(str(value))


def _clean(text) -> str:
    return " ".join(str(text).split())

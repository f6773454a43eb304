"""The review state of a cohort (not run / done / reviewed per case), kept in a JSON file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..io.errors import InputError
from .names import STATE_FILE, STATUSES


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
        from ..io.atomic import atomic_write_text

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

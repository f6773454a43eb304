"""Progress updates and cooperative cancellation of long work (no torch, no Qt).

Long work in napari-uad (restoration, preparation, calibration, training) is a generator that
yields :class:`Progress` updates and returns its result; :func:`run_to_completion` drives one
to its end, and a ``should_stop`` callback returning True makes the work raise
:class:`Cancelled` at its next check.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np


class Cancelled(Exception):
    """Raised inside long work when its ``should_stop`` callback returns True."""


@dataclass
class Progress:
    """One progress update: ``done`` of ``total`` network evaluations (batched).

    ``preview`` holds the current clean-image estimate of the batch being processed,
    (B, H, W) in [0, 1], with ``slice_ids`` its slice indices; None when previews are off.
    """

    done: int
    total: int
    message: str = ""
    preview: np.ndarray | None = None
    slice_ids: Sequence[int] | None = None


ProgressCallback = Callable[[Progress], None]
StopCallback = Callable[[], bool]


def run_to_completion(generator: Generator, progress: ProgressCallback | None = None):
    """Drive a progress generator to its end, calling ``progress`` with each update; returns
    the generator's return value."""
    while True:
        try:
            update = next(generator)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(update)

"""The interface every anomaly detection method implements.

A method works on the model grid: a stack of normalised axial slices (N, H, W) in [0, 1] with
their brain masks. It returns the pseudo-healthy slices and anomaly maps on the same grid.
Mapping to and from the scan's own grid is the pipeline's job (:mod:`napari_uad.pipeline`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class Cancelled(Exception):
    """Raised inside a method when its ``should_stop`` callback returns True."""


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


@dataclass
class RestoreResult:
    """Output of :meth:`Method.restore` on the model grid.

    Attributes
    ----------
    healthy : (N, H, W) float32 ndarray
        Pseudo-healthy reconstruction in [0, 1].
    anomaly : (N, H, W) float32 ndarray
        Anomaly map, higher is more anomalous, 0 outside the brain.
    nfe : int
        Network evaluations per slice.
    parameters : dict
        The parameters actually used (defaults filled in).
    intermediates : list of (N, H, W) ndarray
        Clean-image estimates along the way, when requested.
    """

    healthy: np.ndarray
    anomaly: np.ndarray
    nfe: int
    parameters: dict[str, Any]
    intermediates: list[np.ndarray] = field(default_factory=list)


class Method(ABC):
    """Base class of the anomaly detection methods.

    Subclasses set ``name``, ``defaults`` (parameter -> default value) and implement
    :meth:`_restore_batch`. Parameters given to :meth:`restore` override the model's own
    defaults (``config.defaults``), which override the class defaults.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model, config, *, device=None):
        import torch

        self.model = model
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def resolve_parameters(self, **overrides) -> dict[str, Any]:
        """Class defaults, updated by the model's defaults, then by non-None ``overrides``."""
        params = dict(self.defaults)
        params.update({k: v for k, v in self.config.defaults.items() if k in self.defaults})
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"{self.name} has no parameter(s) {sorted(unknown)}; "
                f"it takes {sorted(self.defaults)}"
            )
        params.update({k: v for k, v in overrides.items() if v is not None})
        self.validate(params)
        return params

    def validate(self, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` for parameter values this method cannot use."""
        return None

    def restore(
        self,
        images: np.ndarray,
        brain_masks: np.ndarray,
        *,
        seed: int = 0,
        batch_size: int = 8,
        slice_ids: Sequence[int] | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
        keep_intermediates: bool = False,
        **params,
    ) -> RestoreResult:
        """Pseudo-healthy reconstruction and anomaly map of a stack of slices.

        Parameters
        ----------
        images : (N, H, W) float ndarray
            Normalised slices in [0, 1], H = W = the model grid.
        brain_masks : (N, H, W) bool ndarray
        seed : int
            Randomness is drawn per slice from ``(seed, slice id)``, so a slice gets the same
            result whether it runs alone or within a volume, whatever the batch size.
        batch_size : int
            Slices per network evaluation.
        slice_ids : sequence of int, optional
            Identifiers of the slices (their index in the volume); defaults to 0..N-1.
        progress, should_stop : callables, optional
            Called after every network evaluation; ``should_stop() -> True`` raises
            :class:`Cancelled` within one denoising step.
        keep_intermediates : bool
            Keep the clean-image estimate after each step (memory grows with the steps).
        **params
            Method parameters; see ``defaults``.
        """
        import torch

        images = np.asarray(images, dtype=np.float32)
        brain_masks = np.asarray(brain_masks, dtype=bool)
        if images.ndim != 3 or images.shape != brain_masks.shape:
            raise ValueError("images and brain_masks must both be (N, H, W) with equal shapes")
        if images.shape[1:] != (self.config.grid, self.config.grid):
            raise ValueError(
                f"slices are {images.shape[1:]}, the model expects "
                f"{(self.config.grid, self.config.grid)}"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        params = self.resolve_parameters(**params)
        slice_ids = list(range(len(images))) if slice_ids is None else list(slice_ids)
        steps_per_batch = self.evaluations_per_slice(params)
        n_batches = -(-len(images) // batch_size)
        tracker = _Tracker(steps_per_batch * n_batches, progress, should_stop)

        healthy = np.zeros_like(images)
        anomaly = np.zeros_like(images)
        intermediates: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                stop = start + batch_size
                batch = torch.from_numpy(images[start:stop]).to(self.device)[:, None]
                mask = torch.from_numpy(brain_masks[start:stop]).to(self.device)[:, None]
                generators = [
                    _slice_generator(seed, slice_id, self.device)
                    for slice_id in slice_ids[start:stop]
                ]
                out_healthy, out_anomaly, steps = self._restore_batch(
                    batch, mask, params, generators, tracker.bind(slice_ids[start:stop])
                )
                healthy[start:stop] = out_healthy[:, 0].float().cpu().numpy()
                anomaly[start:stop] = out_anomaly[:, 0].float().cpu().numpy()
                if keep_intermediates:
                    intermediates.append([s[:, 0].float().cpu().numpy() for s in steps])
        anomaly[~brain_masks] = 0.0
        stacked = []
        if keep_intermediates and intermediates:
            stacked = [np.concatenate(parts) for parts in zip(*intermediates, strict=True)]
        return RestoreResult(
            healthy=healthy,
            anomaly=anomaly.astype(np.float32),
            nfe=steps_per_batch,
            parameters=params,
            intermediates=stacked,
        )

    @abstractmethod
    def evaluations_per_slice(self, params: dict[str, Any]) -> int:
        """Network evaluations (NFE) one slice needs with these parameters."""

    @abstractmethod
    def _restore_batch(self, images, masks, params, generators, tracker):
        """Restore a batch: ``images`` (B, 1, H, W) in [0, 1], ``masks`` (B, 1, H, W) bool.

        Returns ``(healthy, anomaly, intermediates)`` as tensors (B, 1, H, W) and a list of
        (B, 1, H, W) tensors. Call ``tracker.step(preview)`` after every network evaluation.
        """


def _slice_generator(seed: int, slice_id: int, device):
    import torch

    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed((int(seed) * 1_000_003 + int(slice_id)) % (2**63 - 1))
    return generator


class _Tracker:
    """Counts network evaluations, reports progress and honours the stop flag."""

    def __init__(self, total, progress, should_stop):
        self.total = total
        self.done = 0
        self.progress = progress
        self.should_stop = should_stop
        self.slice_ids = None

    def bind(self, slice_ids):
        self.slice_ids = list(slice_ids)
        return self

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled by the user")

    def step(self, preview=None, message: str = "") -> None:
        self.done += 1
        if self.progress is not None:
            image = None
            if preview is not None:
                image = preview[:, 0].float().clamp(0, 1).cpu().numpy()
            self.progress(
                Progress(self.done, self.total, message, preview=image, slice_ids=self.slice_ids)
            )
        self.check()

"""The interface every anomaly detection method implements.

A method works on the model grid: a stack of normalised axial slices (N, H, W) in [0, 1] with
their brain masks. It returns the pseudo-healthy slices and anomaly maps on the same grid.
Mapping to and from the scan's own grid is the pipeline's job (:mod:`napari_uad.pipeline`).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..device import inference_layout
from ..progress import (  # noqa: F401 - re-exported: the methods' progress API
    Cancelled,
    Progress,
    ProgressCallback,
    StopCallback,
    run_to_completion,
)


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
    batch_size : int or None
        Slices per network evaluation at the end (smaller than asked after running out of
        memory).
    uncertainty : (N, H, W) float32 ndarray or None
        Per-pixel standard deviation of the anomaly map over ``samples`` runs with different
        seeds (None for a single run); ``healthy`` and ``anomaly`` are then the means.
    samples : int
        Number of runs averaged.
    """

    healthy: np.ndarray
    anomaly: np.ndarray
    nfe: int
    parameters: dict[str, Any]
    intermediates: list[np.ndarray] = field(default_factory=list)
    batch_size: int | None = None
    uncertainty: np.ndarray | None = None
    samples: int = 1


class Method(ABC):
    """Base class of the anomaly detection methods.

    Subclasses set ``name``, ``defaults`` (parameter -> default value) and implement
    :meth:`_restore_batch`. Parameters given to :meth:`restore` override the model's own
    defaults (``config.defaults``), which override the class defaults.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: Channels of the network's input and output images.
    channels: ClassVar[tuple[int, int]] = (1, 1)
    #: Model families (``config.method``) this method runs on; the first is its own.
    model_methods: ClassVar[tuple[str, ...]] = ()
    #: Name of the shipped model used when none is given.
    default_model: ClassVar[str | None] = None
    #: Whether the result depends on the seed (False: ``samples > 1`` only repeats the run).
    stochastic: ClassVar[bool] = True

    def __init__(self, model, config, *, device=None):
        from ..models.checkpoint import CheckpointError

        found = self.network_channels(config)
        expected = self.expected_channels(config)
        if found != expected:
            raise CheckpointError(
                f"model {config.name!r} maps {found[0]}-channel images to {found[1]} channels; "
                f"{self.name} needs {expected[0]} to {expected[1]}"
            )
        self.model = model
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @classmethod
    def from_checkpoint(cls, folder, *, device="cpu") -> Method:
        """The method with the model of a checkpoint folder (and the components it needs)."""
        from ..models.checkpoint import load_checkpoint

        model, config = load_checkpoint(folder, device=device)
        return cls(inference_layout(model, device), config, device=device)

    @classmethod
    def accepts(cls, model_method: str) -> bool:
        """Whether a model trained for ``model_method`` can run this method."""
        return model_method in (cls.model_methods or (cls.name,))

    @classmethod
    def is_own_model(cls, config) -> bool:
        """Whether the model was trained for this very method (its flat defaults and its
        top-level calibration are this method's)."""
        return config.method == cls.name or (config.method == "ddpm" and cls.name == "anoddpm")

    @staticmethod
    def network_channels(config) -> tuple[int, int]:
        unet = getattr(config, "unet", None)
        return (getattr(unet, "in_channels", 1), getattr(unet, "out_channels", 1))

    def expected_channels(self, config) -> tuple[int, int]:
        """Input and output channels the network must have for this method."""
        return self.channels

    @classmethod
    def model_defaults_of(cls, config) -> dict[str, Any]:
        """A model's own defaults for this method.

        A model's flat ``config.defaults`` apply to the method it was trained for; a model
        shared by several methods (a DDPM serves ``anoddpm``, ``autoddpm`` and ``thor``) keeps
        the others' under their name, e.g. ``{"noise_level": 25, "thor": {"noise_level": 350}}``.
        """
        stored = config.defaults or {}
        own = cls.is_own_model(config)
        params = {k: v for k, v in stored.items() if own and k in cls.defaults}
        nested = stored.get(cls.name)
        if isinstance(nested, dict):
            params.update({k: v for k, v in nested.items() if k in cls.defaults})
        return params

    @classmethod
    def defaults_for_config(cls, config) -> dict[str, Any]:
        """Class defaults updated by a model's own defaults (what a run uses unless told)."""
        return {**cls.defaults, **cls.model_defaults_of(config)}

    def calibrated_threshold(self) -> float | None:
        """The model's healthy threshold for this method's maps (None when not calibrated)."""
        return self.calibrated_threshold_of(self.config)

    @classmethod
    def calibrated_threshold_of(cls, config) -> float | None:
        """This method's healthy threshold stored in a model ``config`` (None when none)."""
        calibration = config.calibration or {}
        per_method = calibration.get("methods", {})
        if isinstance(per_method, dict) and isinstance(per_method.get(cls.name), dict):
            value = per_method[cls.name].get("threshold")
            return None if value is None else float(value)
        if cls.is_own_model(config):
            value = calibration.get("threshold")
            return None if value is None else float(value)
        return None

    def resolve_parameters(self, **overrides) -> dict[str, Any]:
        """Class defaults, updated by the model's defaults, then by non-None ``overrides``."""
        params = dict(self.defaults)
        params.update(self.model_defaults_of(self.config))
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
        progress: ProgressCallback | None = None,
        **kwargs,
    ) -> RestoreResult:
        """Pseudo-healthy reconstruction and anomaly map of a stack of slices.

        Runs :meth:`iter_restore` to the end, passing each update to ``progress``; takes the
        same keyword arguments.
        """
        return run_to_completion(self.iter_restore(images, brain_masks, **kwargs), progress)

    def iter_restore(
        self,
        images: np.ndarray,
        brain_masks: np.ndarray,
        *,
        seed: int = 0,
        batch_size: int = 8,
        slice_ids: Sequence[int] | None = None,
        should_stop: StopCallback | None = None,
        keep_intermediates: bool = False,
        samples: int = 1,
        **params,
    ) -> Generator[Progress, None, RestoreResult]:
        """Like :meth:`restore`, as a generator: yields a :class:`Progress` after every network
        evaluation and returns the :class:`RestoreResult` (napari generator workers use this).

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
        should_stop : callable, optional
            Checked after every network evaluation; returning True raises :class:`Cancelled`,
            so work stops within one denoising step. Closing the generator stops it too.
        keep_intermediates : bool
            Keep the clean-image estimate after each step (memory grows with the steps); of
            the first run when ``samples > 1``.
        samples : int
            Runs with seeds ``seed, seed + 1, ...``; the result holds the mean maps and the
            per-pixel standard deviation of the anomaly map (``uncertainty``). NFE and time
            grow ``samples`` times. The first run is the single-run result of ``seed``.
        **params
            Method parameters; see ``defaults``.
        """
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
        samples = int(samples)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        params = self.resolve_parameters(**params)
        slice_ids = list(range(len(images))) if slice_ids is None else list(slice_ids)
        steps_per_batch = self.evaluations_per_slice(params)
        counter = {"done": 0, "batch_size": batch_size}

        healthy_sum = np.zeros(images.shape, dtype=np.float64)
        anomaly_sum = np.zeros(images.shape, dtype=np.float64)
        anomaly_squares = np.zeros(images.shape, dtype=np.float64) if samples > 1 else None
        intermediates: list[np.ndarray] = []
        for sample in range(samples):
            healthy, anomaly, estimates = yield from self._run_once(
                images,
                brain_masks,
                params,
                seed=int(seed) + sample,
                slice_ids=slice_ids,
                counter=counter,
                steps_per_batch=steps_per_batch,
                remaining_samples=samples - sample,
                should_stop=should_stop,
                keep_intermediates=keep_intermediates and sample == 0,
            )
            healthy_sum += healthy
            anomaly_sum += anomaly
            if anomaly_squares is not None:
                anomaly_squares += anomaly.astype(np.float64) ** 2
            if sample == 0:
                intermediates = estimates
        anomaly = anomaly_sum / samples
        anomaly[~brain_masks] = 0.0
        uncertainty = None
        if anomaly_squares is not None:
            variance = np.clip(anomaly_squares / samples - anomaly**2, 0, None)
            uncertainty = (np.sqrt(variance) * brain_masks).astype(np.float32)
        return RestoreResult(
            healthy=(healthy_sum / samples).astype(np.float32),
            anomaly=anomaly.astype(np.float32),
            nfe=self.network_evaluations(params) * samples,
            parameters=params,
            intermediates=intermediates,
            batch_size=counter["batch_size"],
            uncertainty=uncertainty,
            samples=samples,
        )

    def _run_once(
        self,
        images,
        brain_masks,
        params,
        *,
        seed,
        slice_ids,
        counter,
        steps_per_batch,
        remaining_samples,
        should_stop,
        keep_intermediates,
    ):
        """One pass over all slices with one seed; yields progress, returns the arrays."""
        batch_size = counter["batch_size"]

        def planned_total(start):
            this_run = steps_per_batch * -(-(len(images) - start) // batch_size)
            later = steps_per_batch * -(-len(images) // batch_size) * (remaining_samples - 1)
            return counter["done"] + this_run + later

        total = planned_total(0)
        healthy = np.zeros_like(images)
        anomaly = np.zeros_like(images)
        intermediates: list[list[np.ndarray]] = []
        start = 0
        while start < len(images):
            stop = start + batch_size
            batch_ids = slice_ids[start:stop]
            estimates = []
            try:
                batch = torch.from_numpy(images[start:stop]).to(self.device)[:, None]
                mask = torch.from_numpy(brain_masks[start:stop]).to(self.device)[:, None]
                generators = [_slice_generator(seed, i, self.device) for i in batch_ids]
                steps = self._restore_batch(batch, mask, params, generators)
                while True:
                    # Inference mode only around the network work: this generator yields.
                    with torch.inference_mode():
                        try:
                            estimate = next(steps)
                        except StopIteration as finished:
                            out_healthy, out_anomaly = finished.value
                            break
                        preview = estimate[:, 0].float().clamp(0, 1).cpu().numpy()
                    if keep_intermediates:
                        estimates.append(preview)
                    counter["done"] += 1
                    yield Progress(counter["done"], total, preview=preview, slice_ids=batch_ids)
                    if should_stop is not None and should_stop():
                        raise Cancelled("cancelled by the user")
            except Exception as error:
                if not is_out_of_memory(error) or batch_size == 1:
                    raise
                # Out of memory: free what the batch held, retry it with half the slices.
                batch = mask = generators = steps = None
                _empty_cache(self.device)
                batch_size = counter["batch_size"] = max(1, batch_size // 2)
                warnings.warn(
                    f"out of memory on {self.device}: retrying with batch size {batch_size}",
                    stacklevel=3,
                )
                total = planned_total(start)
                continue
            self._check_finite(out_healthy, out_anomaly)
            healthy[start:stop] = out_healthy[:, 0].float().cpu().numpy()
            anomaly[start:stop] = out_anomaly[:, 0].float().cpu().numpy()
            intermediates.append(estimates)
            start = stop
        stacked = []
        if keep_intermediates:
            stacked = [np.concatenate(parts) for parts in zip(*intermediates, strict=True)]
        return healthy, anomaly, stacked

    def _check_finite(self, healthy: torch.Tensor, anomaly: torch.Tensor) -> None:
        """Raise a one-line ``CheckpointError`` when a batch's results hold NaN or Inf.

        The inputs are finite (the pipeline replaces non-finite voxels), so non-finite results
        come from the network: weights that load but overflow, or are otherwise broken.
        """
        if bool(torch.isfinite(healthy).all()) and bool(torch.isfinite(anomaly).all()):
            return
        from ..models.checkpoint import CheckpointError

        raise CheckpointError(
            f"model {self.config.name!r} computes non-finite values (NaN/Inf) for {self.name}: "
            "the weights are broken; retrain or re-download it"
        )

    @abstractmethod
    def evaluations_per_slice(self, params: dict[str, Any]) -> int:
        """Progress steps of one batch: how many times :meth:`_restore_batch` yields."""

    def network_evaluations(self, params: dict[str, Any]) -> int:
        """Network evaluations (NFE) one slice needs with these parameters (reported as NFE;
        the same as :meth:`evaluations_per_slice` unless a step evaluates several patches)."""
        return self.evaluations_per_slice(params)

    @abstractmethod
    def _restore_batch(self, images, masks, params, generators):
        """Restore a batch, as a generator.

        ``images`` (B, 1, H, W) in [0, 1], ``masks`` (B, 1, H, W) bool, ``generators`` one
        ``torch.Generator`` per slice. Yield the current clean-image estimate (B, 1, H, W) in
        [0, 1] after every network evaluation, and return ``(healthy, anomaly)`` tensors
        (B, 1, H, W).
        """


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception means the device ran out of memory (CUDA, MPS or CPU allocator).

    Parameters
    ----------
    error : BaseException

    Returns
    -------
    bool
    """
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _empty_cache(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _slice_generator(seed: int, slice_id: int, device):
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed((int(seed) * 1_000_003 + int(slice_id)) % (2**63 - 1))
    return generator

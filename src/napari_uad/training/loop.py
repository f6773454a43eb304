"""The training loop every model family shares.

A :class:`Trainer` owns its networks, their AdamW optimisers and EMA copies, one seeded
``torch.Generator`` for everything random (data order, augmentation, noise, masks), and the
output folder. Subclasses build the networks and define one optimisation step. The loop adds
warm-up + cosine learning rates, gradient clipping, EMA, previews, atomic checkpoints of the
exported model (``config.json`` + ``model.safetensors``) and of a resumable state
(``training_state.safetensors``), data-parallel training under ``torchrun`` and mixed
precision on CUDA. :meth:`Trainer.iter_run` is a generator of :class:`TrainUpdate`, so the CLI
and the napari Train widget (a generator thread worker) drive the same code.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import platform
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..device import resolve_device
from ..io.atomic import atomic_write_text
from ..models.checkpoint import save_checkpoint
from ..models.config import ModelConfig
from . import distributed
from .augment import AugmentConfig, augment_batch
from .dataset import HealthySlices
from .state import (
    STATE_NAME,
    flatten_optimiser,
    load_module_tensors,
    load_state,
    module_tensors,
    restore_optimiser,
    save_state,
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSS_LOG_NAME = "losses.csv"


@dataclass
class TrainSettings:
    """Optimisation settings shared by every trainer (stored in the model card).

    Parameters
    ----------
    steps : int
        Total optimisation steps (a resumed run continues up to this).
    batch_size : int
        Slices per step (per process under ``torchrun``).
    learning_rate : float
        Peak AdamW learning rate, reached after ``warmup_steps`` and decayed by a cosine to a
        tenth of it at the end.
    ema_decay : float
        Decay of the exponential moving average of the weights (what is exported).
    grad_clip : float
        Maximum gradient norm (0 disables clipping).
    checkpoint_every, preview_every : int
        Steps between checkpoints and between preview images (0 disables).
    seed : int
    precision : {'auto', 'fp32', 'bf16', 'fp16'}
        Autocast precision on CUDA; 'auto' is bf16 where supported. CPU always trains in fp32.
    augment : AugmentConfig or None
    holdout : float
        Fraction of the data held out for previews and threshold calibration.
    calibration_percentile : float
        Healthy percentile stored as the model's threshold.
    calibrate : bool
        Calibrate the threshold at the end of the run.
    """

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    preview_every: int = 100
    seed: int = 0
    precision: str = "auto"
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    holdout: float = 0.1
    calibration_percentile: float = 99.5
    calibrate: bool = True

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch size must be at least 1")
        try:
            rate = float(self.learning_rate)
        except (TypeError, ValueError):
            rate = math.nan
        if not 0 < rate < math.inf:
            raise ValueError(
                f"the learning rate (--lr) must be a positive finite number, got "
                f"{self.learning_rate!r}: use e.g. 2e-4"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainUpdate:
    """What the loop reports after each step.

    Attributes
    ----------
    step, total : int
    losses : dict of str to float
        This step's losses; ``"loss"`` is the main one.
    seconds : float
        Wall time of this run so far (excluding earlier, resumed runs).
    steps_per_second : float
    stage : str
        Trainer stage (``"train"``; MAD-AD has ``"vae"`` then ``"diffusion"``).
    preview : ndarray of float32, shape (rows, K, H, W), or None
        Inputs and reconstructions of held-out slices in [0, 1], at preview steps.
    checkpoint : str or None
        Folder written at this step, if any.
    """

    step: int
    total: int
    losses: dict[str, float]
    seconds: float
    steps_per_second: float
    stage: str = "train"
    preview: np.ndarray | None = None
    checkpoint: str | None = None

    @property
    def loss(self) -> float:
        return self.losses["loss"]

    @property
    def eta_seconds(self) -> float:
        if self.steps_per_second <= 0:
            return float("nan")
        return (self.total - self.step) / self.steps_per_second


@dataclass
class TrainResult:
    """The outcome of a run."""

    model_dir: Path | None
    step: int
    total: int
    stopped: bool
    seconds: float
    losses: list[float]
    threshold: float | None


class TrainingDiverged(ValueError):
    """A loss or the weights became NaN or infinite; the last good checkpoint is kept."""


class Trainer(ABC):
    """Base class of the model-family trainers.

    Parameters
    ----------
    config : ModelConfig
        The model being trained (architecture, schedule, method, name).
    data : HealthySlices
        Training data; ``settings.holdout`` of it is held out.
    settings : TrainSettings
    out : path or None
        Model folder written (checkpoints, final model, training state); None writes nothing.
    device : str
        'auto', 'cpu', 'cuda', 'cuda:1', 'mps'.
    init : dict of str to nn.Module, optional
        Networks to start from (fine-tuning), by name; their architecture must match
        ``config``.
    **options
        Family-specific recipe options (see each subclass's ``OPTIONS``).
    """

    family: ClassVar[str]
    method: ClassVar[str]
    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: Methods of other families whose models a run of this family may start from (``--init``).
    INIT_FROM: ClassVar[tuple[str, ...]] = ()
    #: Networks whose EMA copy is exported instead of the raw weights.
    EMA_NETWORKS: ClassVar[tuple[str, ...]] = ("model",)
    PREVIEW_SLICES = 4

    def __init__(
        self,
        config: ModelConfig,
        data: HealthySlices,
        settings: TrainSettings | None = None,
        *,
        out,
        device="auto",
        init: dict[str, nn.Module] | None = None,
        **options,
    ):
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"unknown {self.family} options: {sorted(unknown)}")
        self.options = {**self.OPTIONS, **options}
        self.settings = settings or TrainSettings()
        self.config = config
        if data.grid != config.grid:
            raise ValueError(f"data are on a {data.grid} grid, the model expects {config.grid}")
        self.data_report = data.report
        if len(data) >= 8 and self.settings.holdout > 0:
            train, held = data.split(self.settings.holdout, seed=self.settings.seed)
        else:
            train, held = data, data
        if len(train) < 2:
            raise ValueError("training needs at least two slices")
        self.rank, self.world_size = distributed.rank_and_size()
        if self.settings.batch_size > len(train):
            # Every process draws its batches from all training slices, so the cap is per
            # process; a larger batch only repeats slices (and costs memory).
            if self.rank == 0:
                per = " (per process)" if self.world_size > 1 else ""
                warnings.warn(
                    f"batch size {self.settings.batch_size}{per} is larger than the "
                    f"{len(train)} training slices: using {len(train)}",
                    stacklevel=2,
                )
            self.settings = dataclasses.replace(self.settings, batch_size=len(train))
        self.images = torch.from_numpy(train.images)[:, None]
        self.masks = torch.from_numpy(train.masks)[:, None]
        self.held_images, self.held_masks = held.images, held.masks
        self.out = Path(out) if out is not None else None
        self.device = torch.device(resolve_device(device))
        self.autocast_dtype = _autocast_dtype(self.settings.precision, self.device)
        torch.manual_seed(self.settings.seed)  # same initial weights on every rank
        self.networks: dict[str, nn.Module] = {
            name: net.to(self.device).train() for name, net in self.build_networks().items()
        }
        for name, module in (init or {}).items():
            if name in self.networks:
                self.networks[name].load_state_dict(module.state_dict())
        self.ema = {
            name: copy.deepcopy(self.networks[name]).eval().requires_grad_(False)
            for name in self.EMA_NETWORKS
            if name in self.networks
        }
        self.optimisers = {
            name: torch.optim.AdamW(
                net.parameters(), lr=self.settings.learning_rate, weight_decay=0.0
            )
            for name, net in self.networks.items()
        }
        self.wrapped = {
            name: distributed.wrap(net, self.device) for name, net in self.networks.items()
        }
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.autocast_dtype is torch.float16 and self.device.type == "cuda"
        )
        self.generator = torch.Generator().manual_seed(self.settings.seed + 7919 * self.rank)
        self.step = 0
        self.losses: list[float] = []
        self.seconds_before = 0.0
        self.order: torch.Tensor | None = None
        self.position = 0
        self.saved_step: int | None = None  # step of the checkpoint in ``out``, if any

    # -- what subclasses define -------------------------------------------------------------
    @abstractmethod
    def build_networks(self) -> dict[str, nn.Module]:
        """Fresh networks by name; ``"model"`` is the one saved as ``model.safetensors``."""

    @abstractmethod
    def training_step(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch in [0, 1] (B, 1, H, W); returns named losses.

        Use :meth:`update` for each optimiser step.
        """

    @abstractmethod
    def preview(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Reconstructions of a few held-out slices: (rows, K, H, W) in [0, 1]."""

    def stage(self, step: int) -> tuple[str, int, int]:
        """Name, first step and length of the stage that ``step`` belongs to."""
        return "train", 0, self.settings.steps

    def components(self) -> dict[str, nn.Module]:
        """Networks other than ``"model"`` exported beside it (see ``config.components``)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON-able trainer state beyond the networks (e.g. a latent scale)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""
        return None

    def on_stage_start(self, stage: str) -> None:
        """Called before the first step of each stage (also after a resume)."""
        return None

    # -- helpers for subclasses -------------------------------------------------------------
    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and step network ``name``'s optimiser (clipped, scaled)."""
        optimiser = self.optimisers[name]
        optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip > 0:
            self.scaler.unscale_(optimiser)
            nn.utils.clip_grad_norm_(self.networks[name].parameters(), self.settings.grad_clip)
        self.scaler.step(optimiser)

    def randint(self, low: int, high: int, size: int) -> torch.Tensor:
        return torch.randint(low, high, (size,), generator=self.generator).to(self.device)

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def rand(self, shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(self.device)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- the loop -----------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch in a per-epoch random order, augmented, on the device."""
        size = self.settings.batch_size
        parts = []
        while sum(len(p) for p in parts) < size:
            if self.order is None or self.position >= len(self.order):
                self.order = torch.randperm(len(self.images), generator=self.generator)
                self.position = 0
            take = self.order[self.position : self.position + size - sum(len(p) for p in parts)]
            self.position += len(take)
            parts.append(take)
        index = torch.cat(parts)
        images, masks = self.images[index], self.masks[index]
        if self.settings.augment is not None:
            images, masks = augment_batch(
                images, config=self.settings.augment, generator=self.generator, masks=masks
            )
        return images.to(self.device), masks.to(self.device)

    def iter_run(
        self, should_stop: Callable[[], bool] | None = None
    ) -> Generator[TrainUpdate, None, TrainResult]:
        """Train up to ``settings.steps``, yielding a :class:`TrainUpdate` after every step.

        Stopping (``should_stop`` returning True, or closing the generator) writes a
        checkpoint first, so the run can be resumed. The return value (``StopIteration.value``)
        is a :class:`TrainResult`.
        """
        started = clock = time.perf_counter()  # clock: time not yet in seconds_before
        first = self.step
        stopped = False
        current_stage = None
        try:
            while self.step < self.settings.steps:
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                stage, start, length = self.stage(self.step)
                if stage != current_stage:
                    self.on_stage_start(stage)
                    current_stage = stage
                self._set_learning_rate(self.step - start, length)
                images, masks = self.next_batch()
                with self.autocast():
                    losses = self.training_step(images, masks)
                self.scaler.update()
                self.step += 1
                self._check_losses(losses)
                self._update_ema()
                self.losses.append(losses["loss"])
                checkpoint = preview = None
                if self._due(self.settings.checkpoint_every) and self.step < self.settings.steps:
                    self._check_weights()
                    now = time.perf_counter()
                    self.seconds_before, clock = self.seconds_before + now - clock, now
                    checkpoint = self.save()
                if self._due(self.settings.preview_every) or self.step == self.settings.steps:
                    preview = self.preview(*self._preview_slices())
                seconds = time.perf_counter() - started
                yield TrainUpdate(
                    step=self.step,
                    total=self.settings.steps,
                    losses=losses,
                    seconds=seconds,
                    steps_per_second=(self.step - first) / max(seconds, 1e-9),
                    stage=stage,
                    preview=preview,
                    checkpoint=str(checkpoint) if checkpoint else None,
                )
        except GeneratorExit:
            self.seconds_before += time.perf_counter() - clock
            # An abandoned run at interpreter exit saves nothing; NaN weights never replace
            # the last good checkpoint.
            if not sys.is_finalizing() and self._weights_are_finite():
                self.save()
            raise
        self.seconds_before += time.perf_counter() - clock
        self._check_weights()
        threshold = None
        if not stopped and self.settings.calibrate:
            threshold = self.calibrate()
        path = self.save()
        return TrainResult(
            model_dir=path,
            step=self.step,
            total=self.settings.steps,
            stopped=stopped,
            seconds=self.seconds_before,
            losses=list(self.losses),
            threshold=threshold,
        )

    def run(self, progress: Callable[[TrainUpdate], None] | None = None, should_stop=None):
        """:meth:`iter_run` to the end, calling ``progress`` with each update."""
        from ..progress import run_to_completion

        return run_to_completion(self.iter_run(should_stop), progress)

    # -- checkpoints ------------------------------------------------------------------------
    def exported_config(self) -> ModelConfig:
        """The model config with its model card filled in."""
        config = copy.deepcopy(self.config)
        recent = self.losses[-50:]
        config.training = {
            **config.training,
            "trainer": self.family,
            "steps": self.step,
            "seconds": round(self.seconds_before, 1),
            "final_loss": round(float(np.mean(recent)), 6) if recent else None,
            "settings": self.settings.to_dict(),
            "options": dict(self.options),
            "data": self.data_report.to_dict(),
            "device": str(self.device),
            "world_size": self.world_size,
            "torch": torch.__version__,
            "napari_uad": __version__,
            "platform": platform.platform(terse=True),
        }
        return config

    def save(self) -> Path:
        """Write the exported model and the resumable state into ``out`` (rank 0 only)."""
        if self.out is not None:
            self.saved_step = self.step  # every rank knows what rank 0 has on disk
        if self.rank != 0 or self.out is None:
            return self.out
        self.out.mkdir(parents=True, exist_ok=True)
        model = self.ema.get("model", self.networks["model"])
        exported = {name: self.ema.get(name, module) for name, module in self.components().items()}
        save_checkpoint(self.out, model, self.exported_config(), components=exported)
        tensors: dict[str, torch.Tensor] = {}
        optimisers = {}
        for name, module in self.networks.items():
            module_tensors(f"net.{name}", module, tensors)
            optimisers[name] = flatten_optimiser(name, self.optimisers[name], tensors)
        for name, module in self.ema.items():
            module_tensors(f"ema.{name}", module, tensors)
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["data.order"] = self.order if self.order is not None else torch.zeros(0)
        tensors["history.loss"] = torch.tensor(self.losses, dtype=torch.float64)
        metadata = {
            "family": self.family,
            "config": self.config.to_dict(),
            "settings": self.settings.to_dict(),
            "options": self.options,
            "step": self.step,
            "seconds": self.seconds_before,
            "position": self.position,
            "has_order": self.order is not None,
            "optimisers": optimisers,
            "extra": self.extra_state(),
            "data": self.data_report.to_dict(),
        }
        save_state(self.out / STATE_NAME, tensors, metadata)
        lines = ["step,loss"] + [f"{i + 1},{loss:.6g}" for i, loss in enumerate(self.losses)]
        atomic_write_text(self.out / LOSS_LOG_NAME, "\n".join(lines) + "\n")
        return self.out

    def load_state_tensors(self, tensors: dict, metadata: dict) -> None:
        """Restore everything :meth:`save` wrote (used by :func:`resume_trainer`)."""
        for name, module in self.networks.items():
            load_module_tensors(f"net.{name}", module, tensors)
            restore_optimiser(name, self.optimisers[name], tensors, metadata["optimisers"][name])
        for name, module in self.ema.items():
            load_module_tensors(f"ema.{name}", module, tensors)
        if self.world_size == 1:
            self.generator.set_state(tensors["rng.generator"])
            torch.set_rng_state(tensors["rng.torch"])
        else:
            # Other ranks' generators were not saved: re-seed per rank and step instead.
            self.generator.manual_seed(self.settings.seed + 7919 * self.rank + metadata["step"])
        self.order = tensors["data.order"].long() if metadata["has_order"] else None
        if self.order is not None and len(self.order) != len(self.images):
            self.order = None  # the data changed: start a fresh epoch
        self.position = metadata["position"]
        self.step = metadata["step"]
        self.saved_step = self.step
        self.seconds_before = metadata["seconds"]
        self.losses = tensors["history.loss"].tolist()
        self.load_extra_state(metadata.get("extra", {}))

    # -- internals ----------------------------------------------------------------------------
    def calibrate(self) -> float | None:
        """Store the healthy threshold from the held-out slices, when the method exists."""
        from ..methods import get_method_class

        try:
            method_class = get_method_class(self.config.method)
        except ValueError:
            return None
        from .calibrate import calibrate_method

        model = self.ema.get("model", self.networks["model"])
        config = self.exported_config()
        method = method_class(model, config, device=self.device, **self._method_components())
        self.config.calibration = calibrate_method(
            method,
            self.held_images,
            self.held_masks,
            percentile=self.settings.calibration_percentile,
            seed=self.settings.seed,
        )
        return float(self.config.calibration["threshold"])

    def _method_components(self) -> dict[str, Any]:
        return {}

    def _preview_slices(self) -> tuple[np.ndarray, np.ndarray]:
        count = min(self.PREVIEW_SLICES, len(self.held_images))
        picks = np.linspace(0, len(self.held_images) - 1, count).round().astype(int)
        return self.held_images[picks], self.held_masks[picks]

    def _check_losses(self, losses: dict[str, float]) -> None:
        """Stop at the first NaN or infinite loss (of any process, so all stop together)."""
        values = torch.tensor([float(v) for v in losses.values()], dtype=torch.float64)
        if self.world_size > 1:
            import torch.distributed as dist

            # A sum is non-finite when any process's loss is (NaN and inf propagate).
            values = values.to(self.device)
            dist.all_reduce(values)
            values = (values / self.world_size).cpu()
        if bool(torch.isfinite(values).all()):
            return
        name, value = next(
            (name, float(v))
            for name, v in zip(losses, values, strict=True)
            if not math.isfinite(float(v))
        )
        self._diverged(f"{'' if name == 'loss' else name + ' '}loss {value:g}")

    def _weights_are_finite(self) -> bool:
        modules = [*self.networks.values(), *self.ema.values()]
        flags = [torch.isfinite(p).all() for m in modules for p in m.parameters()]
        return not flags or bool(torch.stack(flags).all())

    def _check_weights(self) -> None:
        """Refuse to save or calibrate NaN or infinite weights (the loss can still be finite on
        the step that made them so)."""
        if not self._weights_are_finite():
            self._diverged("weights not finite")

    def _diverged(self, detail: str) -> None:
        if self.out is None:
            kept = "nothing was saved"
        elif self.saved_step is None:
            kept = f"no checkpoint was written to {self.out}"
        else:
            kept = f"the checkpoint of step {self.saved_step} in {self.out} is kept"
        fix = f"lower --lr (now {self.settings.learning_rate:g})"
        if self.autocast_dtype is torch.float16:
            fix += " or train in bf16 or fp32 (--precision)"
        raise TrainingDiverged(
            f"training diverged at step {self.step} ({detail}): {fix} and start again "
            f"with --overwrite; {kept}"
        )

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _set_learning_rate(self, local_step: int, length: int) -> None:
        """Warm-up, then a cosine from the peak to a tenth of it, over the current stage."""
        warm = self.settings.warmup_steps
        factor = min(1.0, (local_step + 1) / warm) if warm > 0 else 1.0
        fraction = min(max(local_step / max(length, 1), 0.0), 1.0)
        factor *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction))
        for optimiser in self.optimisers.values():
            for group in optimiser.param_groups:
                group["lr"] = self.settings.learning_rate * factor

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.settings.ema_decay, (1 + self.step) / (10 + self.step))
        for name, ema in self.ema.items():
            for ema_param, param in zip(
                ema.parameters(), self.networks[name].parameters(), strict=True
            ):
                ema_param.lerp_(param.detach(), 1 - decay)
            for ema_buffer, buffer in zip(
                ema.buffers(), self.networks[name].buffers(), strict=True
            ):
                ema_buffer.copy_(buffer)


def _autocast_dtype(precision: str, device: torch.device):
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"{precision} training needs a CUDA GPU; on {device.type} use fp32")
        return None
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def resume_state(out) -> tuple[dict, dict]:
    """The saved tensors and metadata of the run in ``out``."""
    return load_state(Path(out) / STATE_NAME)

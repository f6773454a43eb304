"""Training a DDPM (Gaussian or simplex noise) on healthy slices.

The loop is small on purpose: sample a batch, augment, noise at a random timestep, regress the
target of the model's ``prediction_type``, clip gradients, update EMA weights. EMA weights are what
is saved and sampled. Progress and stop are plain callables so the CLI and the Train widget call
the same function.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion.noise import make_noise
from ..diffusion.scheduler import DDPMScheduler
from ..models.config import ModelConfig
from ..models.unet import UNet
from .augment import AugmentConfig, augment_batch


@dataclass
class TrainUpdate:
    """Sent to the progress callback after every step."""

    step: int
    total: int
    loss: float
    seconds: float


@dataclass
class TrainHistory:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False


def train_ddpm(
    slices: np.ndarray,
    config: ModelConfig,
    *,
    steps: int = 1000,
    batch_size: int = 16,
    learning_rate: float = 2e-4,
    ema_decay: float = 0.995,
    max_timestep: int | None = None,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    device="cpu",
    model: UNet | None = None,
    progress: Callable[[TrainUpdate], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[UNet, TrainHistory]:
    """Train a denoising UNet on healthy slices.

    Parameters
    ----------
    slices : (N, H, W) float ndarray
        Healthy slices on the model grid, normalised to [0, 1], background 0.
    config : ModelConfig
        Architecture, grid, schedule, prediction type and noise type.
    steps, batch_size, learning_rate : training length and optimiser settings.
    ema_decay : float
        Decay of the exponential moving average of the weights (the returned model).
    max_timestep : int, optional
        Train only on timesteps below this (restoration from t <= max_timestep needs no more);
        None trains on all T.
    augment : AugmentConfig, optional
        None disables augmentation.
    model : UNet, optional
        Start from these weights (fine-tuning) instead of a fresh network.

    Returns
    -------
    ema_model : UNet in eval mode
    history : TrainHistory
    """
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 3 or slices.shape[1:] != (config.grid, config.grid):
        raise ValueError(f"slices must be (N, {config.grid}, {config.grid})")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    model = (model or UNet(config.unet)).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, min(100, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup))
    diffusion = config.diffusion
    scheduler = DDPMScheduler(
        diffusion.num_train_timesteps,
        beta_schedule=diffusion.beta_schedule,
        prediction_type=diffusion.prediction_type,
    )
    top = min(max_timestep or diffusion.num_train_timesteps, diffusion.num_train_timesteps)
    data = torch.from_numpy(slices)[:, None]
    history = TrainHistory()
    started = time.perf_counter()
    for step in range(steps):
        if should_stop is not None and should_stop():
            history.stopped = True
            break
        index = torch.randint(0, len(data), (batch_size,), generator=generator)
        batch = data[index]
        if augment is not None:
            batch = augment_batch(batch, config=augment, generator=generator)
        clean = (batch * 2 - 1).to(device)
        t = torch.randint(0, top, (batch_size,), generator=generator).to(device)
        noise = make_noise(
            diffusion.noise, clean.shape, generator=generator, simplex_options=diffusion.simplex
        ).to(device)
        noisy = scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(model(noisy, t), scheduler.training_target(clean, noise, t))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
                ema_param.lerp_(param, 1 - decay)
        history.losses.append(loss.item())
        history.seconds = time.perf_counter() - started
        if progress is not None:
            progress(TrainUpdate(step + 1, steps, history.losses[-1], history.seconds))
    return ema.cpu(), history

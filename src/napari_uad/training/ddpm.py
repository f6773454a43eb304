"""DDPM trainer (Gaussian or simplex noise), as in Pinaya et al. and AnoDDPM.

Each step noises a batch at random timesteps and regresses the target of the model's
``prediction_type`` (noise, clean image or velocity). Restoration only ever starts from
t <= the method's noise level, so ``max_timestep`` can restrict training to those timesteps
(the network's capacity then goes where it is used).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion.noise import make_noise
from ..diffusion.scheduler import DDPMScheduler
from ..models.config import DiffusionConfig, ModelConfig
from ..models.unet import UNet, UNetConfig
from .loop import Trainer


def compact_unet(
    base_channels: int = 16, in_channels: int = 1, out_channels: int = 1
) -> UNetConfig:
    """The small UNet the shipped models use (about 2.8 M parameters at 16 base channels)."""
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        base_channels=base_channels,
        channel_mults=(1, 2, 4, 8),
        num_res_blocks=1,
        attention_levels=(False, False, False, True),
    )


class DDPMTrainer(Trainer):
    """Denoising diffusion training; exports an ``anoddpm`` model."""

    family = "ddpm"
    method = "anoddpm"
    OPTIONS = {"max_timestep": None}

    @classmethod
    def default_config(
        cls, name: str, *, grid: int = 128, noise: str = "gaussian", base_channels: int = 16
    ) -> ModelConfig:
        """A model config for this family (x0 prediction: it converges fastest here)."""
        return ModelConfig(
            name=name,
            method=cls.method,
            grid=grid,
            unet=compact_unet(base_channels),
            diffusion=DiffusionConfig(prediction_type="sample", noise=noise),
            defaults={"noise_level": 250, "steps": 10, "eta": 0.0, "smoothing": 3},
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        diffusion = self.config.diffusion
        self.scheduler = DDPMScheduler(
            diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            prediction_type=diffusion.prediction_type,
        )
        limit = self.options["max_timestep"] or diffusion.num_train_timesteps
        self.top = int(min(limit, diffusion.num_train_timesteps))

    def build_networks(self):
        return {"model": UNet(self.config.unet)}

    def noise_like(self, clean: torch.Tensor) -> torch.Tensor:
        diffusion = self.config.diffusion
        noise = make_noise(
            diffusion.noise,
            clean.shape,
            generator=self.generator,
            simplex_options=diffusion.simplex,
        )
        return noise.to(clean.device)

    def denoising_loss(self, clean: torch.Tensor, low: int = 0):
        """Noise at random timesteps in [low, top); return (loss, t, x_t, network output)."""
        t = self.randint(low, self.top, len(clean))
        noise = self.noise_like(clean)
        noisy = self.scheduler.add_noise(clean, noise, t)
        output = self.wrapped["model"](noisy, t)
        loss = F.mse_loss(output.float(), self.scheduler.training_target(clean, noise, t))
        return loss, t, noisy, output

    def training_step(self, images, masks):
        loss, *_ = self.denoising_loss(images * 2 - 1)
        self.update("model", loss)
        return {"loss": loss.item()}

    def preview(self, images, masks):
        from ..methods import get_method_class

        method = get_method_class(self.config.method)(
            self.ema["model"], self.config, device=self.device
        )
        result = method.restore(images, masks, seed=self.settings.seed)
        return np.stack([images, result.healthy]).astype(np.float32)


def train_ddpm(
    slices: np.ndarray,
    config: ModelConfig,
    *,
    steps: int = 1000,
    batch_size: int = 16,
    learning_rate: float = 2e-4,
    ema_decay: float = 0.995,
    max_timestep: int | None = None,
    augment=None,
    seed: int = 0,
    device="cpu",
    model: UNet | None = None,
    progress=None,
    should_stop=None,
):
    """Train a DDPM on ready model-grid slices in memory, without writing files.

    A convenience for scripts and tests; :func:`napari_uad.training.api.create_trainer` is the
    full interface (folders of scans, checkpoints, resume).

    Parameters
    ----------
    slices : (N, H, W) float ndarray
        Healthy slices on the model grid in [0, 1], background 0.
    config : ModelConfig
    model : UNet, optional
        Initial weights (fine-tuning).

    Returns
    -------
    ema_model : UNet in eval mode, on the CPU
    history : TrainResult (``losses``, ``seconds``, ``stopped``)
    """
    from .dataset import slices_from_arrays
    from .loop import TrainSettings

    settings = TrainSettings(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, min(100, steps // 10)),
        ema_decay=ema_decay,
        checkpoint_every=0,
        preview_every=0,
        seed=seed,
        augment=augment,
        holdout=0.0,
        calibrate=False,
    )
    trainer = DDPMTrainer(
        config,
        slices_from_arrays(slices),
        settings,
        out=None,
        device=device,
        init={"model": model} if model is not None else None,
        max_timestep=max_timestep,
    )
    history = trainer.run(progress=progress, should_stop=should_stop)
    return trainer.ema["model"].cpu(), history

"""DISYRE trainer: restore slices corrupted by synthetic anomalies of graded severity.

Naval Marimont et al., "DISYRE: Diffusion-Inspired SYnthetic REstoration": the diffusion
forward process is replaced by the synthetic-anomaly corruption of
:func:`~napari_uad.training.corruption.synthetic_anomalies`, whose interpolation factor plays
the part of the noise level. The network sees the corrupted slice and the severity (as a
timestep t, severity = (t + 1) / T) and predicts the clean slice. Training may use random
square patches (the paper's patch pipeline); the network is convolutional, so it runs on
patches or whole slices.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..models.config import DiffusionConfig, ModelConfig
from ..models.unet import UNet
from .corruption import small_anomalies, synthetic_anomalies
from .ddpm import compact_unet
from .loop import Trainer


def severity_of(t: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """Interpolation factor of timestep ``t`` (0-based): ``(t + 1) / T``."""
    return (t.float() + 1) / num_timesteps


class DISYRETrainer(Trainer):
    """Synthetic-anomaly restoration training; exports a ``disyre`` model."""

    family = "disyre"
    method = "disyre"
    #: ``small_probability``: share of slices that also get small hypo- or hyperintense blobs
    #: (:func:`~napari_uad.training.corruption.small_anomalies`); 0 is the paper's corruption.
    OPTIONS = {"patch_size": None, "intensity_probability": 0.3, "small_probability": 0.0}

    @classmethod
    def default_config(
        cls, name: str, *, grid: int = 128, noise: str = "synthetic", base_channels: int = 16
    ) -> ModelConfig:
        return ModelConfig(
            name=name,
            method=cls.method,
            grid=grid,
            unet=compact_unet(base_channels),
            diffusion=DiffusionConfig(
                num_train_timesteps=1000, prediction_type="sample", noise="synthetic"
            ),
            defaults={
                "severities": [1.0, 0.8, 0.6, 0.4, 0.2],
                "mode": "single-step",
                "smoothing": 3,
            },
        )

    def build_networks(self):
        return {"model": UNet(self.config.unet)}

    def corrupt(self, images: torch.Tensor, masks: torch.Tensor, t: torch.Tensor):
        """Corrupt a batch at timesteps ``t``; returns (corrupted, soft anomaly mask)."""
        severity = severity_of(t, self.config.diffusion.num_train_timesteps)
        corrupted, mask = synthetic_anomalies(
            images,
            masks,
            severity,
            generator=self.generator,
            intensity_probability=self.options["intensity_probability"],
        )
        share = float(self.options["small_probability"])
        if share > 0:
            small, small_mask = small_anomalies(
                corrupted, masks, severity, generator=self.generator
            )
            chosen = (self.rand(len(images)) < share).view(-1, 1, 1, 1)
            corrupted = torch.where(chosen, small, corrupted)
            mask = torch.where(chosen, torch.maximum(mask, small_mask), mask)
        return corrupted, mask

    def training_step(self, images, masks):
        patch = self.options["patch_size"]
        if patch and patch < images.shape[-1]:
            images, masks = self._crop(images, masks, int(patch))
        t = self.randint(0, self.config.diffusion.num_train_timesteps, len(images))
        corrupted, _ = self.corrupt(images, masks, t)
        output = self.wrapped["model"](corrupted * 2 - 1, t)
        loss = F.mse_loss(output.float(), images * 2 - 1)
        self.update("model", loss)
        return {"loss": loss.item()}

    def _crop(self, images, masks, size):
        """Random square patches of ``size`` (a multiple of the UNet's downsampling)."""
        factor = self.config.unet.downsampling_factor
        size = max(factor, size - size % factor)
        side = images.shape[-1]
        corners = (self.rand((len(images), 2)) * (side - size + 1)).long().clamp_max(side - size)
        rows = corners[:, 0, None] + torch.arange(size, device=images.device)
        cols = corners[:, 1, None] + torch.arange(size, device=images.device)
        index = torch.arange(len(images), device=images.device)[:, None, None]
        take = (index, rows[:, :, None], cols[:, None, :])
        return images[:, 0][take][:, None], masks[:, 0][take][:, None]

    @torch.no_grad()
    def preview(self, images, masks):
        """Rows: clean slice, corrupted at severity 0.6, one-step restoration."""
        clean = torch.from_numpy(images)[:, None].to(self.device)
        brain = torch.from_numpy(masks)[:, None].to(self.device)
        steps = self.config.diffusion.num_train_timesteps
        t = torch.full((len(clean),), int(0.6 * steps) - 1, device=self.device)
        generator_state = self.generator.get_state()
        if len(clean) == 1:
            # Foreign patches come from another slice of the batch: lend the slice a twin.
            corrupted = self.corrupt(
                clean.repeat(2, 1, 1, 1), brain.repeat(2, 1, 1, 1), t.repeat(2)
            )[0][:1]
        else:
            corrupted, _ = self.corrupt(clean, brain, t)
        self.generator.set_state(generator_state)  # previews must not change the training run
        restored = ((self.ema["model"](corrupted * 2 - 1, t) + 1) / 2).clamp(0, 1) * brain
        rows = [clean, corrupted, restored]
        return np.stack([r[:, 0].cpu().numpy() for r in rows]).astype(np.float32)

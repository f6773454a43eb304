"""AnoDDPM / DDPM restoration (Wyatt et al., CVPRW 2022; Pinaya et al., DGM4MICCAI 2022).

Noise the scan to level t with Gaussian or simplex noise, denoise back to t = 0 with a strided
DDIM/DDPM sampler, and take the residual between the scan and its pseudo-healthy restoration as
the anomaly map. The papers run every step from t = 250 (250 network evaluations); a strided
schedule reaches a similar map with a handful (see docs/benchmarks.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..diffusion.noise import make_noise
from ..diffusion.scheduler import DDPMScheduler, step_pairs
from .base import Method
from .filters import median_filter2d

__all__ = ["AnoDDPM", "median_filter2d", "residual_map"]


class AnoDDPM(Method):
    """Partial noising + denoising with a DDPM; anomaly = |scan - restoration|.

    Parameters (``restore(**params)``)
    ----------------------------------
    noise : {'gaussian', 'simplex'} or None
        Noise used to corrupt and resample; None uses the noise the model was trained with.
    noise_level : int
        Timestep t to noise to (AnoDDPM: 250 of T = 1000).
    steps : int
        Network evaluations on the way back; ``noise_level + 1`` is the papers' full schedule.
    eta : float
        0 for deterministic DDIM steps, 1 for ancestral DDPM steps.
    smoothing : int
        Side of the median filter applied to the residual (0 or 1: none).
    """

    name = "anoddpm"
    description = "DDPM restoration from noise level t (Gaussian: Pinaya; simplex: AnoDDPM)"
    model_methods = ("anoddpm", "ddpm")
    default_model = "anoddpm-gaussian"
    defaults: dict[str, Any] = {
        "noise": None,
        "noise_level": 250,
        "steps": 10,
        "eta": 0.0,
        "smoothing": 3,
    }

    def __init__(self, model, config, *, device=None):
        super().__init__(model, config, device=device)
        diffusion = config.diffusion
        self.scheduler = DDPMScheduler(
            diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            prediction_type=diffusion.prediction_type,
        )

    def validate(self, params: dict[str, Any]) -> None:
        if params["noise"] is None:
            params["noise"] = self.config.diffusion.noise
        if params["noise"] not in ("gaussian", "simplex"):
            raise ValueError(f"noise must be 'gaussian' or 'simplex', got {params['noise']!r}")
        if params["noise"] != self.config.diffusion.noise:
            warnings.warn(
                f"model {self.config.name!r} was trained with {self.config.diffusion.noise} "
                f"noise; restoring with {params['noise']} noise",
                stacklevel=3,
            )
        last = self.scheduler.num_train_timesteps - 1
        if not 1 <= int(params["noise_level"]) <= last:
            raise ValueError(f"noise_level must lie in [1, {last}], got {params['noise_level']}")
        if int(params["steps"]) < 1:
            raise ValueError(f"steps must be >= 1, got {params['steps']}")
        if not 0.0 <= float(params["eta"]) <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {params['eta']}")
        if int(params["smoothing"]) < 0:
            raise ValueError("smoothing must be >= 0")

    def timesteps(self, params: dict[str, Any]) -> list[int]:
        return self.scheduler.timesteps(int(params["steps"]), start=int(params["noise_level"]))

    def evaluations_per_slice(self, params: dict[str, Any]) -> int:
        return len(self.timesteps(params))

    def _noise(self, kind, like: torch.Tensor, generators) -> torch.Tensor:
        options = self.config.diffusion.simplex
        noise = [
            make_noise(kind, (1, *like.shape[1:]), generator=g, simplex_options=options)
            for g in generators
        ]
        return torch.cat(noise).to(like.device, like.dtype)

    def _restore_batch(self, images, masks, params, generators):
        healthy = yield from self._reconstruct(images, masks, params, generators)
        anomaly = residual_map(images, healthy, masks, smoothing=int(params["smoothing"]))
        return healthy, anomaly

    def _reconstruct(self, images, masks, params, generators):
        """Noise the [0, 1] slices to ``noise_level`` and denoise them with ``params``'s
        schedule: the pseudo-healthy slices in [0, 1], 0 outside the brain."""
        sample = yield from self._denoise(
            images * 2 - 1,
            self.timesteps(params),
            params["noise"],
            float(params["eta"]),
            generators,
        )
        return ((sample + 1) / 2).clamp(0, 1) * masks

    def _denoise(self, clean, timesteps, kind, eta, generators):
        """Noise ``clean`` ([-1, 1]) to ``timesteps[0]`` and denoise along ``timesteps``;
        yields the clean-image estimate of each step, returns the last sample."""
        sample = self.scheduler.add_noise(clean, self._noise(kind, clean, generators), timesteps[0])
        for t, prev_t in step_pairs(timesteps):
            sample, estimate = self._step(sample, t, prev_t, kind, eta, generators)
            yield estimate
        return sample

    def _step(self, sample, t, prev_t, kind, eta, generators):
        """One reverse step from ``t`` to ``prev_t``: the next sample and the clean-image
        estimate in [0, 1]."""
        t_batch = torch.full((len(sample),), t, device=sample.device, dtype=torch.long)
        output = self.model(sample, t_batch)
        noise = self._noise(kind, sample, generators) if eta > 0 and prev_t >= 0 else None
        result = self.scheduler.step(output, t, sample, prev_t=prev_t, eta=eta, noise=noise)
        return result.prev_sample, ((result.pred_original + 1) / 2).clamp(0, 1)


def residual_map(images, healthy, masks, *, smoothing: int = 0) -> torch.Tensor:
    """|image - healthy| inside the brain, optionally median filtered per slice.

    Parameters
    ----------
    images, healthy : (B, 1, H, W) tensors in [0, 1]
    masks : (B, 1, H, W) bool tensor
    smoothing : int
        Median filter side in pixels (0 or 1: none).
    """
    residual = (images - healthy).abs() * masks
    if smoothing > 1:
        residual = median_filter2d(residual, smoothing) * masks
    return residual

"""THOR: diffusion with implicit guidance (Bercea et al., MICCAI 2024).

A DDPM restores the scan from noise level t as in AnoDDPM, but at a few intermediate steps the
sample is *harmonised* with the input: where the current anomaly estimate is low the clean-image
estimate is replaced by the input itself, and the mix is noised again to the current level. So
healthy tissue keeps its own detail and only anomalous regions are repainted. The anomaly map is
the harmonic mean of the intermediate maps, which keeps only what stays anomalous throughout.

Follows the authors' code (ci-ber/THOR_DDPM, ``get_thor_anomaly``): intermediate map =
|x0_hat - x| x clip(Gaussian(perceptual distance, sigma 2), 0, 1), normalised to its maximum;
soft harmonisation mask = (grey dilation(grey closing(map)) + map) / 2 with a 13 x 13 square;
x0' = mask * x0_hat + (1 - mask) * x, noised with the *initial* noise to the current level.
Their Gaussian configuration restores from t = 350 with harmonisation at t = 300, 150, 50 and
maps every 50 steps; a strided schedule of 8 steps visits exactly those timesteps.
"""

from __future__ import annotations

from typing import Any

import torch

from ..diffusion.scheduler import step_pairs
from .anoddpm import AnoDDPM
from .filters import gaussian_blur2d, grey_closing2d, grey_dilation2d, median_filter2d
from .perceptual import perceptual_distance


class THOR(AnoDDPM):
    """DDPM restoration with implicit guidance; anomaly = harmonic mean of intermediate maps.

    Parameters (``restore(**params)``)
    ----------------------------------
    noise : {'gaussian', 'simplex'} or None
        None uses the model's training noise.
    noise_level : int
        Starting timestep (THOR: 350 with Gaussian noise, 250 with simplex noise).
    steps : int
        Reverse steps (NFE), evenly strided from ``noise_level`` to 0; ``noise_level + 1`` is
        the paper's full schedule.
    eta : float
        0: deterministic DDIM steps; 1: ancestral DDPM steps (the paper's).
    harmonise_at : sequence of int
        Timesteps after which the sample is harmonised with the input (THOR: 300, 150, 50).
        With strided steps, harmonisation happens at the first step reaching each level.
    kernel : int
        Side of the closing and dilation square of the harmonisation mask (13).
    sigma : float
        Gaussian smoothing of the perceptual term, in pixels (2).
    per_image_normalisation : bool
        Scale each slice's final map to its maximum, as the paper's maps are. Off by default:
        it makes every slice's strongest spot look anomalous, so slices of a volume cannot be
        compared (the harmonisation masks are always normalised per slice).
    smoothing : int
        Median filter side for the final map (0: none, the paper's).
    """

    name = "thor"
    description = "THOR: DDPM restoration harmonised with the input outside anomalies"
    model_methods = ("anoddpm", "ddpm", "addm")
    default_model = "anoddpm-gaussian"
    defaults: dict[str, Any] = {
        "noise": None,
        "noise_level": 350,
        "steps": 8,
        "eta": 0.0,
        "harmonise_at": (300, 150, 50),
        "kernel": 13,
        "sigma": 2.0,
        "per_image_normalisation": False,
        "smoothing": 0,
    }

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        levels = params["harmonise_at"]
        if isinstance(levels, (int, float)):
            levels = [levels]
        params["harmonise_at"] = tuple(sorted({int(v) for v in levels}, reverse=True))
        if any(level < 0 for level in params["harmonise_at"]):
            raise ValueError("harmonise_at timesteps must be >= 0")
        if int(params["kernel"]) < 1:
            raise ValueError(f"kernel must be >= 1, got {params['kernel']}")
        if float(params["sigma"]) < 0:
            raise ValueError(f"sigma must be >= 0, got {params['sigma']}")
        params["per_image_normalisation"] = bool(params["per_image_normalisation"])

    def _restore_batch(self, images, masks, params, generators):
        kind = params["noise"]
        eta = float(params["eta"])
        timesteps = self.timesteps(params)
        pending = [level for level in params["harmonise_at"] if level < timesteps[0]]
        clean = images * 2 - 1
        initial_noise = self._noise(kind, clean, generators)
        sample = self.scheduler.add_noise(clean, initial_noise, timesteps[0])
        maps = []
        for t, prev_t in step_pairs(timesteps):
            sample, estimate = self._step(sample, t, prev_t, kind, eta, generators)
            raw = intermediate_map(self.model, estimate, images, masks, sigma=params["sigma"])
            maps.append(raw)
            if prev_t >= 0 and any(level >= prev_t for level in pending):
                pending = [level for level in pending if level < prev_t]
                soft = harmonisation_mask(normalise_max(raw, masks), int(params["kernel"]))
                harmonised = harmonise(estimate, images, soft) * masks
                sample = self.scheduler.add_noise(harmonised * 2 - 1, initial_noise, prev_t)
            yield estimate
        healthy = ((sample + 1) / 2).clamp(0, 1) * masks
        if params["per_image_normalisation"]:
            maps = [normalise_max(m, masks) for m in maps]
        anomaly = harmonic_mean(maps) * masks
        if int(params["smoothing"]) > 1:
            anomaly = median_filter2d(anomaly, int(params["smoothing"])) * masks
        return healthy, anomaly


def intermediate_map(network, estimate, images, masks, *, sigma: float = 2.0) -> torch.Tensor:
    """THOR's map of one step: |x0_hat - x| x clip(Gaussian(perceptual(x0_hat, x)), 0, 1).

    Parameters
    ----------
    network : UNet
        Supplies the perceptual features (:mod:`napari_uad.methods.perceptual`).
    estimate, images : (B, 1, H, W) tensors in [0, 1]
    masks : (B, 1, H, W) bool tensor
    sigma : float
        Gaussian smoothing of the perceptual term in pixels.
    """
    perceptual = gaussian_blur2d(perceptual_distance(network, estimate, images), sigma)
    return (estimate - images).abs() * perceptual.clamp(0, 1) * masks


def normalise_max(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each image divided by its maximum inside the brain, in [0, 1]."""
    peak = (x * masks).flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return (x / peak).clamp(0, 1) * masks


def harmonisation_mask(anomaly01: torch.Tensor, kernel: int) -> torch.Tensor:
    """THOR's soft mask of the regions to repaint: (dilate(close(a)) + a) / 2, in [0, 1]."""
    grown = grey_dilation2d(grey_closing2d(anomaly01, kernel), kernel)
    return ((grown + anomaly01) / 2).clamp(0, 1)


def harmonise(estimate: torch.Tensor, images: torch.Tensor, soft_mask: torch.Tensor):
    """The clean-image estimate inside the soft mask, the input outside it."""
    return soft_mask * estimate + (1 - soft_mask) * images


def harmonic_mean(maps: list[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Pixel-wise harmonic mean of non-negative maps (near 0 wherever any map is near 0)."""
    inverse = sum(1.0 / (m.clamp_min(0) + eps) for m in maps)
    return (len(maps) / inverse - eps).clamp_min(0)

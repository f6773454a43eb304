"""Seeded augmentation of healthy slices for training: affine and elastic deformation, flips,
gamma, bias field and contrast. Works on batches (B, 1, H, W) in [0, 1] with zero background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (0 disables one)."""

    rotation_degrees: float = 10.0
    scale: float = 0.1
    translation: float = 0.05
    elastic_magnitude: float = 0.03
    elastic_grid: int = 5
    flip_probability: float = 0.5
    gamma: float = 0.25
    bias_field: float = 0.15
    contrast: float = 0.1


def augment_batch(
    images: torch.Tensor,
    *,
    config: AugmentConfig | None = None,
    generator=None,
    masks: torch.Tensor | None = None,
):
    """Randomly deform and re-contrast a batch of slices.

    Parameters
    ----------
    images : (B, 1, H, W) tensor in [0, 1], background 0
    config : AugmentConfig
    generator : torch.Generator, optional
    masks : (B, 1, H, W) bool tensor, optional
        Brain masks, deformed with the images (nearest neighbour).

    Returns
    -------
    (B, 1, H, W) tensor in [0, 1], and the deformed masks when ``masks`` is given
    """
    config = config or AugmentConfig()
    batch, _, height, width = images.shape
    device = images.device

    def uniform(*shape, low=-1.0, high=1.0):
        values = torch.rand(
            shape, generator=generator, device=generator.device if generator else None
        )
        return (low + (high - low) * values).to(device)

    angle = uniform(batch) * math.radians(config.rotation_degrees)
    scale = 1 + uniform(batch) * config.scale
    flip = torch.where(uniform(batch, low=0, high=1) < config.flip_probability, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, :, 2] = uniform(batch, 2) * config.translation * 2
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if config.elastic_magnitude > 0:
        coarse = uniform(batch, 2, config.elastic_grid, config.elastic_grid)
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1) * config.elastic_magnitude * 2
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        masks = (
            F.grid_sample(
                masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
            )
            > 0.5
        )
        foreground = masks
    else:
        foreground = warped > 1e-3

    gamma = torch.exp(uniform(batch, 1, 1, 1) * math.log1p(config.gamma))
    out = warped.clamp(0, 1) ** gamma
    if config.bias_field > 0:
        coarse = uniform(batch, 1, 3, 3) * config.bias_field
        bias = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        out = out * torch.exp(bias)
    if config.contrast > 0:
        factor = 1 + uniform(batch, 1, 1, 1) * config.contrast
        mean = (out * foreground).sum(dim=(2, 3), keepdim=True) / foreground.sum(
            dim=(2, 3), keepdim=True
        ).clamp_min(1)
        out = (out - mean) * factor + mean
    out = (out * foreground).clamp(0, 1)
    return out if masks is None else (out, masks)

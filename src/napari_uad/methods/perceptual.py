"""A perceptual (LPIPS-like) distance from the project's own denoising network.

AutoDDPM and THOR weight their residuals with LPIPS (Zhang et al. 2018), a distance between deep
features of a network pretrained on natural images. napari-uad downloads nothing, so the
features come from the encoder of the model's own DDPM, trained on healthy brains: at every
resolution level the feature vectors of the two images are unit-normalised over channels, their
squared distance is upsampled to the image grid, and the levels are averaged (LPIPS with equal
weights per channel and level, as its "baseline" variant). Values lie in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def perceptual_distance(network, a: torch.Tensor, b: torch.Tensor, *, timestep: int = 0):
    """Spatial perceptual distance between two batches of images.

    Parameters
    ----------
    network : UNet
        A model with :meth:`~napari_uad.models.unet.UNet.encoder_features`.
    a, b : (B, 1, H, W) tensors in [0, 1]
    timestep : int
        Noise level the features are computed at (0: the clean-image encoder).

    Returns
    -------
    (B, 1, H, W) tensor in [0, 1]; 0 where the images agree.
    """
    batch = len(a)
    pair = torch.cat([a, b]) * 2 - 1
    t = torch.full((len(pair),), int(timestep), device=pair.device, dtype=torch.long)
    distance = torch.zeros_like(a)
    levels = network.encoder_features(pair, t)
    for features in levels:
        unit = F.normalize(features.float(), dim=1, eps=1e-6)
        squared = (unit[:batch] - unit[batch:]).pow(2).sum(dim=1, keepdim=True) / 4
        distance += F.interpolate(squared, size=a.shape[-2:], mode="bilinear", align_corners=False)
    return (distance / len(levels)).clamp(0, 1).to(a.dtype)

"""Small 2-D image filters on (B, C, H, W) tensors, batched on the model's device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def median_filter2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter of (B, C, H, W) over H, W with a ``size`` x ``size`` window (reflect pad)."""
    pad = size // 2
    padded = F.pad(x, (pad, size - 1 - pad, pad, size - 1 - pad), mode="reflect")
    patches = padded.unfold(2, size, 1).unfold(3, size, 1)
    return patches.reshape(*patches.shape[:4], -1).median(dim=-1).values


def gaussian_blur2d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian filter of (B, C, H, W) over H, W, each image on its own (reflect padding).

    The kernel reaches 4 sigma each side, as :func:`scipy.ndimage.gaussian_filter` does.
    """
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), rows, groups=channels)
    return F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), cols, groups=channels)


def grey_dilation2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Greyscale dilation (maximum filter) with a ``size`` x ``size`` square."""
    if size <= 1:
        return x
    pad = size // 2
    padded = F.pad(x, (pad, size - 1 - pad, pad, size - 1 - pad), mode="replicate")
    return F.max_pool2d(padded, size, stride=1)


def grey_erosion2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Greyscale erosion (minimum filter) with a ``size`` x ``size`` square."""
    return -grey_dilation2d(-x, size)


def grey_closing2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Greyscale closing: dilation then erosion, filling dark gaps narrower than ``size``."""
    return grey_erosion2d(grey_dilation2d(x, size), size)


def per_image_quantile(x: torch.Tensor, q: float, mask: torch.Tensor | None = None):
    """The ``q`` quantile of each image of (B, 1, H, W) (inside ``mask``), shaped (B, 1, 1, 1).

    Images with an empty mask get 0.
    """
    flat = x.flatten(1).float()
    if mask is None:
        return torch.quantile(flat, q, dim=1).view(-1, 1, 1, 1).to(x.dtype)
    keep = mask.flatten(1).bool()
    values = []
    for row, inside in zip(flat, keep, strict=True):
        chosen = row[inside]
        values.append(torch.quantile(chosen, q) if chosen.numel() else row.new_zeros(()))
    return torch.stack(values).view(-1, 1, 1, 1).to(x.dtype)

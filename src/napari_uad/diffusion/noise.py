"""Gaussian and simplex noise for diffusion, seeded and vectorised in torch.

Simplex noise follows AnoDDPM (Wyatt et al., CVPRW 2022): several octaves of 2-D simplex noise,
each twice the frequency of the previous one and weighted by ``persistence**octave``. Every image
gets its own random offset into the noise field, and the sum is standardised per image to zero
mean and unit variance so it can replace N(0, I) in the DDPM equations.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

NoiseType = Literal["gaussian", "simplex"]

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)
_G2 = (3.0 - math.sqrt(3.0)) / 6.0
# Eight unit gradient directions.
_GRADIENTS = torch.tensor(
    [[math.cos(a), math.sin(a)] for a in (k * math.pi / 4 + math.pi / 8 for k in range(8))],
    dtype=torch.float32,
)


def gaussian_noise(shape, *, generator: torch.Generator | None = None, device=None, dtype=None):
    """Standard normal noise of the given shape (drawn on the generator's device)."""
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    return noise.to(device) if device is not None else noise


def simplex_noise(
    shape,
    *,
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 4.0,
    generator: torch.Generator | None = None,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Multi-octave 2-D simplex noise, standardised per image.

    Parameters
    ----------
    shape : tuple of int
        ``(..., H, W)``; every leading index gets an independent noise field.
    octaves : int
        Number of octaves; octaves finer than two pixels per period are skipped.
    persistence : float
        Amplitude factor between successive octaves (AnoDDPM: 0.8).
    frequency : float
        Cycles across the image side of the coarsest octave. AnoDDPM's frequency of 64 pixels per
        period on 256-pixel images is 4 cycles per side, the default here.
    generator : torch.Generator, optional
        Source of randomness (permutation table and offsets).

    Returns
    -------
    noise : tensor of ``shape``, zero mean and unit variance over (H, W) for each image.
    """
    *lead, height, width = shape
    if octaves < 1 or frequency <= 0:
        raise ValueError("simplex noise needs octaves >= 1 and frequency > 0")
    n_images = math.prod(lead)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(256, generator=generator, device=gen_device)
    perm = torch.cat([perm, perm]).to(device or "cpu")
    offsets = torch.rand((octaves, n_images, 2), generator=generator, device=gen_device) * 256
    offsets = offsets.to(device or "cpu", torch.float32)

    side = max(height, width)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None].expand(height, width)
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :].expand(height, width)
    total = torch.zeros((n_images, height, width), device=device, dtype=torch.float32)
    amplitude = 1.0
    for octave in range(octaves):
        cycles = frequency * 2**octave
        if side / cycles < 2.0 and octave > 0:
            break
        scale = cycles / side
        x = xs * scale + offsets[octave, :, 0, None, None]
        y = ys * scale + offsets[octave, :, 1, None, None]
        total += amplitude * _simplex2d(x, y, perm)
        amplitude *= persistence
    total = total - total.mean(dim=(-2, -1), keepdim=True)
    total = total / total.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return total.reshape(shape).to(dtype)


def _simplex2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Gustavson's 2-D simplex noise evaluated at coordinates ``x``, ``y`` (same shape)."""
    skew = (x + y) * _F2
    i = torch.floor(x + skew)
    j = torch.floor(y + skew)
    unskew = (i + j) * _G2
    x0 = x - (i - unskew)
    y0 = y - (j - unskew)
    upper = (x0 > y0).to(x.dtype)
    corners = (
        (x0, y0, 0, 0),
        (x0 - upper + _G2, y0 - (1 - upper) + _G2, upper.long(), (1 - upper).long()),
        (x0 - 1 + 2 * _G2, y0 - 1 + 2 * _G2, 1, 1),
    )
    ii = i.long() & 255
    jj = j.long() & 255
    gradients = _GRADIENTS.to(x.device)
    result = torch.zeros_like(x)
    for dx, dy, di, dj in corners:
        index = perm[ii + di + perm[jj + dj]] & 7
        grad = gradients[index]
        falloff = (0.5 - dx * dx - dy * dy).clamp_min(0.0)
        result += falloff**4 * (grad[..., 0] * dx + grad[..., 1] * dy)
    return 70.0 * result


def make_noise(
    kind: NoiseType,
    shape,
    *,
    generator: torch.Generator | None = None,
    device=None,
    simplex_options: dict | None = None,
) -> torch.Tensor:
    """Noise of the given kind (``"gaussian"`` or ``"simplex"``)."""
    if kind == "gaussian":
        return gaussian_noise(shape, generator=generator, device=device)
    if kind == "simplex":
        return simplex_noise(shape, generator=generator, device=device, **(simplex_options or {}))
    raise ValueError(f"unknown noise type {kind!r}: use 'gaussian' or 'simplex'")

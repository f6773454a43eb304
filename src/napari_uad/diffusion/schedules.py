"""Noise (beta) schedules for DDPMs.

Computed in float64 and returned as float32 tensors, as the reference implementations do.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

BetaSchedule = Literal["linear", "cosine"]


def linear_betas(num_timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 0.02):
    """Linear schedule of Ho et al. (2020), rescaled so that any ``num_timesteps`` keeps the
    same total noise as T=1000 (Nichol & Dhariwal, 2021).

    Parameters
    ----------
    num_timesteps : int
        Number of diffusion steps T.
    beta_start, beta_end : float
        Betas at the first and last step for T=1000.

    Returns
    -------
    betas : (T,) float32 tensor
    """
    _check_timesteps(num_timesteps)
    scale = 1000.0 / num_timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999).float()


def cosine_betas(num_timesteps: int, *, s: float = 0.008, max_beta: float = 0.999):
    """Cosine schedule of Nichol & Dhariwal (2021), eq. 17.

    Returns
    -------
    betas : (T,) float32 tensor
    """
    _check_timesteps(num_timesteps)
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta).float()


def make_betas(kind: BetaSchedule, num_timesteps: int):
    """Betas for a schedule given by name (``"linear"`` or ``"cosine"``)."""
    if kind == "linear":
        return linear_betas(num_timesteps)
    if kind == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown beta schedule {kind!r}: use 'linear' or 'cosine'")


def _check_timesteps(num_timesteps: int) -> None:
    if int(num_timesteps) != num_timesteps or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")

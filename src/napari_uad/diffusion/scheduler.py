"""DDPM / DDIM scheduler, kept apart from the networks (as diffusers does).

Notation (code name -> paper symbol, Ho et al. 2020; Song et al. 2021):

- ``alphas_cumprod[t]`` -> alpha-bar_t, the signal fraction after t+1 forward steps
- ``sample`` -> x_t, ``prev_sample`` -> x_{t'} with t' < t (t' = -1 means the clean image)
- ``pred_original`` -> x_0 estimate, ``pred_epsilon`` -> epsilon estimate
- ``eta`` -> DDIM's eta: 0 is deterministic DDIM, 1 is the ancestral DDPM posterior

Timesteps are 0-based: ``t`` runs from 0 (least noise) to ``num_train_timesteps - 1``.
The noise level of anomaly detection ("restore from t=250") is such a timestep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .schedules import BetaSchedule, make_betas

PredictionType = Literal["epsilon", "sample", "v_prediction"]
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class StepOutput:
    """Result of one reverse step: the less noisy sample and the clean-image estimate."""

    prev_sample: torch.Tensor
    pred_original: torch.Tensor


class DDPMScheduler:
    """Forward noising and strided DDPM/DDIM reverse steps.

    Parameters
    ----------
    num_train_timesteps : int
        T, the number of diffusion steps the model was trained with.
    beta_schedule : {'linear', 'cosine'}
    prediction_type : {'epsilon', 'sample', 'v_prediction'}
        What the network predicts: the noise, the clean image, or the velocity
        v = sqrt(abar) * eps - sqrt(1 - abar) * x0 (Salimans & Ho, 2022).
    clip_sample : float or None
        Clip the x0 estimate to [-clip_sample, clip_sample] (images live in [-1, 1]).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        *,
        beta_schedule: BetaSchedule = "linear",
        prediction_type: PredictionType = "epsilon",
        clip_sample: float | None = 1.0,
    ):
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}: use one of {_PREDICTION_TYPES}"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.betas = make_betas(beta_schedule, self.num_train_timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas.double(), dim=0).float()

    # -- helpers ----------------------------------------------------------------------------
    def _alpha_bar(self, t, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar at timesteps ``t`` (int or (B,) tensor; -1 gives 1), shaped to broadcast."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        values = torch.where(
            t >= 0, self.alphas_cumprod[t.clamp_min(0)], torch.ones((), dtype=torch.float32)
        )
        values = values.to(like.device, like.dtype)
        return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))

    def _check_timestep(self, t) -> None:
        t = torch.as_tensor(t)
        if (t < 0).any() or (t >= self.num_train_timesteps).any():
            raise ValueError(
                f"timestep out of range: must lie in [0, {self.num_train_timesteps - 1}]"
            )

    # -- forward process --------------------------------------------------------------------
    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Sample q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (Ho et al., eq. 4)."""
        self._check_timestep(t)
        abar = self._alpha_bar(t, original)
        return abar.sqrt() * original + (1 - abar).sqrt() * noise

    def training_target(self, original: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """What the network should output for ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return original
        abar = self._alpha_bar(t, original)
        return abar.sqrt() * noise - (1 - abar).sqrt() * original

    def split_prediction(self, model_output: torch.Tensor, t, sample: torch.Tensor):
        """Turn a network output into (x0 estimate, epsilon estimate)."""
        abar = self._alpha_bar(t, sample)
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (sample - (1 - abar).sqrt() * eps) / abar.sqrt()
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - abar.sqrt() * x0) / (1 - abar).sqrt()
        else:
            x0 = abar.sqrt() * sample - (1 - abar).sqrt() * model_output
            eps = (1 - abar).sqrt() * sample + abar.sqrt() * model_output
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            # Keep epsilon consistent with the clipped x0 so the step stays on the trajectory.
            eps = (sample - abar.sqrt() * x0) / (1 - abar).sqrt()
        return x0, eps

    def posterior_sample(
        self, original: torch.Tensor, sample: torch.Tensor, t, noise: torch.Tensor
    ) -> torch.Tensor:
        """Draw x_{t-1} ~ q(x_{t-1} | x_t, x_0) per sample (Ho et al. 2020, eqs. 6-7).

        Parameters
        ----------
        original : tensor
            The clean image, or a network's estimate of it.
        sample : tensor
            x_t.
        t : int or (B,) tensor
            Current timesteps; where t = 0 the result is ``original``.
        noise : tensor
            Standard Gaussian noise shaped like ``sample``.
        """
        self._check_timestep(t)
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        abar_t = self._alpha_bar(t, sample)
        abar_prev = self._alpha_bar(t - 1, sample)
        beta = (1 - abar_t / abar_prev).clamp(0, 1)
        mean = (
            abar_prev.sqrt() * beta * original + (1 - beta).sqrt() * (1 - abar_prev) * sample
        ) / (1 - abar_t)
        std = (beta * (1 - abar_prev) / (1 - abar_t)).clamp_min(0).sqrt()
        return mean + std * noise

    def renoise(self, sample: torch.Tensor, from_t: int, to_t: int, noise: torch.Tensor):
        """Sample q(x_{to_t} | x_{from_t}): forward diffusion from one noise level to a higher
        one (RePaint's resampling jump; ``from_t = -1`` is the clean image)."""
        if to_t <= from_t:
            raise ValueError(f"to_t ({to_t}) must be larger than from_t ({from_t})")
        self._check_timestep(to_t)
        ratio = self._alpha_bar(to_t, sample) / self._alpha_bar(from_t, sample)
        return ratio.sqrt() * sample + (1 - ratio).clamp_min(0).sqrt() * noise

    # -- reverse process --------------------------------------------------------------------
    def timesteps(self, num_steps: int, *, start: int | None = None) -> list[int]:
        """Descending timesteps for a strided reverse pass from ``start`` down to 0.

        ``num_steps`` network evaluations are made; ``num_steps = start + 1`` is the full
        schedule of the papers (every timestep), fewer steps stride evenly.

        Examples
        --------
        >>> DDPMScheduler(1000).timesteps(5, start=200)
        [200, 150, 100, 50, 0]
        """
        start = self.num_train_timesteps - 1 if start is None else int(start)
        self._check_timestep(start)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        num_steps = min(int(num_steps), start + 1)
        if num_steps == 1:
            return [start]
        values = np.round(np.linspace(start, 0, num_steps)).astype(int)
        return [int(v) for v in values]

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        sample: torch.Tensor,
        *,
        prev_t: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """One reverse step x_t -> x_{prev_t} (Song et al. 2021, eq. 12).

        With ``eta=1`` and ``prev_t = t - 1`` this is exactly the DDPM ancestral step
        (Ho et al. 2020, eqs. 6-7); with ``eta=0`` it is deterministic DDIM; strides of any size
        work for both.

        Parameters
        ----------
        model_output : tensor
            Network output at (``sample``, ``t``), interpreted by ``prediction_type``.
        t, prev_t : int
            Current and next timestep, ``prev_t < t``; ``prev_t = -1`` returns the x0 estimate.
        eta : float
            Amount of fresh noise, 0 (DDIM) to 1 (DDPM).
        noise : tensor, optional
            The fresh noise (Gaussian or simplex); required when ``eta > 0`` and ``prev_t >= 0``.
        """
        if prev_t >= t:
            raise ValueError(f"prev_t ({prev_t}) must be smaller than t ({t})")
        x0, eps = self.split_prediction(model_output, t, sample)
        if prev_t < 0:
            return StepOutput(prev_sample=x0, pred_original=x0)
        abar_t = self._alpha_bar(t, sample)
        abar_prev = self._alpha_bar(prev_t, sample)
        # 1. sigma_t(eta) of eq. 16: eta=1 recovers the DDPM posterior std.
        variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        sigma = eta * variance.clamp_min(0).sqrt()
        # 2. "direction pointing to x_t" and the predicted x0 term of eq. 12.
        direction = (1 - abar_prev - sigma**2).clamp_min(0).sqrt() * eps
        prev = abar_prev.sqrt() * x0 + direction
        # 3. fresh noise.
        if eta > 0:
            if noise is None:
                raise ValueError("step() with eta > 0 needs `noise`")
            prev = prev + sigma * noise
        return StepOutput(prev_sample=prev, pred_original=x0)


def step_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """``(t, prev_t)`` for each reverse step of a descending schedule; the last ``prev_t`` is
    -1 (the clean image).

    Examples
    --------
    >>> step_pairs([200, 100, 0])
    [(200, 100), (100, 0), (0, -1)]
    """
    return list(zip(timesteps, [*timesteps[1:], -1], strict=True))

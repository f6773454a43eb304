"""ADDM inference: the DDPM restoration sampler on a model trained with ADDM's adversarial loss.

Yu et al., "Adversarial Denoising Diffusion Model for Unsupervised Anomaly Detection" (2023):
the adversarial term only changes training, so inference is AnoDDPM's partial noising and
denoising with Gaussian noise, here with this model's own defaults and calibration.
"""

from __future__ import annotations

from .anoddpm import AnoDDPM


class ADDM(AnoDDPM):
    """Partial noising + denoising with an ADDM-trained DDPM; anomaly = |scan - restoration|."""

    name = "addm"
    description = "DDPM restoration with an adversarially trained denoiser (ADDM)"
    model_methods = ("addm",)
    default_model = "addm"

"""MAD-AD: masked latent diffusion with a mask head (Beizaee et al., 2025).

A slice is encoded into the latent of a small KL autoencoder trained on healthy slices; an
anomaly there is treated as if it were *noise* in some latent patches of a healthy latent, the
last step of a masked forward diffusion. The latent UNet predicts the clean latent and, in one
extra channel, where that noise is. A few DDIM steps (T = 10, eta = 0.5) from the clean latent
itself update only the positions the mask head flags at each step; the rest of the latent stays
as it is. The restored latent is decoded, and the anomaly map is the blurred, clipped squared
residual a = G * min((x_hat - x)^2, gamma) / gamma.

Follows the paper and the authors' code (farzad-bz/MAD-AD, ``evaluate-MAD-AD.py``), with the
mask convention of :mod:`napari_uad.training.madad` (1 = noised = to be restored).
"""

from __future__ import annotations

from typing import Any

import torch

from ..device import inference_layout
from ..diffusion.scheduler import DDPMScheduler, step_pairs
from .base import Method
from .filters import gaussian_blur2d


class MADAD(Method):
    """Masked latent DDIM from the clean latent; anomaly = blurred clipped squared residual.

    Parameters (``restore(**params)``)
    ----------------------------------
    steps : int
        DDIM steps from t = T - 1 to 0 (paper: T = 10, all of them).
    eta : float
        DDIM's eta (paper: 0.5).
    mask_threshold : float
        A latent position is updated when the mask head's probability exceeds this (0.5).
    gamma : float
        Clip of the squared residual in [0, 1] intensity units; 1/64 matches the authors' clip
        of 0.25 on the absolute residual of [-1, 1] images.
    sigma : float
        Gaussian smoothing of the map in pixels (the authors' 5 px at 256 px: 2.5 at 128).
    reference : {'input', 'autoencoder'}
        Compare the restoration with the input (paper) or with the autoencoder's own
        reconstruction of it (the authors' code), which cancels the autoencoder's blur.
    """

    name = "madad"
    description = "MAD-AD: masked latent diffusion, updates only where the mask head points"
    model_methods = ("madad",)
    default_model = "madad"
    defaults: dict[str, Any] = {
        "steps": 10,
        "eta": 0.5,
        "mask_threshold": 0.5,
        "gamma": 1 / 64,
        "sigma": 2.5,
        "reference": "input",
    }

    def __init__(self, model, config, *, vae, device=None):
        super().__init__(model, config, device=device)
        self.vae = vae.eval().to(self.device)
        entry = config.components.get("vae", {})
        self.scale = float(entry.get("scale", 1.0))
        diffusion = config.diffusion
        self.scheduler = DDPMScheduler(
            diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            prediction_type="sample",
            clip_sample=None,  # latents are not confined to [-1, 1]
        )

    @classmethod
    def from_checkpoint(cls, folder, *, device="cpu") -> MADAD:
        from ..models.checkpoint import CheckpointError, load_checkpoint, load_component

        model, config = load_checkpoint(folder, device=device)
        if "vae" not in config.components:
            raise CheckpointError(
                f"model {config.name!r} has no autoencoder ('vae' component): madad needs a "
                "model trained with 'napari-uad train --method madad'"
            )
        vae = load_component(folder, "vae", config=config, device=device)
        model, vae = inference_layout(model, device), inference_layout(vae, device)
        return cls(model, config, vae=vae, device=device)

    def expected_channels(self, config) -> tuple[int, int]:
        from ..models.checkpoint import CheckpointError

        entry = config.components.get("vae")
        if not isinstance(entry, dict):
            raise CheckpointError(f"model {config.name!r} has no autoencoder ('vae' component)")
        latent = int(entry.get("config", {}).get("latent_channels", 4))
        return (latent, latent + 1)

    @property
    def latent_channels(self) -> int:
        return self.config.unet.in_channels

    def validate(self, params: dict[str, Any]) -> None:
        if int(params["steps"]) < 1:
            raise ValueError(f"steps must be >= 1, got {params['steps']}")
        if not 0.0 <= float(params["eta"]) <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {params['eta']}")
        if not 0.0 < float(params["mask_threshold"]) < 1.0:
            raise ValueError("mask_threshold must lie in (0, 1)")
        if float(params["gamma"]) <= 0:
            raise ValueError("gamma must be > 0")
        if float(params["sigma"]) < 0:
            raise ValueError("sigma must be >= 0")
        if params["reference"] not in ("input", "autoencoder"):
            raise ValueError("reference must be 'input' or 'autoencoder'")

    def timesteps(self, params: dict[str, Any]) -> list[int]:
        return self.scheduler.timesteps(int(params["steps"]))

    def evaluations_per_slice(self, params: dict[str, Any]) -> int:
        return len(self.timesteps(params))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled posterior-mean latents of images in [0, 1]."""
        return self.vae.encode(images * 2 - 1)[0] * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from scaled latents."""
        return ((self.vae.decode(latents / self.scale) + 1) / 2).clamp(0, 1)

    def _restore_batch(self, images, masks, params, generators):
        eta = float(params["eta"])
        channels = self.latent_channels
        timesteps = self.timesteps(params)
        latent = self.encode(images)
        brain = torch.nn.functional.adaptive_max_pool2d(masks.float(), latent.shape[-2:]) > 0
        self.last_update_masks = []
        for t, prev_t in step_pairs(timesteps):
            t_batch = torch.full((len(latent),), t, device=latent.device, dtype=torch.long)
            output = self.model(latent, t_batch)
            predicted, logits = output[:, :channels], output[:, channels:]
            update = (torch.sigmoid(logits) > float(params["mask_threshold"])) & brain
            noise = None
            if eta > 0 and prev_t >= 0:
                noise = torch.cat(
                    [
                        torch.randn((1, *latent.shape[1:]), generator=g, device=g.device)
                        for g in generators
                    ]
                ).to(latent.device, latent.dtype)
            latent = masked_ddim_step(
                self.scheduler, predicted, t, latent, update, prev_t=prev_t, eta=eta, noise=noise
            )
            self.last_update_masks.append(update)
            yield self.decode(latent) * masks
        healthy = self.decode(latent) * masks
        reference = images
        if params["reference"] == "autoencoder":
            reference = self.decode(self.encode(images)) * masks
        anomaly = anomaly_map(
            healthy, reference, masks, gamma=float(params["gamma"]), sigma=float(params["sigma"])
        )
        return healthy, anomaly


def masked_ddim_step(scheduler, predicted, t, latent, update, *, prev_t, eta=0.0, noise=None):
    """MAD-AD's reverse step: a DDIM step where ``update`` is True, the latent unchanged
    elsewhere.

    Parameters
    ----------
    scheduler : DDPMScheduler
        With ``prediction_type='sample'``.
    predicted : (B, C, h, w) tensor
        The network's clean-latent estimate.
    t, prev_t : int
        Current and next timestep (``prev_t = -1``: the clean estimate itself).
    latent : (B, C, h, w) tensor
    update : (B, 1, h, w) bool tensor
        Positions the mask head flags as noised.
    """
    stepped = scheduler.step(predicted, t, latent, prev_t=prev_t, eta=eta, noise=noise)
    return torch.where(update, stepped.prev_sample, latent)


def anomaly_map(healthy, reference, masks, *, gamma: float, sigma: float) -> torch.Tensor:
    """G_sigma * min((healthy - reference)^2, gamma) / gamma inside the brain, in [0, 1]."""
    squared = ((healthy - reference) ** 2).clamp(max=gamma) / gamma
    return gaussian_blur2d(squared * masks, sigma).clamp(0, 1) * masks

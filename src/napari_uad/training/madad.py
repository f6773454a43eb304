"""MAD-AD trainer: a small KL autoencoder, then masked latent diffusion with a mask head.

Stage ``vae`` (the first ``vae_steps`` steps): the autoencoder learns to reconstruct healthy
slices (L1 + a small KL term). Stage ``diffusion`` (the rest): the autoencoder is frozen;
latents are scaled to unit variance; random patch masks (ratio ~ U[0, 0.4], patch sides from
{1, 2, 4, 8}, cut to the brain) choose where the latent is noised at a random step of a
T = 10 schedule; the UNet predicts the clean latent (x0) and, in one extra output channel, the
mask logits; loss = MSE(z0) + mask_weight * BCE(mask).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion.scheduler import DDPMScheduler
from ..models.config import DiffusionConfig, ModelConfig
from ..models.unet import UNet
from ..models.vae import VAE, VAEConfig
from .corruption import random_patch_masks
from .ddpm import compact_unet
from .loop import Trainer


class MADADTrainer(Trainer):
    """Masked latent diffusion training; exports a ``madad`` model with its ``vae``."""

    family = "madad"
    method = "madad"
    OPTIONS = {
        "vae_steps": None,
        "kl_weight": 1e-4,
        "mask_weight": 1.0,
        "max_mask_ratio": 0.4,
        "patch_sizes": [1, 2, 4, 8],
    }

    @classmethod
    def default_config(
        cls,
        name: str,
        *,
        grid: int = 128,
        noise: str = "gaussian",
        base_channels: int = 16,
        latent_channels: int = 4,
    ) -> ModelConfig:
        vae = VAEConfig(latent_channels=latent_channels, base_channels=base_channels)
        unet = compact_unet(
            base_channels * 2, in_channels=latent_channels, out_channels=latent_channels + 1
        )
        unet = type(unet)(
            **{
                **unet.to_dict(),
                "channel_mults": (1, 2, 4),
                "attention_levels": (False, False, True),
            }
        )
        return ModelConfig(
            name=name,
            method=cls.method,
            grid=grid,
            unet=unet,
            diffusion=DiffusionConfig(
                num_train_timesteps=10, beta_schedule="cosine", prediction_type="sample"
            ),
            defaults={"steps": 10, "eta": 0.5},
            components={"vae": {"kind": "vae", "config": vae.to_dict(), "scale": 1.0}},
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.options["vae_steps"] is None:
            self.options["vae_steps"] = max(1, self.settings.steps // 3)
        diffusion = self.config.diffusion
        self.scheduler = DDPMScheduler(
            diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            prediction_type="sample",
        )

    @property
    def latent_channels(self) -> int:
        return self.networks["vae"].config.latent_channels

    @property
    def scale(self) -> float:
        return float(self.config.components["vae"].get("scale", 1.0))

    def build_networks(self):
        vae = VAEConfig.from_dict(self.config.components["vae"]["config"])
        expected = (vae.latent_channels, vae.latent_channels + 1)
        if (self.config.unet.in_channels, self.config.unet.out_channels) != expected:
            raise ValueError(
                f"the latent UNet needs {expected[0]} input and {expected[1]} output channels"
            )
        return {"vae": VAE(vae), "model": UNet(self.config.unet)}

    def components(self):
        return {"vae": self.networks["vae"]}

    def _method_components(self):
        return {"vae": self.ema.get("vae", self.networks["vae"])}

    def stage(self, step):
        vae_steps = min(self.options["vae_steps"], self.settings.steps - 1)
        if step < vae_steps:
            return "vae", 0, vae_steps
        return "diffusion", vae_steps, self.settings.steps - vae_steps

    def on_stage_start(self, stage):
        vae = self.networks["vae"]
        if stage == "diffusion":
            vae.eval().requires_grad_(False)
            if not self.config.components["vae"].get("scale_fitted"):
                self._fit_scale()
        else:
            vae.train().requires_grad_(True)

    @torch.no_grad()
    def _fit_scale(self) -> None:
        """Scale latents to unit standard deviation over the training slices."""
        vae = self.networks["vae"]
        means = [
            vae.encode(self.images[i : i + 64].to(self.device) * 2 - 1)[0]
            for i in range(0, len(self.images), 64)
        ]
        std = torch.cat(means).float().std().item()
        self.config.components["vae"]["scale"] = round(1.0 / max(std, 1e-6), 6)
        self.config.components["vae"]["scale_fitted"] = True

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled posterior-mean latents of images in [0, 1]."""
        return self.networks["vae"].encode(images * 2 - 1)[0] * self.scale

    def latent_masks(self, brain: torch.Tensor, size) -> torch.Tensor:
        """Random patch masks on the latent grid, cut to the (downsampled) brain."""
        masks = random_patch_masks(
            len(brain),
            size,
            generator=self.generator,
            max_ratio=self.options["max_mask_ratio"],
            patch_sizes=tuple(self.options["patch_sizes"]),
            device=brain.device,
        )
        brain_latent = F.adaptive_max_pool2d(brain.float(), size)
        return masks * brain_latent

    def training_step(self, images, masks):
        stage, *_ = self.stage(self.step)
        if stage == "vae":
            x = images * 2 - 1
            vae = self.wrapped["vae"]
            reconstruction, mean, logvar = vae(x, generator=self.generator)
            l1 = F.l1_loss(reconstruction.float(), x)
            kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).mean()
            loss = l1 + self.options["kl_weight"] * kl
            self.update("vae", loss)
            return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}
        with torch.no_grad():
            z0 = self.encode(images)
        mask = self.latent_masks(masks, z0.shape[-2:])
        t = self.randint(0, self.config.diffusion.num_train_timesteps, len(z0))
        noisy = self.scheduler.add_noise(z0, self.randn(z0.shape), t)
        zt = noisy * mask + z0 * (1 - mask)
        output = self.wrapped["model"](zt, t).float()
        channels = self.latent_channels
        latent_loss = F.mse_loss(output[:, :channels], z0)
        mask_loss = F.binary_cross_entropy_with_logits(output[:, channels:], mask)
        loss = latent_loss + self.options["mask_weight"] * mask_loss
        self.update("model", loss)
        return {"loss": loss.item(), "latent": latent_loss.item(), "mask": mask_loss.item()}

    def extra_state(self):
        return {
            "vae_component": self.config.components["vae"],
            "vae_steps": self.options["vae_steps"],
        }

    def load_extra_state(self, state):
        if "vae_component" in state:
            self.config.components["vae"] = state["vae_component"]

    @torch.no_grad()
    def preview(self, images, masks):
        """Rows: slice, autoencoder reconstruction, predicted mask of a masked-noised latent."""
        x = torch.from_numpy(images)[:, None].to(self.device)
        brain = torch.from_numpy(masks)[:, None].to(self.device)
        vae = self.networks["vae"]
        was_training = vae.training
        vae.eval()
        mean = vae.encode(x * 2 - 1)[0]
        reconstruction = ((vae.decode(mean) + 1) / 2).clamp(0, 1) * brain
        if was_training:
            vae.train()
        z0 = mean * self.scale
        # A fixed square mask in the middle, noised half way, shows whether the head finds it.
        mask = torch.zeros_like(z0[:, :1])
        h, w = mask.shape[-2:]
        mask[..., h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 1
        t = torch.full(
            (len(z0),), self.config.diffusion.num_train_timesteps // 2, device=self.device
        )
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0)).to(self.device)
        zt = self.scheduler.add_noise(z0, noise, t) * mask + z0 * (1 - mask)
        logits = self.ema["model"](zt, t)[:, self.latent_channels :]
        predicted = F.interpolate(torch.sigmoid(logits), size=x.shape[-2:], mode="nearest")
        rows = [x, reconstruction, predicted]
        return np.stack([r[:, 0].float().cpu().numpy() for r in rows]).astype(np.float32)

"""ADDM trainer: the DDPM loss plus an adversarial loss on denoised samples.

Yu et al. (2023), eq. 5: a discriminator D tells the model's denoised sample
x_{t-1} ~ p_theta(x_{t-1} | x_t) from a real noised sample x_{t-1} ~ q(x_{t-1} | x_0); the
denoiser minimises ``L_DDPM + lambda * L_adv`` with lambda = 0.05. We use the non-saturating
GAN loss and a time-conditioned patch discriminator; both networks are checkpointed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.config import ModelConfig
from ..models.discriminator import DiscriminatorConfig, PatchDiscriminator
from .ddpm import DDPMTrainer


class ADDMTrainer(DDPMTrainer):
    """Adversarially trained DDPM; exports an ``addm`` model (with its discriminator)."""

    family = "addm"
    method = "addm"
    # The generator is a DDPM: ADDM fine-tuning of a trained anoddpm model is allowed.
    INIT_FROM = ("anoddpm",)
    OPTIONS = {"max_timestep": None, "adversarial_weight": 0.05, "discriminator_channels": 16}

    @classmethod
    def default_config(cls, name: str, **kwargs) -> ModelConfig:
        config = super().default_config(name, **kwargs)
        config.diffusion.noise = "gaussian"
        return config

    def build_networks(self):
        networks = super().build_networks()
        disc = DiscriminatorConfig(base_channels=self.options["discriminator_channels"])
        self.config.components["discriminator"] = {
            "kind": "discriminator",
            "config": disc.to_dict(),
        }
        networks["discriminator"] = PatchDiscriminator(disc)
        return networks

    def components(self):
        return {"discriminator": self.networks["discriminator"]}

    def training_step(self, images, masks):
        clean = images * 2 - 1
        loss_ddpm, t, noisy, output = self.denoising_loss(clean, low=1)
        x0, _ = self.scheduler.split_prediction(output.float(), t, noisy)
        fake = self.scheduler.posterior_sample(x0, noisy, t, self.randn(noisy.shape))
        # The generator's adversarial term goes through the bare discriminator, so its
        # gradients are not synchronised (they are discarded before D's own step).
        adversarial = F.softplus(-self.networks["discriminator"](fake, t - 1)).mean()
        weight = self.options["adversarial_weight"]
        generator_loss = loss_ddpm + weight * adversarial
        self.update("model", generator_loss)

        real = self.scheduler.add_noise(clean, self.noise_like(clean), t - 1)
        logits = self.wrapped["discriminator"](
            torch.cat([real, fake.detach()]), torch.cat([t - 1, t - 1])
        )
        real_logits, fake_logits = logits.float().chunk(2)
        disc_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        self.update("discriminator", disc_loss)
        return {
            "loss": loss_ddpm.item(),
            "adversarial": adversarial.item(),
            "generator": generator_loss.item(),
            "discriminator": disc_loss.item(),
        }

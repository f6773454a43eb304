"""A small KL autoencoder (VAE) mapping slices to a spatial latent, for MAD-AD."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import bounds


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of :class:`VAE`.

    Parameters
    ----------
    in_channels : int
    latent_channels : int
    base_channels : int
    channel_mults : tuple of int
        One entry per level; each level after the first halves the resolution, so the latent
        side is ``grid / 2 ** (len(channel_mults) - 1)``.
    groups : int
        GroupNorm groups.
    """

    in_channels: int = 1
    latent_channels: int = 4
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 4)
    groups: int = 8

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channel_mults"] = list(self.channel_mults)
        return data

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "vae") -> VAEConfig:
        """Build from parsed JSON, checking every value before anything is built.

        Parameters
        ----------
        data : dict
            The component's ``config`` object; missing settings take the defaults.
        where : str
            Name of the object in error messages.

        Raises
        ------
        ValueError
            Naming the first setting of the wrong type or out of range.
        """
        bounds.known_settings(where, data, cls, "VAE")
        value = {**cls().to_dict(), **data}

        def name(key):
            return f"{where}.{key}"

        mults = bounds.integers(name("channel_mults"), value["channel_mults"], 1, 16, max_length=8)
        base = bounds.integer(name("base_channels"), value["base_channels"], 1, 1024)
        groups = bounds.integer(name("groups"), value["groups"], 1, 1024)
        widths = [base * m for m in mults]
        if any(w % groups for w in widths):
            raise ValueError(
                f"{name('groups')} ({groups}) must divide the width of every level {widths}"
            )
        config = cls(
            in_channels=bounds.integer(name("in_channels"), value["in_channels"], 1, 64),
            latent_channels=bounds.integer(
                name("latent_channels"), value["latent_channels"], 1, 64
            ),
            base_channels=base,
            channel_mults=mults,
            groups=groups,
        )
        bounds.check_parameters(where, lambda: VAE(config))
        return config


class _Block(nn.Module):
    def __init__(self, channels_in, channels_out, groups):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels_in),
            nn.SiLU(),
            nn.Conv2d(channels_in, channels_out, 3, padding=1),
            nn.GroupNorm(groups, channels_out),
            nn.SiLU(),
            nn.Conv2d(channels_out, channels_out, 3, padding=1),
        )
        self.skip = (
            nn.Conv2d(channels_in, channels_out, 1)
            if channels_in != channels_out
            else nn.Identity()
        )

    def forward(self, x):
        return self.skip(x) + self.body(x)


class VAE(nn.Module):
    """``encode(x) -> (mean, logvar)``, ``decode(z) -> x``; images in [-1, 1]."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config = config or VAEConfig()
        widths = [config.base_channels * m for m in config.channel_mults]
        groups = config.groups
        encoder = [nn.Conv2d(config.in_channels, widths[0], 3, padding=1)]
        width = widths[0]
        for level, level_width in enumerate(widths):
            encoder.append(_Block(width, level_width, groups))
            width = level_width
            if level < len(widths) - 1:
                encoder.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        encoder += [
            _Block(width, width, groups),
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv2d(width, 2 * config.latent_channels, 3, padding=1),
        ]
        self.encoder = nn.Sequential(*encoder)
        decoder = [
            nn.Conv2d(config.latent_channels, width, 3, padding=1),
            _Block(width, width, groups),
        ]
        for level in reversed(range(len(widths))):
            decoder.append(_Block(width, widths[level], groups))
            width = widths[level]
            if level > 0:
                decoder += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(width, width, 3, padding=1),
                ]
        decoder += [
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv2d(width, config.in_channels, 3, padding=1),
        ]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent_channels, H/f, W/f)."""
        factor = self.config.downsampling_factor
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input height and width must be multiples of {factor}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None):
        """Reconstruction from a posterior sample, with the posterior's mean and log-variance."""
        mean, logvar = self.encode(x)
        source = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=source).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * noise
        return self.decode(z), mean, logvar

"""A small time-conditioned patch discriminator for ADDM's adversarial loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import bounds
from .unet import timestep_embedding


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of :class:`PatchDiscriminator`.

    Parameters
    ----------
    in_channels : int
    base_channels : int
        Width of the first convolution; each of the ``num_layers`` strided layers doubles it.
    num_layers : int
        Strided (halving) convolutions; the output is one logit per patch.
    """

    in_channels: int = 1
    base_channels: int = 16
    num_layers: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "discriminator") -> DiscriminatorConfig:
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
        bounds.known_settings(where, data, cls, "discriminator")
        value = {**cls().to_dict(), **data}
        base = bounds.integer(f"{where}.base_channels", value["base_channels"], 4, 1024)
        if base % 4:
            # Its GroupNorm has 8 groups over twice the base width.
            raise ValueError(f"{where}.base_channels must be a multiple of 4, got {base}")
        config = cls(
            in_channels=bounds.integer(f"{where}.in_channels", value["in_channels"], 1, 64),
            base_channels=base,
            num_layers=bounds.integer(f"{where}.num_layers", value["num_layers"], 1, 8),
        )
        bounds.check_parameters(where, lambda: PatchDiscriminator(config))
        return config


class PatchDiscriminator(nn.Module):
    """``D(x, t)``: logits (B, 1, h, w), one per image patch, for an image at noise level t.

    The timestep enters as a learned per-channel shift of the first features, so one network
    judges samples at every noise level (real noised images look different at each t).
    """

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        width = config.base_channels
        self.stem = nn.Conv2d(config.in_channels, width, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        layers = []
        for _ in range(config.num_layers):
            layers += [
                nn.Conv2d(width, width * 2, 4, stride=2, padding=1),
                nn.GroupNorm(8, width * 2),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        shift = self.time(timestep_embedding(t, self.config.base_channels))
        h = nn.functional.leaky_relu(self.stem(x) + shift[:, :, None, None], 0.2)
        return self.body(h)

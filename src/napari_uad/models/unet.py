"""A compact time-conditioned UNet for 2-D slices (after Ho et al. 2020 and lucidrains'
denoising-diffusion-pytorch): residual blocks with GroupNorm and SiLU, sinusoidal time embedding,
self-attention at the coarse levels only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import bounds

_HEADS = 4


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; stored in every checkpoint's ``config.json``.

    Parameters
    ----------
    in_channels, out_channels : int
    base_channels : int
        Width of the first level; level i has ``base_channels * channel_mults[i]`` channels.
    channel_mults : tuple of int
        One entry per resolution level; each level after the first halves the resolution.
    num_res_blocks : int
        Residual blocks per level.
    attention_levels : tuple of bool
        Whether each level has self-attention (keep it to the coarse levels on CPU).
    groups : int
        GroupNorm groups.
    dropout : float
    """

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    groups: int = 8
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        if len(self.attention_levels) != len(self.channel_mults):
            raise ValueError("attention_levels needs one entry per channel_mults entry")
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.groups:
                raise ValueError("every level's width must be divisible by groups")

    @property
    def downsampling_factor(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channel_mults"] = list(self.channel_mults)
        data["attention_levels"] = list(self.attention_levels)
        return data

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "unet") -> UNetConfig:
        """Build from parsed JSON, checking every value before anything is built.

        Parameters
        ----------
        data : dict
            The ``unet`` object of ``config.json``; missing settings take the defaults.
        where : str
            Name of the object in error messages.

        Raises
        ------
        ValueError
            Naming the first setting of the wrong type or out of range (widths up to 1024
            base channels, 8 levels, 16 blocks per level, 500 M parameters).
        """
        bounds.known_settings(where, data, cls, "UNet")
        value = {**cls().to_dict(), **data}

        def name(key):
            return f"{where}.{key}"

        mults = bounds.integers(name("channel_mults"), value["channel_mults"], 1, 16, max_length=8)
        base = bounds.integer(name("base_channels"), value["base_channels"], 2, 1024)
        if base % 2:
            # The sinusoidal time embedding has an even width.
            raise ValueError(f"{name('base_channels')} must be even, got {base}")
        attention = bounds.flags(name("attention_levels"), value["attention_levels"], len(mults))
        groups = bounds.integer(name("groups"), value["groups"], 1, 1024)
        widths = [base * m for m in mults]
        if any(w % groups for w in widths):
            raise ValueError(
                f"{name('groups')} ({groups}) must divide the width of every level {widths}"
            )
        attended = [w for w, a in zip(widths, attention, strict=True) if a] + widths[-1:]
        if any(w % _HEADS for w in attended):
            raise ValueError(
                f"{where}: the widths of levels with attention and of the last level "
                f"({attended}) must be multiples of {_HEADS} (attention heads)"
            )
        config = cls(
            in_channels=bounds.integer(name("in_channels"), value["in_channels"], 1, 64),
            out_channels=bounds.integer(name("out_channels"), value["out_channels"], 1, 64),
            base_channels=base,
            channel_mults=mults,
            num_res_blocks=bounds.integer(name("num_res_blocks"), value["num_res_blocks"], 1, 16),
            attention_levels=attention,
            groups=groups,
            dropout=bounds.number(name("dropout"), value["dropout"], 0, 1, below_high=True),
            extra=bounds.mapping(name("extra"), value["extra"]),
        )
        bounds.check_parameters(where, lambda: UNet(config))
        return config


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps into (B, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels_in, channels_out, time_dim, *, groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.time = nn.Linear(time_dim, channels_out * 2)
        self.norm2 = nn.GroupNorm(groups, channels_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = (
            nn.Conv2d(channels_in, channels_out, 1)
            if channels_in != channels_out
            else nn.Identity()
        )

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    def __init__(self, channels, *, groups, heads=_HEADS):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Time-conditioned UNet: ``model(x, t)`` with x (B, C, H, W) and t (B,) integer timesteps.

    H and W must be multiples of ``config.downsampling_factor``.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config = config or UNetConfig()
        widths = [config.base_channels * m for m in config.channel_mults]
        time_dim = config.base_channels * 4
        block = dict(groups=config.groups, dropout=config.dropout)

        self.time_mlp = nn.Sequential(
            nn.Linear(config.base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.stem = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_widths = [widths[0]]
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(width, level_width, time_dim, **block)]
                if config.attention_levels[level]:
                    layers.append(Attention(level_width, groups=config.groups))
                self.down.append(nn.ModuleList(layers))
                width = level_width
                skip_widths.append(width)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skip_widths.append(width)

        self.mid = nn.ModuleList(
            [
                ResBlock(width, width, time_dim, **block),
                Attention(width, groups=config.groups),
                ResBlock(width, width, time_dim, **block),
            ]
        )

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            level_width = widths[level]
            for _ in range(config.num_res_blocks + 1):
                layers = [ResBlock(width + skip_widths.pop(), level_width, time_dim, **block)]
                if config.attention_levels[level]:
                    layers.append(Attention(level_width, groups=config.groups))
                self.up.append(nn.ModuleList(layers))
                width = level_width
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(width, width, 3, padding=1),
                    )
                )
        self.head = nn.Sequential(
            nn.GroupNorm(config.groups, width),
            nn.SiLU(),
            nn.Conv2d(width, config.out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        factor = self.config.downsampling_factor
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input height and width must be multiples of {factor}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        h = self.stem(x)
        skips = [h]
        for module in self.down:
            h = _run(module, h, emb)
            skips.append(h)
        for module in self.mid:
            h = _run(module, h, emb)
        for module in self.up:
            if isinstance(module, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = _run(module, h, emb)
        return self.head(h)

    def encoder_features(self, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the downsampling path at every resolution level.

        The last feature map of each level (stem, then after each level's blocks), finest
        first; a learned multi-scale description of the image that the perceptual distance of
        :mod:`napari_uad.methods.perceptual` compares.
        """
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        h = self.stem(x)
        features = []
        for module in self.down:
            if not isinstance(module, nn.ModuleList):  # a downsampling conv ends a level
                features.append(h)
            h = _run(module, h, emb)
        features.append(h)
        return features


def _run(module: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.ModuleList):
        for layer in module:
            h = _run(layer, h, emb)
        return h
    if isinstance(module, ResBlock):
        return module(h, emb)
    return module(h)

"""Synthetic corruptions that stand in for lesions during healthy-only training.

- :func:`synthetic_anomalies`: DISYRE's forward process (Naval Marimont et al.): regions of a slice
  are replaced by a convex combination of the slice and a *foreign patch* from another healthy
  slice, under a soft random shape mask; the interpolation factor is the severity.
- :func:`small_anomalies`: many small blobs darker or brighter than the tissue around them (1-5
  pixels in radius on a 128 grid), laid over the DISYRE corruption so the restoration also
  learns to remove lesions the size of MS plaques, of either polarity.
- :func:`random_patch_masks`: MAD-AD's random masks: a grid of patches (sides drawn from
  {1, 2, 4, 8}) each masked with a probability drawn from U[0, 0.4].

Everything is vectorised over the batch and drawn from one ``torch.Generator`` (seeded runs
repeat exactly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand(shape, generator, device):
    source = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=source).to(device)


def soft_shape_masks(
    brain: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    max_shapes: int = 3,
    min_radius: float = 0.04,
    max_radius: float = 0.25,
    softness: float = 0.35,
    centres: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random blob-shaped masks in [0, 1] with soft edges, centred inside the brain.

    Parameters
    ----------
    brain : (B, 1, H, W) bool or float tensor
        Brain masks; shapes are centred on brain pixels and cut to the brain.
    max_shapes : int
        Each slice gets 1 to ``max_shapes`` shapes.
    min_radius, max_radius : float
        Shape radii as fractions of the slice side.
    softness : float
        Width of the soft edge as a fraction of the radius.
    centres : (B, 1, H, W) tensor, optional
        Non-negative weights of the pixels shapes are centred on (default: the brain).

    Returns
    -------
    (B, 1, H, W) float tensor in [0, 1]; every slice with brain has a non-empty mask.
    """
    batch, _, height, width = brain.shape
    device = brain.device
    brain = brain.float()
    ys = torch.linspace(-1, 1, height, device=device)[:, None]
    xs = torch.linspace(-1, 1, width, device=device)[None, :]
    masks = torch.zeros(batch, 1, height, width, device=device)
    # Centres: random brain pixels (inverse-CDF sampling over the flattened mask).
    weights = (brain if centres is None else centres.float() * brain).flatten(1) + 1e-6
    cumulative = torch.cumsum(weights / weights.sum(dim=1, keepdim=True), dim=1)
    count = 1 + (_rand(batch, generator, device) * max_shapes).long().clamp_max(max_shapes - 1)
    for shape in range(max_shapes):
        pick = torch.searchsorted(cumulative, _rand((batch, 1), generator, device)).clamp_max(
            height * width - 1
        )[:, 0]
        cy = (pick // width).float() / max(height - 1, 1) * 2 - 1
        cx = (pick % width).float() / max(width - 1, 1) * 2 - 1
        radius = (min_radius + (max_radius - min_radius) * _rand(batch, generator, device)) * 2
        aspect = 0.6 + 0.8 * _rand(batch, generator, device)
        angle = _rand(batch, generator, device) * math.pi
        # Wobble the outline with a coarse random field so shapes are not plain ellipses.
        wobble = F.interpolate(
            _rand((batch, 1, 4, 4), generator, device) * 2 - 1,
            size=(height, width),
            mode="bicubic",
            align_corners=False,
        )[:, 0]
        dy = ys[None] - cy[:, None, None]
        dx = xs[None] - cx[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        u = (cos * dx + sin * dy) / (radius * aspect)[:, None, None]
        v = (-sin * dx + cos * dy) / (radius / aspect)[:, None, None]
        distance = torch.sqrt(u**2 + v**2) * (1 + 0.3 * wobble)
        blob = ((1 - distance) / softness).clamp(0, 1)
        blob = blob * blob * (3 - 2 * blob)  # smoothstep: no gradient jump at the edge
        active = (shape < count).float()[:, None, None]
        masks[:, 0] = torch.maximum(masks[:, 0], blob * active)
    masks = masks * brain
    # A shape centred on a thin brain rim can vanish once cut to the brain: fall back to the
    # brain itself at low weight so no slice with brain goes uncorrupted.
    empty = masks.flatten(1).amax(dim=1) < 0.5
    has_brain = brain.flatten(1).amax(dim=1) > 0
    fallback = (empty & has_brain)[:, None, None, None]
    return torch.where(fallback, torch.maximum(masks, 0.5 * brain), masks)


def synthetic_anomalies(
    images: torch.Tensor,
    brain: torch.Tensor,
    severity: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    intensity_probability: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DISYRE corruption: blend foreign content into soft-shaped regions of each slice.

    Parameters
    ----------
    images : (B, 1, H, W) tensor in [0, 1], background 0
    brain : (B, 1, H, W) bool tensor
    severity : (B,) tensor in [0, 1]
        Interpolation factor towards the foreign content (0: unchanged, 1: replaced).
    intensity_probability : float
        Fraction of slices whose foreign content is a uniform intensity with mild texture
        (hyper- or hypointense blobs) rather than a patch of another slice.

    Returns
    -------
    corrupted : (B, 1, H, W) tensor in [0, 1]
    mask : (B, 1, H, W) tensor in [0, 1], the shape mask times the severity
    """
    batch, _, height, width = images.shape
    device = images.device
    if batch < 2:
        raise ValueError("synthetic anomalies need at least two slices per batch (foreign patches)")
    shapes = soft_shape_masks(brain, generator=generator)
    # Foreign patch: another slice of the batch, shifted and possibly flipped.
    shift = 1 + (_rand(batch, generator, device) * (batch - 1)).long().clamp_max(batch - 2)
    donor = images[(torch.arange(batch, device=device) + shift) % batch]
    offset = ((_rand((batch, 2), generator, device) * 2 - 1) * 0.3).float()
    theta = torch.zeros(batch, 2, 3, device=device)
    flip = torch.where(_rand(batch, generator, device) < 0.5, -1.0, 1.0)
    theta[:, 0, 0] = flip
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = offset
    grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)
    foreign = F.grid_sample(donor, grid, padding_mode="reflection", align_corners=False)
    level = _rand((batch, 1, 1, 1), generator, device)
    texture = F.interpolate(
        _rand((batch, 1, 8, 8), generator, device), size=(height, width), mode="bilinear"
    )
    flat = (level + 0.15 * (texture - 0.5)).clamp(0, 1)
    use_flat = (_rand(batch, generator, device) < intensity_probability)[:, None, None, None]
    foreign = torch.where(use_flat, flat, foreign)
    mask = shapes * severity.to(device).float()[:, None, None, None]
    corrupted = (1 - mask) * images + mask * foreign
    return corrupted.clamp(0, 1) * (brain > 0), mask


def small_anomalies(
    images: torch.Tensor,
    brain: torch.Tensor,
    severity: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    max_shapes: int = 8,
    min_radius: float = 0.008,
    max_radius: float = 0.04,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small hypo- or hyperintense blobs, mostly in bright (white-matter) tissue.

    Each slice gets 1 to ``max_shapes`` blobs of radius ``min_radius``-``max_radius`` of the
    slice side, all of one polarity per slice: darker (0.3-0.8 x the mean tissue level around
    them, like T1-hypointense MS plaques) or brighter (1.15-1.5 x the brightest tissue around
    them, like T1-bright lesions; at most 1). Centres favour pixels above the slice's median
    brain intensity.

    Parameters
    ----------
    images : (B, 1, H, W) tensor in [0, 1], background 0
    brain : (B, 1, H, W) bool tensor
    severity : (B,) tensor in [0, 1]
        Blend factor towards the blob intensity.

    Returns
    -------
    corrupted : (B, 1, H, W) tensor in [0, 1]
    mask : (B, 1, H, W) tensor in [0, 1], the blob mask times the severity
    """
    batch = images.shape[0]
    device = images.device
    inside = brain > 0
    median = torch.stack(
        [
            row[keep].median() if keep.any() else row.new_zeros(())
            for row, keep in zip(images.flatten(1), inside.flatten(1), strict=True)
        ]
    ).view(-1, 1, 1, 1)
    bright = (images > median) & inside
    shapes = soft_shape_masks(
        brain,
        generator=generator,
        max_shapes=max_shapes,
        min_radius=min_radius,
        max_radius=max_radius,
        softness=0.5,
        centres=1.0 + 9.0 * bright.float(),
    )
    darker = _rand(batch, generator, device) < 0.5
    factor = torch.where(
        darker,
        0.3 + 0.5 * _rand(batch, generator, device),
        1.15 + 0.35 * _rand(batch, generator, device),
    ).view(-1, 1, 1, 1)
    # The blob level, from the tissue around it (a blob keeps no anatomy inside): darker
    # blobs scale the neighbourhood's mean, brighter ones its maximum, so every pixel of a
    # blob moves the slice's one way.
    mean = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    peak = F.max_pool2d(images, 5, stride=1, padding=2)
    target = (torch.where(darker.view(-1, 1, 1, 1), mean, peak) * factor).clamp(0, 1)
    mask = shapes * severity.to(device).float()[:, None, None, None]
    corrupted = (1 - mask) * images + mask * target
    return corrupted.clamp(0, 1) * inside, mask


def random_patch_masks(
    batch: int,
    size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    max_ratio: float = 0.4,
    patch_sizes: tuple[int, ...] = (1, 2, 4, 8),
    device=None,
) -> torch.Tensor:
    """MAD-AD random masks: patches of random size, each masked with a random probability.

    Parameters
    ----------
    batch : int
    size : (h, w)
        Mask size (the latent grid).
    max_ratio : float
        The masking ratio of each sample is drawn from U[0, max_ratio].
    patch_sizes : tuple of int
        Patch heights and widths are drawn independently from these.

    Returns
    -------
    (batch, 1, h, w) float tensor of 0 and 1
    """
    height, width = size
    masks = torch.zeros(batch, 1, height, width, device=device)
    choices = torch.tensor(patch_sizes)
    for index in range(batch):
        ph, pw = (int(choices[i]) for i in (_rand(2, generator, "cpu") * len(choices)).long())
        ratio = float(_rand(1, generator, "cpu")) * max_ratio
        coarse = _rand((1, 1, -(-height // ph), -(-width // pw)), generator, device) < ratio
        full = coarse.float().repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)
        masks[index] = full[0, :, :height, :width]
    return masks

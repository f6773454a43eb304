"""AutoDDPM: mask, stitch and re-sample (Bercea et al., ICML workshop / 2023).

1. **Mask**: restore the scan from t = 200 with the DDPM (AnoDDPM) and score each pixel by the
   likelihood map C = normalised residual x perceptual distance, where the residual is divided
   by its 95th percentile in the slice and clipped to [0, 1]. Binarise C (by default above its
   95th percentile in the slice: the paper favours recall), dilate with a 3 x 3 square.
2. **Stitch**: keep the input outside the mask and the first restoration inside it.
3. **Re-sample**: noise the stitched image to t = 50 and denoise it RePaint-style (Lugmayr et
   al. 2022): after each reverse step the region outside the mask is replaced by the input
   noised to the same level, and each step is repeated ``resample_steps`` times, jumping back
   up one step with fresh noise in between, so the in-painted region harmonises with its
   surroundings.

Anomaly map = |x - x_inpainted| x C, which is 0 outside the mask (the authors' code,
ci-ber/autoDDPM ``get_autoDDPM_anomaly``). The perceptual term is computed by the model's own
encoder (:mod:`napari_uad.methods.perceptual`); nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch

from ..diffusion.scheduler import step_pairs
from .anoddpm import AnoDDPM
from .filters import grey_dilation2d, median_filter2d, per_image_quantile
from .perceptual import perceptual_distance


class AutoDDPM(AnoDDPM):
    """Mask, stitch and re-sample with one DDPM; anomaly = in-painting residual x likelihood.

    Parameters (``restore(**params)``)
    ----------------------------------
    noise : {'gaussian', 'simplex'} or None
        None uses the model's training noise (the paper uses Gaussian noise).
    noise_level : int
        Timestep of the first, masking restoration (paper: 200).
    steps : int
        Reverse steps of the masking restoration (paper: every step, ``noise_level + 1``).
    eta : float
        0: deterministic DDIM steps; 1: ancestral DDPM steps (the paper's).
    residual_percentile : float
        Percentile of the slice's residual the residual is divided by (paper: 95).
    mask_threshold : float or None
        Likelihood above which a pixel is masked; None: above the slice's
        ``mask_percentile`` (the authors' automatic setting).
    mask_percentile : float
        See ``mask_threshold`` (95).
    dilation : int
        Side of the square the binary mask is dilated with (paper: 3).
    inpaint_level : int
        Timestep the stitched image is noised to for re-sampling (paper: 50).
    inpaint_steps : int
        Reverse steps from ``inpaint_level`` to 0 (paper: every step, ``inpaint_level + 1``).
    resample_steps : int
        RePaint repetitions of each reverse step (paper: 5).
    smoothing : int
        Median filter side for the final map (0: none, the paper's).
    """

    name = "autoddpm"
    description = "AutoDDPM: likelihood mask, stitching, RePaint re-sampling from t=50"
    model_methods = ("anoddpm", "ddpm", "addm")
    default_model = "anoddpm-gaussian"
    defaults: dict[str, Any] = {
        "noise": None,
        "noise_level": 200,
        "steps": 10,
        "eta": 0.0,
        "residual_percentile": 95.0,
        "mask_threshold": None,
        "mask_percentile": 80.0,
        "dilation": 3,
        "inpaint_level": 50,
        "inpaint_steps": 5,
        "resample_steps": 5,
        "smoothing": 0,
    }

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if not 1 <= int(params["inpaint_level"]) < self.scheduler.num_train_timesteps:
            raise ValueError(
                f"inpaint_level must lie in [1, {self.scheduler.num_train_timesteps - 1}]"
            )
        for key in ("inpaint_steps", "resample_steps", "dilation"):
            if int(params[key]) < 1:
                raise ValueError(f"{key} must be >= 1, got {params[key]}")
        for key in ("residual_percentile", "mask_percentile"):
            if not 0 < float(params[key]) <= 100:
                raise ValueError(f"{key} must lie in (0, 100], got {params[key]}")

    def inpaint_timesteps(self, params: dict[str, Any]) -> list[int]:
        return self.scheduler.timesteps(
            int(params["inpaint_steps"]), start=int(params["inpaint_level"])
        )

    def evaluations_per_slice(self, params: dict[str, Any]) -> int:
        inpaint = self.inpaint_timesteps(params)
        # The last step (to the clean image) is not repeated: nothing is left to harmonise.
        return len(self.timesteps(params)) + (len(inpaint) - 1) * int(params["resample_steps"]) + 1

    def _restore_batch(self, images, masks, params, generators):
        kind = params["noise"]
        eta = float(params["eta"])
        # 1. Masking restoration (AnoDDPM) and likelihood map.
        reconstruction = yield from self._reconstruct(images, masks, params, generators)
        likelihood = likelihood_map(
            self.model,
            images,
            reconstruction,
            masks,
            residual_percentile=float(params["residual_percentile"]),
        )
        binary = binary_mask(
            likelihood,
            masks,
            threshold=params["mask_threshold"],
            percentile=float(params["mask_percentile"]),
            dilation=int(params["dilation"]),
        )
        # 2. Stitch, 3. re-sample.
        stitched = stitch(images, reconstruction, binary)
        inpainted = yield from self._resample(
            images, stitched, binary, params, kind, eta, generators
        )
        # Outside the mask the input is kept exactly (RePaint's known region).
        inpainted = torch.where(binary, inpainted.clamp(0, 1), images) * masks
        anomaly = (images - inpainted).abs() * likelihood * masks
        if int(params["smoothing"]) > 1:
            anomaly = median_filter2d(anomaly, int(params["smoothing"])) * masks
        return inpainted, anomaly

    def _resample(self, images, stitched, binary, params, kind, eta, generators):
        """RePaint from ``inpaint_level``: the input outside ``binary``, re-sampled inside."""
        timesteps = self.inpaint_timesteps(params)
        known = images * 2 - 1
        sample = self.scheduler.add_noise(
            stitched * 2 - 1, self._noise(kind, known, generators), timesteps[0]
        )
        for t, prev_t in step_pairs(timesteps):
            rounds = int(params["resample_steps"]) if prev_t >= 0 else 1
            for round_index in range(rounds):
                unknown, estimate = self._step(sample, t, prev_t, kind, eta, generators)
                if prev_t >= 0:
                    noised = self.scheduler.add_noise(
                        known, self._noise(kind, known, generators), prev_t
                    )
                else:
                    noised = known
                combined = torch.where(binary, unknown, noised)
                yield torch.where(binary, estimate, images)
                if round_index + 1 < rounds:
                    jump = self._noise(kind, combined, generators)
                    sample = self.scheduler.renoise(combined, prev_t, t, jump)
                else:
                    sample = combined
        return (sample + 1) / 2


def likelihood_map(network, images, reconstruction, masks, *, residual_percentile=95.0):
    """AutoDDPM's likelihood map: normalised residual x perceptual distance, in [0, 1].

    Parameters
    ----------
    network : UNet
        Supplies the perceptual features.
    images, reconstruction : (B, 1, H, W) tensors in [0, 1]
    masks : (B, 1, H, W) bool tensor
    residual_percentile : float
        The residual is divided by this percentile of itself inside the brain (per slice).
    """
    residual = (images - reconstruction).abs() * masks
    scale = per_image_quantile(residual, residual_percentile / 100, masks).clamp_min(1e-6)
    normalised = (residual / scale).clamp(0, 1)
    return normalised * perceptual_distance(network, reconstruction, images) * masks


def binary_mask(likelihood, masks, *, threshold=None, percentile=95.0, dilation=3):
    """Binarise the likelihood map (a threshold, or the slice's percentile) and dilate it.

    Returns
    -------
    (B, 1, H, W) bool tensor, inside the brain.
    """
    if threshold is None:
        cut = per_image_quantile(likelihood, percentile / 100, masks)
        binary = (likelihood > cut) & (likelihood > 0)
    else:
        binary = likelihood > float(threshold)
    binary = grey_dilation2d(binary.float(), dilation) > 0.5
    return binary & masks.bool()


def stitch(images, reconstruction, binary):
    """The input outside the mask, the pseudo-healthy reconstruction inside it."""
    return torch.where(binary, reconstruction, images)

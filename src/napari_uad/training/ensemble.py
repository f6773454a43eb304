"""Fitting an ensemble's fusion tables on healthy slices (:mod:`napari_uad.methods.ensemble`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..methods.ensemble import intensity_bins, normalised_map
from ..models.checkpoint import save_tensors, weights_sha256
from ..models.config import DiffusionConfig, ModelConfig

#: Percentile of a member's healthy scores, per intensity bin, taken as its spread there.
SPREAD_PERCENTILE = 95.0
#: Bins with fewer healthy pixels than this take the largest spread of the others.
MIN_BIN_PIXELS = 100


def fit_ensemble(
    members,
    slices: np.ndarray,
    masks: np.ndarray,
    *,
    bins: int = 10,
    smoothing: int = 9,
    percentile: float = 99.5,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Fit the fusion tables of an ensemble on healthy slices.

    Parameters
    ----------
    members : sequence of Method
        Loaded member methods (each with a ``smoothing`` parameter), run at their defaults.
    slices : (N, grid, grid) float ndarray in [0, 1]
        Healthy slices the members never trained on.
    masks : (N, grid, grid) bool ndarray
    bins : int
        Equal-width bins of pseudo-healthy intensity over [0, 1].
    smoothing : int
        The ensemble's median filter side (the scales are measured after it).
    percentile : float
        Healthy percentile each member's normalised map is divided by.

    Returns
    -------
    dict of str to tensor
        ``edges`` (bins + 1,), ``spread.<i>`` (bins,) per member, ``scale`` (members,).
    """
    masks = np.asarray(masks, dtype=bool)
    if not masks.any():
        raise ValueError("the calibration slices hold no brain")
    edges = torch.linspace(0.0, 1.0, bins + 1)
    tables: dict[str, torch.Tensor] = {"edges": edges}
    scales = []
    for index, member in enumerate(members):
        result = member.restore(slices, masks, seed=seed, smoothing=0)
        healthy = torch.from_numpy(result.healthy)
        anomaly = torch.from_numpy(result.anomaly)
        brain = torch.from_numpy(masks)
        where = intensity_bins(healthy, edges)
        spread = torch.full((bins,), float("nan"))
        for b in range(bins):
            chosen = anomaly[brain & (where == b)]
            if chosen.numel() >= MIN_BIN_PIXELS:
                spread[b] = torch.quantile(chosen.double(), SPREAD_PERCENTILE / 100).float()
        if torch.isnan(spread).all():
            raise ValueError("too few healthy brain pixels to fit an ensemble")
        spread = torch.where(torch.isnan(spread), spread.nan_to_num(0).max(), spread)
        spread = spread.clamp_min(1e-6)
        tables[f"spread.{index}"] = spread
        normalised = normalised_map(
            anomaly[:, None], healthy[:, None], brain[:, None], edges, spread, smoothing
        )[:, 0]
        scales.append(max(float(np.percentile(normalised[brain].numpy(), percentile)), 1e-6))
    tables["scale"] = torch.tensor(scales, dtype=torch.float32)
    return tables


def ensemble_config(name: str, members, *, grid: int, smoothing: int = 9, rule: str = "mean"):
    """The ``config.json`` of an ensemble.

    Parameters
    ----------
    name : str
    members : sequence of (method name, model folder)
        Each member model is recorded by its name where the model search path finds it there,
        else by its absolute folder, with the digest of its weights.
    grid : int
    smoothing, rule
        The ensemble's defaults.
    """
    listed = []
    for method, folder in members:
        folder = Path(folder).resolve()
        listed.append(
            {"method": method, "model": _model_reference(folder), "sha256": weights_sha256(folder)}
        )
    return ModelConfig(
        name=name,
        method="ensemble",
        grid=grid,
        diffusion=DiffusionConfig(noise="ensemble"),
        defaults={"smoothing": smoothing, "rule": rule},
        training={"members": listed},
    )


def _model_reference(folder: Path) -> str:
    from ..models.checkpoint import CheckpointError
    from ..models.registry import resolve_model

    try:
        found = resolve_model(folder.name).resolve() == folder
    except CheckpointError:
        found = False
    return folder.name if found else str(folder)


def save_ensemble(folder, config: ModelConfig, tables: dict[str, torch.Tensor]) -> Path:
    """Write an ensemble model folder (``config.json`` + the tables as ``model.safetensors``)."""
    return save_tensors(folder, tables, config)

"""Healthy-data calibration of the lesion threshold."""

from __future__ import annotations

from ..methods import get_method_class
from ..postprocess import healthy_threshold


def calibrate_threshold(
    model, config, slices, masks, *, percentile: float = 99.5, seed: int = 0, **params
) -> float:
    """Anomaly score at ``percentile`` over held-out healthy slices.

    Parameters
    ----------
    model, config : the trained network and its ModelConfig
    slices : (N, grid, grid) float ndarray in [0, 1]
    masks : (N, grid, grid) bool ndarray
    percentile : float
        99.5 means 0.5 % of healthy brain voxels would be flagged.
    **params
        Method parameters (defaults: the model's defaults).
    """
    method = get_method_class(config.method)(model, config)
    result = method.restore(slices, masks, seed=seed, **params)
    return round(healthy_threshold(result.anomaly, percentile=percentile, mask=masks), 6)

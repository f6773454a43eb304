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
    entry = calibrate_method(method, slices, masks, percentile=percentile, seed=seed, **params)
    return entry["threshold"]


def calibrate_method(method, slices, masks, *, percentile: float = 99.5, seed: int = 0, **params):
    """Healthy threshold of one method on a loaded model, as a calibration entry.

    Parameters
    ----------
    method : Method
        A method with its model (:meth:`~napari_uad.methods.base.Method.from_checkpoint`).
    slices : (N, grid, grid) float ndarray in [0, 1]
        Held-out healthy slices.
    masks : (N, grid, grid) bool ndarray
    percentile : float
    seed : int
    **params
        Method parameters (defaults: the method's defaults for this model).

    Returns
    -------
    dict
        ``{"threshold", "percentile", "slices", "parameters"}``, for :func:`store_calibration`.
    """
    result = method.restore(slices, masks, seed=seed, **params)
    threshold = healthy_threshold(result.anomaly, percentile=percentile, mask=masks)
    return {
        "threshold": round(float(threshold), 6),
        "percentile": percentile,
        "slices": int(len(slices)),
        "parameters": _plain(result.parameters),
    }


def store_calibration(config, method_name: str, entry: dict) -> None:
    """Put a calibration entry into a model config: at the top level for the method the model
    was trained for, under ``calibration["methods"][method_name]`` for the others (see
    :meth:`~napari_uad.methods.base.Method.calibrated_threshold`)."""
    if get_method_class(method_name).is_own_model(config):
        config.calibration.update(entry)
    else:
        config.calibration.setdefault("methods", {})[method_name] = entry


def _plain(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

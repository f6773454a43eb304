"""Voxel-wise detection metrics for anomaly maps: AUROC, average precision and Dice.

All functions take an anomaly map (higher = more anomalous) and a ground-truth lesion mask of the
same shape, optionally restricted to a brain mask. A voxel is predicted anomalous when its score
is greater than or equal to the threshold (the convention of scikit-learn's curves and of
:func:`napari_uad.postprocess.binarise`).

The curves are computed exactly over every distinct score from sorted counts (only the scores held
by lesion voxels can change precision, recall or the best Dice), so the results match
scikit-learn's ``roc_auc_score`` and ``average_precision_score``, ties included, in about 0.2 s on
ten million voxels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "average_precision", "best_dice", "dice", "evaluate"]


def _select(scores, truth, mask):
    scores = np.asarray(scores)
    truth = np.asarray(truth)
    if scores.shape != truth.shape:
        raise ValueError(
            f"scores {scores.shape} and truth {truth.shape} differ in shape: pass arrays on the "
            "same voxel grid"
        )
    if scores.size == 0:
        raise ValueError("scores is empty: pass a non-empty anomaly map")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    truth = truth != 0
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != scores.shape:
            raise ValueError(
                f"mask {mask.shape} and scores {scores.shape} differ in shape: pass a brain mask "
                "on the same voxel grid"
            )
        mask = mask != 0
        if not mask.any():
            raise ValueError("mask is empty: pass a brain mask with at least one voxel set")
        scores = scores[mask]
        truth = truth[mask]
    else:
        scores = scores.ravel()
        truth = truth.ravel()
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: replace them (e.g. np.nan_to_num) before evaluating")
    return scores, truth


def _require_both_classes(truth):
    n_pos = int(np.count_nonzero(truth))
    if n_pos == 0:
        raise ValueError(
            "truth has no positive voxels inside the mask: AUROC/AP need at least one lesion voxel"
        )
    if n_pos == truth.size:
        raise ValueError(
            "truth has no negative voxels inside the mask: AUROC/AP need at least one healthy voxel"
        )


def _curve(scores, truth):
    """Counts at each distinct score held by a lesion voxel, the only thresholds that matter.

    Returns the distinct positive scores ``values`` (ascending), the number of positives at each
    (``n_pos_at``), the number of positives below each (``n_pos_below``), the number of voxels
    below each (``n_below``) and at each (``n_at``), and the totals ``n_pos`` and ``n``.
    """
    ordered = np.sort(scores)
    positives = np.sort(scores[truth])
    first = np.flatnonzero(np.r_[True, positives[1:] != positives[:-1]])
    values = positives[first]
    n_pos_at = np.diff(np.r_[first, positives.size])
    n_below = np.searchsorted(ordered, values, side="left")
    n_at = np.searchsorted(ordered, values, side="right") - n_below
    return {
        "values": values,
        "n_pos_at": n_pos_at,
        "n_pos_below": first,
        "n_below": n_below,
        "n_at": n_at,
        "n_pos": positives.size,
        "n": ordered.size,
    }


def _auroc_from_curve(c):
    n_neg = c["n"] - c["n_pos"]
    neg_below = c["n_below"] - c["n_pos_below"]
    neg_at = c["n_at"] - c["n_pos_at"]
    wins = np.sum(c["n_pos_at"] * (neg_below + 0.5 * neg_at))
    return float(wins / (float(c["n_pos"]) * float(n_neg)))


def _ap_from_curve(c):
    true_pos = c["n_pos"] - c["n_pos_below"]
    predicted = c["n"] - c["n_below"]
    return float(np.sum(c["n_pos_at"] * (true_pos / predicted)) / c["n_pos"])


def _best_dice_from_curve(c):
    true_pos = c["n_pos"] - c["n_pos_below"]
    predicted = c["n"] - c["n_below"]
    dices = (2.0 * true_pos / (predicted + c["n_pos"]))[::-1]
    best = int(np.argmax(dices))
    return float(dices[best]), float(c["values"][::-1][best])


def auroc(scores, truth, *, mask=None) -> float:
    """Area under the voxel-wise ROC curve.

    Parameters
    ----------
    scores : ndarray, any shape
        Anomaly map, higher = more anomalous.
    truth : ndarray, same shape as ``scores``
        Ground-truth lesion mask (non-zero = lesion).
    mask : ndarray of bool, same shape as ``scores``, optional
        Evaluate only the voxels where the mask is set (usually the brain mask).

    Returns
    -------
    float
        AUROC in [0, 1]; tied scores count half, exactly as ``sklearn.metrics.roc_auc_score``.

    Raises
    ------
    ValueError
        If the shapes differ, the scores contain NaN, or the truth inside the mask has no
        positive or no negative voxels.
    """
    scores, truth = _select(scores, truth, mask)
    _require_both_classes(truth)
    return _auroc_from_curve(_curve(scores, truth))


def average_precision(scores, truth, *, mask=None) -> float:
    """Voxel-wise average precision (area under the precision-recall curve, step-wise).

    Defined as in ``sklearn.metrics.average_precision_score``:
    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds, without interpolation.

    Parameters
    ----------
    scores : ndarray, any shape
        Anomaly map, higher = more anomalous.
    truth : ndarray, same shape as ``scores``
        Ground-truth lesion mask (non-zero = lesion).
    mask : ndarray of bool, same shape as ``scores``, optional
        Evaluate only the voxels where the mask is set.

    Returns
    -------
    float
        Average precision in [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, the scores contain NaN, or the truth inside the mask has no
        positive or no negative voxels.
    """
    scores, truth = _select(scores, truth, mask)
    _require_both_classes(truth)
    return _ap_from_curve(_curve(scores, truth))


def dice(prediction, truth) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two binary masks.

    Parameters
    ----------
    prediction, truth : ndarray, same shape
        Binary masks (non-zero = set).

    Returns
    -------
    float
        Dice in [0, 1]; 1.0 when both masks are empty.
    """
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(
            f"prediction {prediction.shape} and truth {truth.shape} differ in shape: pass masks "
            "on the same voxel grid"
        )
    prediction = prediction != 0
    truth = truth != 0
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(prediction & truth)) / total


def best_dice(scores, truth, *, mask=None, n_thresholds=None) -> tuple[float, float]:
    """Best Dice over all thresholds of an anomaly map, and the threshold reaching it.

    Parameters
    ----------
    scores : ndarray, any shape
        Anomaly map, higher = more anomalous.
    truth : ndarray, same shape as ``scores``
        Ground-truth lesion mask (non-zero = lesion).
    mask : ndarray of bool, same shape as ``scores``, optional
        Evaluate only the voxels where the mask is set.
    n_thresholds : int, optional
        By default every distinct score is tried (exact). With an integer, only that many
        thresholds evenly spaced between the lowest and highest score are tried (an
        approximation that lower-bounds the exact value).

    Returns
    -------
    dice : float
        The best Dice of ``scores >= threshold`` against ``truth``.
    threshold : float
        The highest threshold reaching it. When the truth is empty the best Dice is 1.0 (empty
        prediction) and the threshold is just above the highest score.
    """
    scores, truth = _select(scores, truth, mask)
    n_pos = int(np.count_nonzero(truth))
    if n_pos == 0:
        return 1.0, float(np.nextafter(scores.max(), np.inf))
    if n_thresholds is None:
        return _best_dice_from_curve(_curve(scores, truth))
    n_thresholds = int(n_thresholds)
    if n_thresholds < 2:
        raise ValueError(f"n_thresholds must be at least 2, got {n_thresholds}")
    low, high = float(scores.min()), float(scores.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("scores contain infinite values: use n_thresholds=None for exact search")
    edges = np.linspace(low, high, n_thresholds)[::-1].astype(scores.dtype)
    predicted = scores.size - np.searchsorted(np.sort(scores), edges, side="left")
    true_pos = n_pos - np.searchsorted(np.sort(scores[truth]), edges, side="left")
    dices = 2.0 * true_pos / (predicted + n_pos)
    best = int(np.argmax(dices))
    return float(dices[best]), float(edges[best])


def evaluate(scores, truth, *, mask=None, threshold=None) -> dict:
    """All detection metrics of an anomaly map in one pass.

    Parameters
    ----------
    scores : ndarray, any shape
        Anomaly map, higher = more anomalous.
    truth : ndarray, same shape as ``scores``
        Ground-truth lesion mask (non-zero = lesion).
    mask : ndarray of bool, same shape as ``scores``, optional
        Evaluate only the voxels where the mask is set.
    threshold : float, optional
        Also report the Dice of ``scores >= threshold`` (inside the mask).

    Returns
    -------
    dict
        ``{"auroc", "ap", "best_dice", "best_threshold"}`` as floats, plus
        ``"dice_at_threshold"`` when ``threshold`` is given.

    Raises
    ------
    ValueError
        As :func:`auroc`: the truth inside the mask needs positive and negative voxels.
    """
    scores, truth = _select(scores, truth, mask)
    _require_both_classes(truth)
    curve = _curve(scores, truth)
    best, best_threshold = _best_dice_from_curve(curve)
    result = {
        "auroc": _auroc_from_curve(curve),
        "ap": _ap_from_curve(curve),
        "best_dice": best,
        "best_threshold": best_threshold,
    }
    if threshold is not None:
        result["dice_at_threshold"] = dice(scores >= float(threshold), truth)
    return result

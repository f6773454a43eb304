"""From anomaly maps to lesion masks and lesion statistics.

Filters work per axial slice (axes 0 and 1 of a 3-D array, the slice axis last), like the 2-D
models that produce the maps. Connected components are found in full connectivity (8 neighbours
in 2-D, 26 in 3-D), so voxels touching by an edge or a corner belong to one lesion. A voxel is
anomalous when its score is greater than or equal to the threshold.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io.atomic import atomic_write

__all__ = [
    "Lesion",
    "binarise",
    "erode_mask",
    "healthy_threshold",
    "label_lesions",
    "lesion_table",
    "lesions_to_csv",
    "median_filter",
    "min_voxels",
    "remove_small_components",
    "threshold_lesions",
]


def _check_2d_or_3d(array, name):
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (X, Y) or 3-D (X, Y, Z), got shape {array.shape}")


def _in_plane(size, ndim):
    return (size, size) if ndim == 2 else (size, size, 1)


def _full_connectivity(ndim):
    return ndimage.generate_binary_structure(ndim, ndim)


def median_filter(anomaly, *, size=3):
    """Median-filter an anomaly map in-plane, slice by slice.

    Parameters
    ----------
    anomaly : (X, Y) or (X, Y, Z) ndarray
        Anomaly map. A 3-D array is filtered per axial slice (a ``size x size`` window over
        axes 0 and 1), never across slices.
    size : int
        Window width in voxels (odd numbers keep the map centred); 1 returns a copy.

    Returns
    -------
    ndarray, same shape and dtype as ``anomaly``
    """
    anomaly = np.asarray(anomaly)
    _check_2d_or_3d(anomaly, "anomaly")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of voxels, got {size}")
    if size == 1:
        return anomaly.copy()
    return ndimage.median_filter(anomaly, size=_in_plane(size, anomaly.ndim), mode="nearest")


def erode_mask(mask, *, iterations=1):
    """Erode a brain mask in-plane, slice by slice, with a 4-neighbour cross.

    Parameters
    ----------
    mask : (X, Y) or (X, Y, Z) ndarray
        Binary mask (non-zero = set). Voxels on the array border count as outside.
    iterations : int
        Number of one-voxel erosions; 0 returns a copy.

    Returns
    -------
    ndarray of bool, same shape as ``mask``
    """
    mask = np.asarray(mask) != 0
    _check_2d_or_3d(mask, "mask")
    iterations = int(iterations)
    if iterations < 0:
        raise ValueError(f"iterations must be 0 or more, got {iterations}")
    if iterations == 0:
        return mask.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    if mask.ndim == 3:
        cross = cross[:, :, None]
    return ndimage.binary_erosion(mask, structure=cross, iterations=iterations)


def label_lesions(binary):
    """Label the connected components of a binary mask, largest first.

    Parameters
    ----------
    binary : ndarray, any number of dimensions
        Binary mask (non-zero = set).

    Returns
    -------
    labels : ndarray of int32, same shape as ``binary``
        0 for background, 1 for the largest component, 2 for the next, ... (ties keep the
        order of first appearance). The labels match those of :func:`lesion_table`.
    n : int
        Number of components.
    """
    binary = np.asarray(binary) != 0
    labels, n = ndimage.label(binary, structure=_full_connectivity(binary.ndim))
    if n == 0:
        return labels.astype(np.int32), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[order + 1] = np.arange(1, n + 1, dtype=np.int32)
    return remap[labels], int(n)


def remove_small_components(binary, *, min_size, spacing=None):
    """Remove connected components smaller than a minimum size.

    Parameters
    ----------
    binary : ndarray, any number of dimensions
        Binary mask (non-zero = set). Components use full connectivity (26 neighbours in 3-D).
    min_size : float
        Components with fewer voxels than ``min_size`` are removed. When ``spacing`` is given,
        ``min_size`` is a volume in mm³ instead and components with a smaller volume are removed.
    spacing : sequence of float, optional
        Voxel size in mm along each axis (length ``binary.ndim``).

    Returns
    -------
    ndarray of bool, same shape as ``binary``
    """
    binary = np.asarray(binary) != 0
    if min_size < 0:
        raise ValueError(f"min_size must be 0 or more, got {min_size}")
    threshold = float(min_size)
    if spacing is not None:
        threshold /= _voxel_volume_mm3(spacing, binary.ndim)
    if threshold <= 1:
        return binary.copy()
    labels, n = ndimage.label(binary, structure=_full_connectivity(binary.ndim))
    if n == 0:
        return binary.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= threshold
    keep[0] = False
    return keep[labels]


def healthy_threshold(scores, *, percentile=99.5, mask=None) -> float:
    """Threshold from anomaly maps of healthy scans: a high percentile of their scores.

    Parameters
    ----------
    scores : ndarray, any shape
        Anomaly maps of healthy scans (one map or a stack of them).
    percentile : float
        Percentile in [0, 100]; with 99.5, half a percent of healthy voxels lie at or above
        the threshold.
    mask : ndarray of bool, same shape as ``scores``, optional
        Use only these voxels (pass the brain masks: the zeros outside the brain would
        otherwise lower the threshold).

    Returns
    -------
    float
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != scores.shape:
            raise ValueError(
                f"mask {mask.shape} and scores {scores.shape} differ in shape: pass masks on the "
                "same voxel grid"
            )
        scores = scores[mask != 0]
    if scores.size == 0:
        raise ValueError("no scores to take a percentile of: pass a non-empty map and mask")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity: clean the anomaly maps first")
    return float(np.percentile(scores, percentile))


def binarise(anomaly, threshold, *, brain_mask=None, min_size=0):
    """Threshold an anomaly map into a lesion mask.

    Parameters
    ----------
    anomaly : ndarray, any shape
        Anomaly map.
    threshold : float
        Voxels with ``anomaly >= threshold`` are lesion.
    brain_mask : ndarray, same shape as ``anomaly``, optional
        Keep only lesion voxels inside the brain.
    min_size : int
        Remove components with fewer voxels than this (full connectivity).

    Returns
    -------
    ndarray of uint8, same shape as ``anomaly``
        1 for lesion, 0 elsewhere.
    """
    anomaly = np.asarray(anomaly)
    binary = anomaly >= float(threshold)
    if brain_mask is not None:
        brain_mask = np.asarray(brain_mask)
        if brain_mask.shape != anomaly.shape:
            raise ValueError(
                f"brain_mask {brain_mask.shape} and anomaly {anomaly.shape} differ in shape: "
                "pass a mask on the same voxel grid"
            )
        binary &= brain_mask != 0
    if min_size > 0:
        binary = remove_small_components(binary, min_size=min_size)
    return binary.astype(np.uint8)


@dataclass(frozen=True)
class Lesion:
    """One connected lesion of a lesion mask.

    ``centroid_voxel`` is in voxel coordinates (one float per array axis); ``volume_ml`` uses
    1 mL = 1000 mm³.
    """

    label: int
    n_voxels: int
    volume_ml: float
    mean_score: float
    max_score: float
    centroid_voxel: tuple[float, ...]


def _voxel_volume_mm3(spacing, ndim):
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.size != ndim:
        raise ValueError(
            f"spacing has {spacing.size} values for a {ndim}-D array: give one voxel size in mm "
            "per axis"
        )
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError(f"spacing must be positive voxel sizes in mm, got {spacing.tolist()}")
    return float(np.prod(spacing))


def lesion_table(lesion_mask, anomaly, *, spacing, labels=None) -> list[Lesion]:
    """Statistics of each connected lesion.

    Parameters
    ----------
    lesion_mask : ndarray, 2-D or 3-D
        Binary lesion mask (non-zero = lesion); components use full connectivity.
    anomaly : ndarray, same shape as ``lesion_mask``
        Anomaly map the mean and maximum scores are read from.
    spacing : sequence of float
        Voxel size in mm along each axis (for a 2-D slice, its in-plane spacing).
    labels : ndarray of int, same shape as ``lesion_mask``, optional
        ``label_lesions(lesion_mask)[0]`` when the caller has it already (saves a labelling).

    Returns
    -------
    list of Lesion
        Sorted by volume, largest first, with labels 1..n in that order (the labels of
        :func:`label_lesions`). Empty when the mask is empty.
    """
    lesion_mask = np.asarray(lesion_mask)
    anomaly = np.asarray(anomaly, dtype=np.float64)
    if lesion_mask.shape != anomaly.shape:
        raise ValueError(
            f"lesion_mask {lesion_mask.shape} and anomaly {anomaly.shape} differ in shape: pass "
            "arrays on the same voxel grid"
        )
    voxel_ml = _voxel_volume_mm3(spacing, lesion_mask.ndim) / 1000.0
    if labels is None:
        labels, n = label_lesions(lesion_mask)
    else:
        labels = np.asarray(labels)
        n = int(labels.max(initial=0))
    if n == 0:
        return []
    flat = np.flatnonzero(labels)
    owner = labels.ravel()[flat]
    scores = anomaly.ravel()[flat]
    counts = np.bincount(owner, minlength=n + 1)[1:]
    sums = np.bincount(owner, weights=scores, minlength=n + 1)[1:]
    # Maxima over the lesion voxels only: ndimage.maximum would sort the whole volume.
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, owner, scores)
    maxima = maxima[1:]
    coords = np.unravel_index(flat, labels.shape)
    centroids = np.stack(
        [np.bincount(owner, weights=c, minlength=n + 1)[1:] / counts for c in coords], axis=1
    )
    return [
        Lesion(
            label=i + 1,
            n_voxels=int(counts[i]),
            volume_ml=float(counts[i] * voxel_ml),
            mean_score=float(sums[i] / counts[i]),
            max_score=float(maxima[i]),
            centroid_voxel=tuple(float(c) for c in centroids[i]),
        )
        for i in range(n)
    ]


def lesion_summary(lesions, *, brain_voxels: int | None = None) -> dict:
    """The provenance's ``lesions`` entry of a lesion table.

    Parameters
    ----------
    lesions : sequence of Lesion
    brain_voxels : int, optional
        Voxels of the brain that was scored; adds ``brain_flagged_percent``, the share of it
        flagged as lesion.

    Returns
    -------
    dict
        ``count``, ``total_volume_ml``, ``largest_volume_ml`` (0 without lesions) and, with
        ``brain_voxels``, ``brain_flagged_percent``.
    """
    summary = {
        "count": len(lesions),
        "total_volume_ml": round(float(sum(les.volume_ml for les in lesions)), 4),
        "largest_volume_ml": round(float(max((les.volume_ml for les in lesions), default=0)), 4),
    }
    if brain_voxels is not None:
        flagged = sum(les.n_voxels for les in lesions)
        summary["brain_flagged_percent"] = round(100.0 * flagged / max(int(brain_voxels), 1), 4)
    return summary


def min_voxels(min_volume_mm3: float, spacing) -> int:
    """The smallest whole number of voxels whose volume reaches ``min_volume_mm3``.

    Parameters
    ----------
    min_volume_mm3 : float
        Smallest lesion volume in mm³ (0: keep every lesion).
    spacing : sequence of float
        Voxel size in mm along each axis.

    Returns
    -------
    int
        0 when ``min_volume_mm3`` is 0.
    """
    min_volume_mm3 = float(min_volume_mm3)
    if not math.isfinite(min_volume_mm3) or min_volume_mm3 < 0:
        raise ValueError(f"the smallest lesion volume must be >= 0 mm³, got {min_volume_mm3}")
    if min_volume_mm3 == 0:
        return 0
    voxel = _voxel_volume_mm3(spacing, len(tuple(spacing)))
    # A small tolerance so 27 mm³ on 1 mm voxels is 27 voxels, not 28 by rounding error.
    return max(1, math.ceil(min_volume_mm3 / voxel - 1e-9))


def threshold_lesions(anomaly, threshold, *, spacing, min_size=0):
    """Threshold an anomaly map into labelled lesions and their table, with one labelling.

    The fast path for interactive tools that redo this on every change of threshold.

    Parameters
    ----------
    anomaly : ndarray, 2-D or 3-D
        Anomaly map (0 outside the brain).
    threshold : float
        Voxels with ``anomaly >= threshold`` are lesion.
    spacing : sequence of float
        Voxel size in mm along each axis of ``anomaly``.
    min_size : int
        Components with fewer voxels than this are dropped (full connectivity).

    Returns
    -------
    labels : ndarray of int32, same shape as ``anomaly``
        0 background, 1..n lesions, largest first (the labels of :func:`label_lesions`).
    lesions : list of Lesion
        One per label, in label order.
    """
    anomaly = np.asarray(anomaly)
    labels, n = label_lesions(anomaly >= float(threshold))
    if n and min_size > 1:
        # Labels run largest first, so the components to keep are labels 1..kept.
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        kept = int(np.count_nonzero(sizes >= min_size))
        if kept < n:
            labels[labels > kept] = 0
    return labels, lesion_table(labels, anomaly, spacing=spacing, labels=labels)


def lesions_to_csv(
    lesions,
    path,
    *,
    affine=None,
    threshold: float | None = None,
    method: str | None = None,
    model: str | None = None,
    delimiter: str = ",",
) -> Path:
    """Write a lesion table (CSV, or TSV with ``delimiter="\t"``), atomically.

    Columns: ``label, n_voxels, volume_ml, volume_mm3, mean_score, max_score``, one
    ``centroid_<axis>`` column per axis (``i, j, k`` voxel indices); with ``affine`` the
    centroid in world coordinates (``centroid_x_mm, centroid_y_mm, centroid_z_mm``, the scanner
    coordinates the affine maps voxels to); and ``threshold``, ``method``, ``model`` when given
    (the same value on every row, so each row stands alone in a pooled table).

    Parameters
    ----------
    lesions : sequence of Lesion
        As returned by :func:`lesion_table`.
    path : str or Path
        Destination; its folder must exist. An existing file is replaced only once the new
        one is complete.
    affine : (4, 4) array, optional
        Voxel -> world (mm) affine of the grid the centroids are on (a NIfTI's affine).
    threshold, method, model : optional
        How the lesions were found.
    delimiter : str
        ``","`` (CSV) or ``"\t"`` (TSV).

    Returns
    -------
    Path
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"folder {path.parent} does not exist: create it or choose another path")
    n_axes = len(lesions[0].centroid_voxel) if lesions else 3
    axes = "ijk"[:n_axes] if n_axes <= 3 else [str(a) for a in range(n_axes)]
    header = ["label", "n_voxels", "volume_ml", "volume_mm3", "mean_score", "max_score"]
    header += [f"centroid_{a}" for a in axes]
    world = None
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or n_axes not in (2, 3):
            raise ValueError("affine must be a 4 x 4 matrix for 2-D or 3-D lesion centroids")
        header += ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
        points = np.zeros((len(lesions), 4))
        points[:, 3] = 1.0
        for row, lesion in enumerate(lesions):
            points[row, :n_axes] = lesion.centroid_voxel
        world = points @ affine.T
    extra = {"threshold": threshold, "method": method, "model": model}
    extra = {k: v for k, v in extra.items() if v is not None}
    header += list(extra)
    rows = []
    for row, lesion in enumerate(lesions):
        cells = [
            lesion.label,
            lesion.n_voxels,
            f"{lesion.volume_ml:.6g}",
            f"{lesion.volume_ml * 1000.0:.6g}",
            f"{lesion.mean_score:.6g}",
            f"{lesion.max_score:.6g}",
            *(f"{c:.2f}" for c in lesion.centroid_voxel),
        ]
        if world is not None:
            cells += [f"{c:.2f}" for c in world[row, :3]]
        cells += [f"{v:.6g}" if isinstance(v, float) else v for v in extra.values()]
        rows.append(cells)

    def write(temp):
        with open(temp, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)
    return path

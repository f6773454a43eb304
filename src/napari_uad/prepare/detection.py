"""Detection on a prepared scan, with every output mapped back onto the input's grid."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace

import numpy as np

from ..io.scan import Scan
from .core import PreparedScan, PrepareOptions, prepare_scan


def iter_detect_prepared(
    scan: Scan,
    *,
    prepared: PreparedScan | None = None,
    options: PrepareOptions | None = None,
    should_stop=None,
    **detect_args,
) -> Generator:
    """:func:`napari_uad.pipeline.iter_detect` on the prepared scan, results on the input grid.

    The scan is prepared with `options` (unless `prepared` is given), the method runs on the
    prepared brain with its brain mask, and the maps come back onto the input's grid by linear
    interpolation (the masks by interpolation and a 0.5 threshold); the lesion mask and table
    are then recomputed there, so lesion volumes are measured on the input's voxels.

    Parameters
    ----------
    scan : Scan
        The raw input.
    prepared : PreparedScan, optional
        A preparation of `scan` made earlier (:func:`~napari_uad.prepare.prepare_scan`).
    options : PrepareOptions, optional
        How to prepare it when `prepared` is None.
    should_stop : callable, optional
        Cooperative cancellation, for the preparation and the method.
    **detect_args
        Keyword arguments of :func:`~napari_uad.pipeline.iter_detect` (not ``brain_mask``:
        the preparation's is used).

    Returns
    -------
    Detection
        On the input's grid, with ``provenance["prepare"]`` recording the preparation.
    """
    from ..pipeline import iter_detect
    from ..postprocess import binarise, lesion_summary, lesion_table, min_voxels

    if prepared is None:
        prepared = prepare_scan(scan, options, should_stop=should_stop)
    result = yield from iter_detect(
        prepared.scan, brain_mask=prepared.brain_mask, should_stop=should_stop, **detect_args
    )
    # The smallest lesion again on the input's voxels (the volume, not the prepared voxels).
    min_size = max(
        int(detect_args.get("min_size", 0)),
        min_voxels(detect_args.get("min_volume_mm3", 0.0), scan.spacing),
    )
    scored = prepared.to_input(result.brain_mask)
    brain = prepared.brain_mask_input
    anomaly = np.clip(prepared.to_input(result.anomaly), 0, None) * scored
    healthy = prepared.to_input(result.healthy) * brain
    uncertainty = None
    if result.uncertainty is not None:
        uncertainty = (np.clip(prepared.to_input(result.uncertainty), 0, None) * scored).astype(
            np.float32
        )
    lesion_mask = binarise(anomaly, result.threshold, brain_mask=scored, min_size=min_size)
    lesions = lesion_table(lesion_mask, anomaly, spacing=scan.spacing)
    provenance = dict(result.provenance)
    provenance["prepare"] = prepared.provenance()
    provenance["parameters"] = {
        **provenance.get("parameters", {}),
        "brain_mask": "prepare",
        "min_size": min_size,
    }
    provenance["lesions"] = lesion_summary(lesions, brain_voxels=int(np.count_nonzero(scored)))
    return replace(
        result,
        healthy=healthy.astype(np.float32),
        anomaly=anomaly.astype(np.float32),
        lesion_mask=lesion_mask.astype(np.uint8),
        brain_mask=scored,
        provenance=provenance,
        lesions=lesions,
        uncertainty=uncertainty,
    )


def detect_prepared(scan: Scan, *, progress=None, **kwargs):
    """:func:`iter_detect_prepared` run to its end (``progress`` gets every update).

    Examples
    --------
    >>> from napari_uad.io import read_scan
    >>> from napari_uad.prepare import detect_prepared
    >>> result = detect_prepared(read_scan("raw_T1w.nii.gz"), method="disyre")  # doctest: +SKIP
    >>> result.anomaly.shape == result.lesion_mask.shape  # the raw scan's grid  # doctest: +SKIP
    """
    from ..progress import run_to_completion

    return run_to_completion(iter_detect_prepared(scan, **kwargs), progress)

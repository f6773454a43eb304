"""A prepared scan as a case for the napari widgets, on the input's own grid."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..io.scan import Scan
from .core import PreparedScan, PrepareOptions, prepare_scan

#: The napari default: the prepared brain is cut out of the scan's own voxels (no alignment,
#: no resampling), so it lies exactly on the raw scan's grid, interpolated nowhere, and every
#: layer computed on it overlays the raw scan. (An aligned preparation would be interpolated
#: twice on its way back to the raw grid, and back there its tilt would return anyway.)
NAPARI_OPTIONS = PrepareOptions(align="none", resolution=None)


def prepared_case(
    scan: Scan, options: PrepareOptions | None = None, *, progress=None, should_stop=None
):
    """Prepare a scan and return it as a case on the input's grid, ready to show and detect.

    The prepared brain (bias-corrected, 0 outside the brain) is mapped back onto the input's
    voxels, so its layers and every result computed on it overlay the raw scan.

    Parameters
    ----------
    scan : Scan
        The raw scan (its ``source`` names the case: ``<stem>_prepared``).
    options : PrepareOptions, optional
        :data:`NAPARI_OPTIONS` by default.
    progress : callable, optional
        ``progress(done, total, step_name)``, see :func:`~napari_uad.prepare.prepare_scan`.
    should_stop : callable, optional
        Cooperative cancellation.

    Returns
    -------
    case : LoadedCase
    prepared : PreparedScan
    """
    from ..cases import LoadedCase, ScanInfo, axis_codes, scan_stem
    from ..preprocess import slices_with_brain, to_canonical

    prepared: PreparedScan = prepare_scan(
        scan, options or NAPARI_OPTIONS, progress=progress, should_stop=should_stop
    )
    brain = prepared.brain_mask_input
    data = np.where(brain, np.clip(prepared.to_input(prepared.scan.data), 0, None), 0)
    stem = f"{scan_stem(scan.source)}_prepared" if scan.source else "prepared"
    source = scan.source.with_name(f"{stem}.nii.gz") if scan.source else None
    image = replace(scan, data=data.astype(np.float32), source=source)
    voxel_ml = float(np.prod(scan.spacing)) / 1000.0
    info = ScanInfo(
        name=stem,
        format="prepared",
        shape=tuple(int(s) for s in scan.shape),
        voxel_size=tuple(float(v) for v in scan.spacing),
        orientation="".join(axis_codes(scan.affine)),
        intensity_range=(float(data.min()), float(data.max())),
        dtype="float32",
        brain_mask=f"prepare ({prepared.options.skull_strip})",
        brain_volume_ml=float(brain.sum()) * voxel_ml,
        truth=False,
    )
    case = LoadedCase(
        scan=image,
        brain_mask=brain,
        truth=None,
        info=info,
        brain_slices=slices_with_brain(to_canonical(brain, scan.affine)[0]),
    )
    return case, prepared

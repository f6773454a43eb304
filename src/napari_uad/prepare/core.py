"""From a scanner T1 (skull, neck, bias field, any tilt) to the skull-stripped brain the models
expect, with the transform back to the input's grid.

Steps, in order (each can be skipped, each is timed and recorded):

1. reorient to RAS+ (flips and permutations, no interpolation);
2. crop the field of view: the head, from its top down 180 mm (drops the neck);
3. resample to an isotropic grid (1 mm by default), Gaussian anti-aliasing where it is coarser;
4. N4 bias-field correction (SimpleITK) on the head;
5. skull stripping: BET (:mod:`.bet`, on a 2 mm copy), or HD-BET / SynthStrip when installed;
6. rigid or affine alignment to the MNI152 template the models were trained in (optional);
7. the brain cropped with a margin, 0 outside it.

Every output of a detection on the prepared scan is mapped back onto the input grid with
:meth:`PreparedScan.to_input`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from nibabel.orientations import ornt2axcodes
from scipy import ndimage as ndi

from ..io.errors import InputError
from ..io.scan import Scan
from ..preprocess import canonical_affine, to_canonical
from .align import ALIGNMENTS, align_to_template
from .bet import bet_mask
from .bias import n4_correct
from .fov import head_box, head_mask, largest_component, mask_box
from .resample import box_corners, box_grid, grid_spacing, resample
from .strip import SKULL_STRIPPERS, external_brain_mask

#: Brain extraction runs on this isotropic grid (mm): BET's surface has 2,562 vertices, about
#: 4 mm apart on a brain, so finer voxels add time, not accuracy.
BET_RESOLUTION_MM = 2.0
#: BET starts from the centre of the top 110 mm of the head: an adult brain is 120-140 mm
#: high under 5-10 mm of scalp and skull, so this centre lies inside the brain whatever neck
#: is left below (the whole field of view's centre sinks towards the skull base).
BET_CENTRE_TOP_MM = 110.0
#: Steps reported to ``progress``: crop, N4, skull stripping, alignment, the brain's grid.
STEP_COUNT = 5
#: Scans that cover less than this (mm) along an axis are slabs, not heads.
MIN_EXTENT_MM = 60.0


@dataclass
class PrepareOptions:
    """What :func:`prepare_scan` does.

    Attributes
    ----------
    crop : bool
        Crop to the head, 180 mm down from its top (drops the neck).
    resolution : float or None
        Isotropic voxel size of the prepared scan in mm; None keeps the input's voxels (no
        resampling unless `align` needs it, then the smallest input voxel size).
    bias_correction : bool
        N4 bias-field correction.
    skull_strip : {'bet', 'hd-bet', 'synthstrip', 'none'}
        Brain extraction; 'none' for scans that are already skull-stripped (the brain mask is
        then the non-zero voxels).
    align : {'none', 'rigid', 'affine'}
        Alignment to the models' template space (MNI152).
    bet_threshold : float
        BET's fractional intensity threshold (0.5; larger gives a smaller brain).
    margin_mm : float
        Margin kept around the brain.
    """

    crop: bool = True
    resolution: float | None = 1.0
    bias_correction: bool = True
    skull_strip: str = "bet"
    align: str = "rigid"
    bet_threshold: float = 0.5
    margin_mm: float = 6.0

    def __post_init__(self) -> None:
        if self.skull_strip not in SKULL_STRIPPERS:
            raise InputError(
                f"skull stripping must be one of {', '.join(SKULL_STRIPPERS)}, "
                f"got {self.skull_strip!r}"
            )
        if self.align not in ALIGNMENTS:
            raise InputError(
                f"alignment must be one of {', '.join(ALIGNMENTS)}, got {self.align!r}"
            )
        if self.resolution is not None and not 0.2 <= float(self.resolution) <= 5.0:
            raise InputError(f"resolution must be 0.2 to 5 mm, got {self.resolution}")
        if not 0.05 <= float(self.bet_threshold) <= 0.95:
            raise InputError(f"the BET threshold must be 0.05 to 0.95, got {self.bet_threshold}")
        if not 0.0 <= float(self.margin_mm) <= 50.0:
            raise InputError(f"the margin must be 0 to 50 mm, got {self.margin_mm}")


@dataclass
class PreparedScan:
    """A prepared scan and the way back to its input.

    Attributes
    ----------
    scan : Scan
        Skull-stripped, bias-corrected brain on the prepared grid (0 outside the brain).
    brain_mask : ndarray of bool
        Brain mask on the prepared grid.
    source : Scan
        The input scan.
    to_source_world : ndarray, shape (4, 4)
        Maps prepared world coordinates (mm) to the input's world coordinates (identity unless
        aligned: the prepared scan is then in template space).
    steps : list of dict
        What was done, with times (the JSON provenance's ``prepare`` entry).
    options : PrepareOptions
    """

    scan: Scan
    brain_mask: np.ndarray
    source: Scan
    to_source_world: np.ndarray
    steps: list[dict[str, Any]] = field(default_factory=list)
    options: PrepareOptions = field(default_factory=PrepareOptions)

    def to_input(self, volume: np.ndarray, *, order: int = 1) -> np.ndarray:
        """Map an array on the prepared grid onto the input scan's grid.

        Parameters
        ----------
        volume : ndarray
            Same shape as ``scan.data``.
        order : int
            1 (linear) for images and maps; 0 (nearest) for labels. Bool arrays are
            interpolated linearly and thresholded at 0.5.

        Returns
        -------
        ndarray, on the input's grid and orientation (0 outside the prepared field of view).
        """
        volume = np.asarray(volume)
        if volume.shape != self.scan.shape:
            raise InputError(
                f"expected an array of shape {self.scan.shape} (the prepared grid), "
                f"got {volume.shape}"
            )
        to_prepared = np.linalg.inv(self.to_source_world)
        is_bool = volume.dtype == np.bool_
        out = resample(
            volume.astype(np.float32) if is_bool else volume,
            self.scan.affine,
            self.source.shape[:3],
            self.source.affine,
            order=order,
            world_map=to_prepared,
            anti_alias=False,
        )
        return out >= 0.5 if is_bool else out

    @property
    def brain_mask_input(self) -> np.ndarray:
        """The brain mask on the input's grid (bool)."""
        return self.to_input(self.brain_mask)

    @property
    def seconds(self) -> float:
        """Time the preparation took, all steps together."""
        return float(sum(step.get("seconds", 0.0) for step in self.steps))

    def provenance(self) -> dict[str, Any]:
        """The record written in the JSON provenance."""
        return {
            "options": asdict(self.options),
            "steps": self.steps,
            "prepared_shape": list(self.scan.shape),
            "prepared_affine": np.round(self.scan.affine, 6).tolist(),
            "prepared_to_input_world": np.round(self.to_source_world, 6).tolist(),
            "brain_volume_ml": round(
                float(np.count_nonzero(self.brain_mask)) * float(np.prod(self.scan.spacing)) / 1e3,
                2,
            ),
        }


class _Steps:
    """Times and records the steps; checks for cancellation between them."""

    def __init__(self, progress, should_stop, total: int):
        self.records: list[dict[str, Any]] = []
        self.progress = progress
        self.should_stop = should_stop
        self.total = total
        self.done = 0
        self._start = 0.0
        self._name = ""

    def start(self, name: str) -> None:
        if self.should_stop is not None and self.should_stop():
            from ..progress import Cancelled

            raise Cancelled()
        if self.progress is not None:
            self.progress(self.done, self.total, name)
        self._name, self._start = name, time.perf_counter()

    def finish(self, **details) -> None:
        seconds = round(time.perf_counter() - self._start, 3)
        self.records.append({"step": self._name, "seconds": seconds, **details})
        self.done += 1

    def skip(self, name: str, reason: str) -> None:
        self.records.append({"step": name, "skipped": reason})


def check_preparable(scan: Scan) -> None:
    """Raise :class:`~napari_uad.io.InputError` unless the scan is a 3-D head (not a slab)."""
    data = np.asarray(scan.data)
    if data.ndim != 3 or min(data.shape) < 8:
        raise InputError(f"prepare needs a 3-D head scan, got shape {data.shape}")
    extent = np.array(data.shape) * np.array(scan.spacing)
    if extent.min() < MIN_EXTENT_MM:
        raise InputError(
            f"the scan covers only {extent.min():.0f} mm along one axis: prepare needs a whole "
            "head (a slab or a single slice cannot be skull-stripped); give --brain-mask instead"
        )


def prepare_scan(
    scan: Scan,
    options: PrepareOptions | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PreparedScan:
    """Prepare a raw T1 head for the models: crop, N4, skull strip, align, resample.

    Parameters
    ----------
    scan : Scan
        A 3-D T1-weighted scan, with or without skull.
    options : PrepareOptions, optional
        Steps and their settings (all on by default, rigid alignment).
    progress : callable, optional
        ``progress(done, total, step_name)`` before each step.
    should_stop : callable, optional
        Checked between steps and inside skull stripping; True raises
        :class:`~napari_uad.methods.base.Cancelled`.

    Returns
    -------
    PreparedScan

    Raises
    ------
    InputError
        Not a 3-D head (a 2-D image, a thin slab), constant, or the brain was not found.
    """
    options = options or PrepareOptions()
    check_preparable(scan)
    data = np.asarray(scan.data)
    data = np.where(np.isfinite(data), data, 0).astype(np.float32, copy=False)
    steps = _Steps(progress, should_stop, total=STEP_COUNT)

    steps.start("reorient and crop")
    data_ras, orientation = to_canonical(data, scan.affine)
    affine_ras = canonical_affine(scan.affine, data.shape)
    spacing_ras = grid_spacing(affine_ras)
    head = head_mask(data_ras)
    if options.crop:
        box = head_box(head, spacing_ras)
    else:
        box = tuple((0, n - 1) for n in data_ras.shape)
    resolution = float(options.resolution or spacing_ras.min())
    if options.resolution is None and options.align == "none":
        # keep the input's voxels: the working grid is the cropped RAS grid
        slices = tuple(slice(a, b + 1) for a, b in box)
        work_affine = affine_ras.copy()
        work_affine[:3, 3] = affine_ras[:3, :3] @ np.array([a for a, _ in box]) + affine_ras[:3, 3]
        work = data_ras[slices].copy()
        work_head = head[slices].copy()
    else:
        shape, work_affine = box_grid(box_corners(data_ras.shape, affine_ras, box), resolution)
        work = resample(data_ras, affine_ras, shape, work_affine)
        work_head = resample(head.astype(np.float32), affine_ras, shape, work_affine) >= 0.5
    work_spacing = grid_spacing(work_affine)
    steps.finish(
        orientation="".join(ornt2axcodes(orientation)),
        box=[list(b) for b in box],
        cropped=bool(options.crop),
        resolution_mm=[round(float(s), 4) for s in work_spacing],
        head_volume_ml=round(float(np.count_nonzero(head)) * float(np.prod(spacing_ras)) / 1e3, 1),
    )

    if options.bias_correction:
        steps.start("N4 bias correction")
        work, bias = n4_correct(np.clip(work, 0, None), work_head, work_spacing)
        inside = bias[work_head]
        steps.finish(field_range=[round(float(inside.min()), 3), round(float(inside.max()), 3)])
    else:
        steps.skip("N4 bias correction", "not asked")

    steps.start(f"skull stripping ({options.skull_strip})")
    brain = _brain_mask(work, work_affine, work_head, options, should_stop)
    steps.finish(
        brain_volume_ml=round(
            float(np.count_nonzero(brain)) * float(np.prod(work_spacing)) / 1e3, 1
        )
    )

    to_source = np.eye(4)
    if options.align != "none":
        steps.start(f"{options.align} alignment to MNI152")
        to_source = align_to_template(np.where(brain, work, 0), work_affine, kind=options.align)
        steps.finish(
            rotation_deg=round(_rotation_degrees(to_source), 2),
            scale=[round(float(s), 4) for s in np.linalg.svd(to_source[:3, :3])[1]],
        )
    else:
        steps.skip("alignment", "not asked")

    steps.start("resample the brain")
    corners = box_corners(brain.shape, work_affine, mask_box(brain))
    corners = (np.linalg.inv(to_source) @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    out_resolution = resolution if options.align != "none" else work_spacing
    if np.ndim(out_resolution) == 0:
        out_shape, out_affine = box_grid(corners, out_resolution, margin_mm=options.margin_mm)
        image = resample(work, work_affine, out_shape, out_affine, world_map=to_source)
        mask = resample(
            brain.astype(np.float32), work_affine, out_shape, out_affine, world_map=to_source
        )
        mask = _clean_mask(mask >= 0.5)
    else:  # no resampling: crop the working grid
        image, mask, out_affine = _crop_to_mask(work, brain, work_affine, options.margin_mm)
    image = np.where(mask, np.clip(image, 0, None), 0).astype(np.float32)
    steps.finish(shape=list(image.shape))
    prepared = Scan(data=image, affine=out_affine, header=None, source=None)
    return PreparedScan(
        scan=prepared,
        brain_mask=mask,
        source=scan,
        to_source_world=to_source,
        steps=steps.records,
        options=options,
    )


def _brain_mask(work, affine, head, options: PrepareOptions, should_stop) -> np.ndarray:
    if options.skull_strip == "none":
        mask = work > 0
        if not mask.any():
            raise InputError("the scan has no non-zero voxel: nothing to use as the brain")
        return _clean_mask(mask)
    if options.skull_strip != "bet":
        return _clean_mask(external_brain_mask(work, affine, options.skull_strip))
    spacing = grid_spacing(affine)
    bet_shape = tuple(
        max(8, int(round(n * s / BET_RESOLUTION_MM)))
        for n, s in zip(work.shape, spacing, strict=True)
    )
    bet_affine = affine.copy()
    bet_affine[:3, :3] = affine[:3, :3] / spacing * BET_RESOLUTION_MM
    bet_affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((BET_RESOLUTION_MM / spacing - 1) / 2)
    coarse = resample(np.where(head, work, 0), affine, bet_shape, bet_affine)
    from .bet import BetParameters

    coarse_mask = bet_mask(
        coarse,
        BET_RESOLUTION_MM,
        BetParameters(fractional_threshold=options.bet_threshold, centre_top_mm=BET_CENTRE_TOP_MM),
        should_stop=should_stop,
    )
    mask = resample(coarse_mask.astype(np.float32), bet_affine, work.shape, affine) >= 0.5
    return _clean_mask(mask & head)


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """The largest component with its holes filled."""
    mask = largest_component(mask, empty="no brain was found in the scan")
    return ndi.binary_fill_holes(mask)


def _crop_to_mask(image, mask, affine, margin_mm):
    box = mask_box(mask, grid_spacing(affine), margin_mm=margin_mm)
    region = tuple(slice(first, last + 1) for first, last in box)
    cropped = affine.copy()
    starts = np.array([first for first, _ in box], dtype=np.float64)
    cropped[:3, 3] = affine[:3, :3] @ starts + affine[:3, 3]
    return image[region].copy(), mask[region].copy(), cropped


def _rotation_degrees(matrix: np.ndarray) -> float:
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))

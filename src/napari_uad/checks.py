"""Checks that a scan is what the models were trained on: a skull-stripped T1 brain volume.

:func:`napari_uad.pipeline.iter_detect` runs them once per detection, after the brain mask is
known, so the command line, Python and napari all say the same thing:

- :func:`check_not_label_map` raises :class:`~napari_uad.io.InputError` for a label map or
  a mask passed as the scan (few distinct integer values, or piecewise constant integers).
- :func:`scan_warnings` (:func:`scan_evidence`, :class:`ScanEvidence`) gives one-line
  messages, issued by the pipeline as :class:`ScanWarning` and recorded in the provenance
  (``"warnings"``): skull and neck still around the brain (the models then restore them into
  hundreds of mL of false lesions) and a contrast unlike T1 (CSF brighter than white matter).
- :func:`trained_slices` is the training set's slice rule, which detection applies too.

No GUI code and no torch here: everything works on numpy arrays in RAS+ orientation (see
:mod:`napari_uad.preprocess`).

The thresholds below were set on, and the ranges in their comments measured on: 122 scans with
skull (:func:`napari_uad.data.head_phantom.make_head` around adult-size ``make_brain`` brains, 3
seeds x 1, 1.5, 2, 3 mm and 1.2 x 1.2 x 3 mm voxels x zero or noisy air x no bias or 0.3, whole
heads with neck and 24 mm slabs, and the MNI152 brain in a head), all warned; 103 skull-stripped
ones (those brains, as float and int16, and with the head's own brain mask given; the small
phantoms of the tests; the shipped 24-slice sample, estimated and given mask; the MNI152 brain
at 1 and 2 mm), none warned; 20 inverted brains, all given the contrast warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .io.errors import InputError

#: Training keeps the axial slices whose brain area is at least this fraction of the scan's
#: largest (``load_healthy_folder(min_brain_fraction=...)``); models whose config does not
#: store ``preprocessing.min_brain_fraction`` were trained with it.
TRAINED_MIN_BRAIN_FRACTION = 0.35

#: A brain mask above this volume holds more than a brain (adult brains are 1.0-1.8 L, the
#: MNI152 template's generous mask 1.9 L; a whole head is about 4 L, with the neck more).
HEAD_MIN_ML = 2500.0
#: Above this volume no mask is a head: the voxel sizes are wrong (units, a missing header).
IMPLAUSIBLE_ML = 20000.0
#: A mask above this volume is too big for most brains: with noisy air around it, a head.
BRAIN_MAX_ML = 2000.0
#: A mask taller than this (mm) that touches the bottom of the field of view goes down the
#: neck (a brain with its brainstem is at most about 160 mm tall).
NECK_MIN_HEIGHT_MM = 170.0
#: The outer shell of the mask: within this in-plane depth (mm, at least two voxels) of its
#: edge in each axial slice; a head has its scalp and fat there, a brain its cortex ...
SHELL_MM = 6.0
#: ... and the band below the shell, this much deeper (mm): a head's skull, a brain's cortex
#: and white matter.
BAND_MM = 8.0
#: Deeper than this (mm) is the mask's interior: the brain, with or without skull around it;
#: the rim is judged when the interior holds at least this fraction of the mask.
INTERIOR_MM = 20.0
INTERIOR_MIN_FRACTION = 0.1
#: A scalp rim: at least this fraction of the shell as bright as the interior's white matter
#: (its 75th percentile) -- fat (synthetic heads 0.17-0.53; skull-stripped brains <= 0.09) ...
RIM_MIN_BRIGHT = 0.12
#: ... around a dark skull: the band's median below this fraction of the shell's (heads
#: 0.27-0.88; skull-stripped brains, whose cortex is darker than the white matter under it,
#: 1.16-2.17).
RING_MAX_RATIO = 1.0
#: A face of the field of view is touched when the mask covers this fraction of it (the bottom
#: and the top: this fraction of the largest axial slice's brain area).
TOUCH_MIN_FRACTION = 0.05
#: Air is noisy (not skull-stripped) when fewer than this fraction of the voxels well outside
#: the mask hold one single value (skull-stripping leaves one, usually 0) ...
AIR_MAX_CONSTANT = 0.5
#: ... and they spread (10th to 90th percentile) over this fraction of the brain's range.
AIR_MIN_SPREAD = 0.01
#: T1: the median of the mask (less its edge voxels) lies high in its robust (1st-99th
#: percentile) intensity range, with bright white matter and a dark CSF tail (skull-stripped
#: T1 0.58-0.89; the interior of heads, their brain, 0.64-0.84); below this the contrast looks
#: inverted, T2-like (inverted phantoms 0.11-0.17).
CONTRAST_MIN_POSITION = 0.45

#: A volume of integers with at most this many distinct values is a label map or a mask ...
LABEL_MAX_VALUES = 64
#: ... as is one of integers where this fraction of neighbouring voxels (outside the zero
#: background) are equal: piecewise constant, unlike any scan (MNI T1: 0.1, atlases: > 0.8).
LABEL_MIN_EQUAL_NEIGHBOURS = 0.8


class ScanWarning(UserWarning):
    """The scan is unlike the models' training data (skull and neck, contrast): results are
    unreliable. The message is one line that says what to do."""


# --------------------------------------------------------------------------- label maps
def label_map_values(data: np.ndarray) -> int | None:
    """The number of distinct values when a volume looks like a label map or a mask, else None.

    A label map holds integers only, and either at most :data:`LABEL_MAX_VALUES` distinct
    values (at least 2: constant volumes are left to the preprocessing's own error) or is
    piecewise constant (neighbouring voxels outside the zero background equal in at least
    :data:`LABEL_MIN_EQUAL_NEIGHBOURS` of the cases). Real scans, even int16 ones, hold
    hundreds of values that change from voxel to voxel.

    Parameters
    ----------
    data : ndarray
        Intensities, any shape (2-D images are (H, W, 1)).

    Returns
    -------
    int or None
    """
    flat = np.asarray(data).ravel()
    if flat.size < 8 or not np.array_equal(flat, np.round(flat)):
        return None
    sample = flat[:: max(1, flat.size // 200_000)]
    if len(np.unique(sample)) <= LABEL_MAX_VALUES:
        count = len(np.unique(flat))
        if count <= LABEL_MAX_VALUES:
            return count if count >= 2 else None
    if is_piecewise_constant(np.asarray(data)):
        return len(np.unique(flat))
    return None


def is_piecewise_constant(data: np.ndarray) -> bool:
    """Whether most neighbouring foreground voxels hold equal values (a label map's regions)."""
    total = equal = 0
    for axis in range(data.ndim):
        if data.shape[axis] < 2:
            continue
        before = (slice(None),) * axis
        ahead, behind = data[before + (slice(1, None),)], data[before + (slice(None, -1),)]
        foreground = (ahead != 0) | (behind != 0)
        total += int(foreground.sum())
        equal += int(((ahead == behind) & foreground).sum())
    return total > 0 and equal >= LABEL_MIN_EQUAL_NEIGHBOURS * total


def check_not_label_map(data: np.ndarray) -> None:
    """Refuse a label map or a mask passed as the scan.

    Raises
    ------
    InputError
        ``"the scan looks like a label map or mask (33 integer values), not a T1 scan: give
        the scan itself"`` (see :func:`label_map_values`).
    """
    count = label_map_values(data)
    if count is not None:
        raise InputError(
            f"the scan looks like a label map or mask ({count} integer values), not a T1 scan: "
            "give the scan itself"
        )


# --------------------------------------------------------------------------- skull, contrast
@dataclass(frozen=True)
class ScanEvidence:
    """What a brain mask and the intensities in and around it say about the scan.

    Attributes
    ----------
    volume_ml : float
        Volume of the brain mask.
    height_mm : float
        Its extent along the inferior-superior axis.
    mask_given : bool
        The mask was given (True) or estimated from the scan (False).
    touches : tuple of str
        Faces of the field of view the mask touches: ``"bottom"`` (inferior: a neck, or a
        slab), ``"top"``, ``"sides"``.
    bright_rim : float or None
        Fraction of the mask's outer shell (:data:`SHELL_MM`, in-plane, in each axial slice) at
        least as bright as the interior's white matter (75th percentile deeper than
        :data:`INTERIOR_MM`): scalp fat, not cortex. None without such an interior (at least
        :data:`INTERIOR_MIN_FRACTION` of the mask).
    dark_ring : float or None
        Median of the band under the shell (:data:`BAND_MM` deeper) over the shell's: below 1
        for a dark skull under the scalp, above 1 for white matter under the cortex.
    noisy_air : bool or None
        The voxels well outside the mask are noisy air, not the single value skull-stripping
        leaves; None when there are too few to tell.
    contrast : float or None
        Where the median of the mask (eroded by a voxel in-plane) lies in the mask's 1st-99th
        percentile range: high for T1 (bright white matter), low when inverted (T2-like). None
        for a constant brain.
    interior_contrast : float or None
        The same for the median of the interior (None without one): a head's interior is its
        brain, so this judges the contrast of a mask that still holds the skull.
    """

    volume_ml: float
    height_mm: float
    mask_given: bool
    touches: tuple[str, ...]
    bright_rim: float | None
    dark_ring: float | None
    noisy_air: bool | None
    contrast: float | None
    interior_contrast: float | None = None

    @property
    def t1_like(self) -> bool:
        """The contrast is T1's (or cannot be judged)."""
        return self.contrast is None or self.contrast >= CONTRAST_MIN_POSITION

    @property
    def scalp(self) -> bool:
        """A T1 scalp in the mask's shell: a bright rim around a dark ring (the skull), around
        an interior of T1 contrast (an inverted brain has a bright rim of CSF)."""
        return bool(
            self.interior_contrast is not None
            and self.interior_contrast >= CONTRAST_MIN_POSITION
            and self.bright_rim is not None
            and self.bright_rim >= RIM_MIN_BRIGHT
            and self.dark_ring is not None
            and self.dark_ring < RING_MAX_RATIO
        )

    @property
    def neck(self) -> bool:
        """The mask runs down the neck: it touches the bottom of the field of view and is
        taller than a brain."""
        return "bottom" in self.touches and self.height_mm > NECK_MIN_HEIGHT_MM

    @property
    def skull(self) -> bool:
        """The decision: skull (or neck) is inside the mask.

        Any of: a mask above :data:`HEAD_MIN_ML`; a T1 scalp in its shell (:attr:`scalp`); or,
        for an estimated mask, noisy air around a mask that touches the field of view or
        exceeds :data:`BRAIN_MAX_ML`.
        """
        if self.volume_ml > HEAD_MIN_ML or self.scalp:
            return True
        return bool(
            not self.mask_given
            and self.noisy_air
            and (self.touches or self.volume_ml > BRAIN_MAX_ML)
        )

    @property
    def inverted(self) -> bool:
        """The contrast looks inverted, T2-like (CSF brighter than white matter)."""
        return not self.t1_like

    def skull_reasons(self) -> list[str]:
        """The evidence for skull and neck, in words."""
        kind = "brain mask" if self.mask_given else "estimated brain"
        reasons = [f"{kind} {self.volume_ml:,.0f} mL"]
        if self.neck:
            reasons.append(f"{self.height_mm:.0f} mm tall, touches the bottom of the field of view")
        if self.scalp:
            reasons.append("a bright scalp rim around a dark skull")
        if self.noisy_air and not self.mask_given:
            reasons.append("noisy air around it")
        return reasons

    def messages(self) -> list[str]:
        """One-line warnings: skull and neck first (the contrast is judged once the mask holds
        a brain only), else an inverted contrast; empty for a skull-stripped T1. A mask above
        :data:`IMPLAUSIBLE_ML` is about the voxel sizes instead."""
        if self.volume_ml > IMPLAUSIBLE_ML:
            return [
                f"this scan's brain mask measures {self.volume_ml:,.0f} mL "
                f"({self.height_mm:,.0f} mm tall), more than any head: check the voxel sizes "
                "in the file's header"
            ]
        if self.skull:
            what = "skull and neck" if self.neck else "skull"
            return [
                f"this scan looks like it still has {what} ({', '.join(self.skull_reasons())}): "
                "run 'napari-uad prepare' (or restore --prepare) or give a brain mask "
                "(--brain-mask)"
            ]
        if self.inverted:
            return [_contrast_message(self.contrast)]
        return []


def _contrast_message(position: float) -> str:
    return (
        "this scan's contrast is unlike T1 (the brain's interior is dark, with a bright tail "
        f"like CSF on T2; median at {100 * position:.0f} % of its intensity range): the models "
        "are trained on T1 scans, so expect false lesions; give a T1-weighted scan"
    )


def scan_evidence(
    data_ras: np.ndarray,
    mask_ras: np.ndarray,
    spacing: tuple[float, ...],
    *,
    mask_given: bool = False,
) -> ScanEvidence:
    """Measure the evidence for skull, neck and contrast of a scan and its brain mask.

    Parameters
    ----------
    data_ras : (X, Y, Z) ndarray
        Finite intensities in RAS+ orientation (axial slices along the last axis).
    mask_ras : (X, Y, Z) bool ndarray
        The brain mask, estimated or given.
    spacing : sequence of float
        Voxel sizes in mm of the RAS arrays.
    mask_given : bool
        Whether the mask was given.

    Returns
    -------
    ScanEvidence
    """
    data = np.asarray(data_ras, dtype=np.float32)
    mask = np.asarray(mask_ras, dtype=bool)
    spacing = tuple(float(s) for s in spacing[:3])
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    height = float(slices[-1] - slices[0] + 1) * spacing[2] if slices.size else 0.0
    depth = _inplane_depth(mask, spacing)
    interior = depth >= INTERIOR_MM
    if np.count_nonzero(interior) < max(100, INTERIOR_MIN_FRACTION * np.count_nonzero(mask)):
        interior = None  # a small brain, a thin slab seen edge-on, a 2-D slice: no rim to judge
    inside = data[mask]
    low, high = np.percentile(inside, [1, 99]) if inside.size else (0.0, 0.0)
    rim, ring = _shell(data, mask, depth, interior, spacing, low)
    return ScanEvidence(
        volume_ml=float(inside.size) * float(np.prod(spacing)) / 1000.0,
        height_mm=height,
        mask_given=bool(mask_given),
        touches=_touches(mask),
        bright_rim=rim,
        dark_ring=ring,
        noisy_air=_noisy_air(data, mask, high - low),
        contrast=_contrast(data, mask, low, high),
        interior_contrast=(
            None
            if interior is None or not high > low
            else float((np.median(data[interior]) - low) / (high - low))
        ),
    )


def _inplane_depth(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance in mm from each mask voxel to the mask's edge within its axial slice."""
    depth = np.zeros(mask.shape, dtype=np.float32)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        padded = np.pad(mask[:, :, k], 1)
        depth[:, :, k] = ndi.distance_transform_edt(padded, sampling=spacing[:2])[1:-1, 1:-1]
    return depth


def _touches(mask: np.ndarray) -> tuple[str, ...]:
    areas = mask.sum(axis=(0, 1))
    if areas.max(initial=0) == 0:
        return ()
    faces = []
    if mask.shape[2] > 1:
        if areas[0] >= TOUCH_MIN_FRACTION * areas.max():
            faces.append("bottom")
        if areas[-1] >= TOUCH_MIN_FRACTION * areas.max():
            faces.append("top")
    sides = (mask[0], mask[-1], mask[:, 0], mask[:, -1])
    if any(side.mean() >= TOUCH_MIN_FRACTION for side in sides):
        faces.append("sides")
    return tuple(faces)


def _shell(data, mask, depth, interior, spacing, low) -> tuple[float | None, float | None]:
    """Bright-rim fraction and dark-ring ratio of the mask's outer layers (see ScanEvidence)."""
    if interior is None:
        return None, None
    outer = max(SHELL_MM, 2.0 * max(spacing[:2]))
    shell = mask & (depth <= outer)
    band = (depth > outer) & (depth <= outer + BAND_MM)
    if not shell.any() or not band.any():
        return None, None
    white = float(np.percentile(data[interior], 75))
    if not white > low:
        return None, None
    rim = float(np.mean(data[shell] >= white))
    shell_level = float(np.median(data[shell])) - low
    band_level = float(np.median(data[band])) - low
    ring = band_level / shell_level if shell_level > 0 else None
    return rim, ring


def _noisy_air(data: np.ndarray, mask: np.ndarray, brain_range: float) -> bool | None:
    near = ndi.binary_dilation(mask, iterations=2)
    outside = data[~near]
    if outside.size < max(1000, 0.02 * data.size):
        return None
    sample = outside[:: max(1, outside.size // 500_000)]
    constant = np.unique(sample, return_counts=True)[1].max() / sample.size
    spread = float(np.subtract(*np.percentile(sample, [90, 10])))
    return bool(constant < AIR_MAX_CONSTANT and spread > AIR_MIN_SPREAD * max(brain_range, 1e-12))


def _contrast(data, mask, low, high) -> float | None:
    if not high > low:
        return None
    core = ndi.binary_erosion(mask, structure=np.ones((3, 3, 1), dtype=bool))
    if np.count_nonzero(core) < 20:
        core = mask
    return float((np.median(data[core]) - low) / (high - low))


def skull_warning(
    data_ras: np.ndarray,
    mask_ras: np.ndarray,
    spacing: tuple[float, ...],
    *,
    mask_given: bool = False,
) -> str | None:
    """A one-line message when the brain mask holds skull or neck, else None.

    The rule is :attr:`ScanEvidence.skull` of :func:`scan_evidence` (same parameters).
    """
    evidence = scan_evidence(data_ras, mask_ras, spacing, mask_given=mask_given)
    return evidence.messages()[0] if evidence.skull else None


def contrast_warning(
    data_ras: np.ndarray, mask_ras: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> str | None:
    """A one-line message when the brain's contrast looks inverted (T2-like), else None.

    The rule is :attr:`ScanEvidence.inverted` of :func:`scan_evidence`.
    """
    evidence = scan_evidence(data_ras, mask_ras, spacing, mask_given=True)
    return _contrast_message(evidence.contrast) if evidence.inverted else None


def scan_warnings(
    data_ras: np.ndarray,
    mask_ras: np.ndarray,
    spacing: tuple[float, ...],
    *,
    mask_given: bool = False,
) -> list[str]:
    """The warnings of a scan as one-line messages: :meth:`ScanEvidence.messages` (empty for
    a skull-stripped T1)."""
    return scan_evidence(data_ras, mask_ras, spacing, mask_given=mask_given).messages()


# --------------------------------------------------------------------------- slices
def trained_brain_fraction(preprocessing: dict | None) -> float:
    """The slice rule of a model's training: its ``preprocessing.min_brain_fraction``, else
    :data:`TRAINED_MIN_BRAIN_FRACTION`."""
    value = (preprocessing or {}).get("min_brain_fraction", TRAINED_MIN_BRAIN_FRACTION)
    return float(value)


def trained_slices(mask_model: np.ndarray, fraction: float) -> np.ndarray:
    """Which model-grid slices the training rule keeps: brain area at least ``fraction`` of the
    largest slice's (the areas counted on the model grid, as in training).

    Parameters
    ----------
    mask_model : (N, grid, grid) bool ndarray
    fraction : float

    Returns
    -------
    (N,) bool ndarray
    """
    areas = np.asarray(mask_model).reshape(len(mask_model), -1).sum(axis=1)
    if areas.size == 0 or areas.max() == 0:
        return np.zeros(areas.shape, dtype=bool)
    return (areas > 0) & (areas >= fraction * areas.max())

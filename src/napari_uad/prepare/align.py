"""Rigid or affine alignment of a brain to the models' template (MNI152 2009, 2 mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.errors import InputError

TEMPLATE_PATH = Path(__file__).resolve().parent / "mni152_t1_brain_2mm.nii.gz"
ALIGNMENTS = ("none", "rigid", "affine")


def load_template() -> tuple[np.ndarray, np.ndarray]:
    """The alignment template: brain-masked MNI152 T1 at 2 mm (``scripts/make_template.py``).

    Returns
    -------
    data : ndarray of float32, shape (X, Y, Z)
        Intensities in [0, 1], 0 outside the brain, RAS+.
    affine : ndarray, shape (4, 4)
    """
    import nibabel as nib

    if not TEMPLATE_PATH.is_file():
        raise InputError(f"the alignment template {TEMPLATE_PATH} is missing: reinstall napari-uad")
    image = nib.load(TEMPLATE_PATH)
    return np.asarray(image.dataobj, dtype=np.float32) / 255.0, image.affine


def _sitk_image(volume: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0))
    )
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(affine[:3, 3]))
    image.SetDirection(tuple((affine[:3, :3] / spacing).ravel()))
    return image


def _as_matrix(transform) -> np.ndarray:
    """4x4 matrix of a SimpleITK matrix-offset transform (x -> A (x - c) + c + t)."""
    matrix = np.array(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.array(transform.GetCenter(), dtype=np.float64)
    translation = np.array(transform.GetTranslation(), dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = translation + centre - matrix @ centre
    return out


def align_to_template(
    brain: np.ndarray, affine: np.ndarray, *, kind: str = "rigid", seed: int = 0
) -> np.ndarray:
    """Fit a rigid or affine transform from the template's space to the scan's.

    Mattes mutual information between the skull-stripped brain and the template brain, a
    moments-based start (centres of mass and principal axes are not used for the rotation),
    two resolution levels (8 and 4 mm, then 4 and 2 mm). World coordinates are the NIfTI's
    RAS millimetres on both sides.

    Parameters
    ----------
    brain : ndarray, shape (X, Y, Z)
        Skull-stripped image (0 outside the brain).
    affine : ndarray, shape (4, 4)
        Its voxel-to-world transform.
    kind : {'rigid', 'affine'}
    seed : int
        Seed of the metric's voxel sampling.

    Returns
    -------
    ndarray, shape (4, 4)
        Maps template world coordinates (mm) to scan world coordinates.
    """
    import SimpleITK as sitk

    if kind not in ("rigid", "affine"):
        raise InputError(f"alignment must be 'rigid' or 'affine', got {kind!r}")
    template, template_affine = load_template()
    fixed = _sitk_image(template, template_affine)
    brain = np.asarray(brain, dtype=np.float32)
    scale = float(np.percentile(brain[brain > 0], 99)) if np.any(brain > 0) else 0.0
    if scale <= 0:
        raise InputError("alignment got an empty brain")
    moving = _sitk_image(np.clip(brain / scale, 0, 1.5), affine)
    initial = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
    )
    transform = _register(fixed, moving, initial, seed=seed)
    if kind == "affine":
        affine_start = sitk.AffineTransform(3)
        affine_start.SetCenter(transform.GetCenter())
        affine_start.SetMatrix(transform.GetMatrix())
        affine_start.SetTranslation(transform.GetTranslation())
        transform = _register(fixed, moving, affine_start, seed=seed)
    return _as_matrix(transform)


def _register(fixed, moving, initial, *, seed: int):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=True)
    method.Execute(fixed, moving)
    return initial

"""Build the benchmark set: healthy "subjects" unlike the training augmentations, each with
synthetic lesions of three kinds, as NIfTI files.

Needs nilearn (``pip install "napari-uad[data]"``); runs in about a minute; deterministic::

    python benchmarks/make_benchmark_set.py [--subjects 3] [--slices 16] [--out benchmarks/data]

A subject is the MNI152 2009 T1 template (the only healthy brain available offline) made into
another-looking brain by a *3-D* smooth random deformation and a global scaling and rotation
(training augments 2-D slices independently, with other seeds), a multiplicative bias field,
a random gamma, and Rician scanner noise (2 % of white matter), cut to an axial slab at a
random height through the ventricles. Each subject gets, from
:func:`napari_uad.data.phantoms.add_lesions`, one volume per lesion kind:

- ``tumour``: a bright heterogeneous mass with a dark core and a hyperintense oedema rim
  (the truth includes the oedema);
- ``ms``: 3-6 small hyperintense white-matter lesions;
- ``stroke``: a hypointense cortical wedge.

Files per subject ``sub-XX``: ``sub-XX_healthy.nii.gz``, ``sub-XX_brain_mask.nii.gz``, and per
kind ``sub-XX_<kind>.nii.gz`` with ``sub-XX_<kind>_truth.nii.gz``; ``manifest.json`` lists
them with the lesion volumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from napari_uad.data.phantoms import add_lesions

KINDS = ("tumour", "ms", "stroke")
SEED_OFFSET = 7_000  # subjects' seeds never overlap the training runs' (0..100)


def _smooth_field(shape, rng, *, spacing: float, amplitude: float) -> np.ndarray:
    """A smooth random field: Gaussian noise on a coarse grid, cubic-upsampled."""
    coarse = [max(2, int(round(s / spacing))) for s in shape]
    field = rng.normal(size=coarse)
    return (
        ndimage.zoom(field, [s / c for s, c in zip(shape, coarse, strict=True)], order=3)[
            tuple(slice(0, s) for s in shape)
        ]
        * amplitude
    )


def make_subject(template, mask, rng):
    """One deformed, bias-corrupted, noisy copy of the template (and its brain mask)."""
    shape = template.shape
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = np.array([(s - 1) / 2 for s in shape], dtype=np.float32)
    angle = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.92, 1.08, size=3)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    matrix = rotation @ np.diag(1 / scale)
    coords = np.stack([g - c for g, c in zip(grid, centre, strict=True)])
    coords = np.tensordot(matrix, coords, axes=1) + centre[:, None, None, None]
    for axis in range(3):
        coords[axis] += _smooth_field(shape, rng, spacing=24.0, amplitude=3.0)
    image = ndimage.map_coordinates(template, coords, order=1, mode="constant")
    brain = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1) > 0.5
    bias = np.exp(_smooth_field(shape, rng, spacing=60.0, amplitude=0.08))
    image = image * bias
    white = np.percentile(image[brain], 90)
    image = white * (image / white).clip(0) ** rng.uniform(0.85, 1.15)
    sigma = 0.02 * white
    real = image + rng.normal(scale=sigma, size=shape)
    imaginary = rng.normal(scale=sigma, size=shape)
    image = np.sqrt(real**2 + imaginary**2) * brain
    return image.astype(np.float32), brain


def build(out: Path, *, subjects: int = 3, slices: int = 16) -> dict:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template_image = load_mni152_template(resolution=1)
    template = template_image.get_fdata(dtype=np.float32)
    mask = load_mni152_brain_mask(resolution=1).get_fdata() > 0
    affine = template_image.affine
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"subjects": [], "kinds": list(KINDS), "slices": slices}
    for index in range(subjects):
        rng = np.random.default_rng(SEED_OFFSET + index)
        image, brain = make_subject(template, mask, rng)
        # An axial slab through the lateral ventricles (MNI z about +2 to +30 mm).
        z_mm = rng.uniform(2.0, 30.0 - slices)
        k0 = int(round((np.linalg.inv(affine) @ [0, 0, z_mm, 1])[2]))
        image, brain = image[:, :, k0 : k0 + slices], brain[:, :, k0 : k0 + slices]
        slab = affine.copy()
        slab[:3, 3] = affine[:3, :3] @ np.array([0, 0, k0]) + affine[:3, 3]
        name = f"sub-{index + 1:02d}"
        entry = {"name": name, "healthy": f"{name}_healthy.nii.gz", "lesions": {}}
        _save(image, slab, out / entry["healthy"])
        _save(brain.astype(np.uint8), slab, out / f"{name}_brain_mask.nii.gz")
        entry["brain_mask"] = f"{name}_brain_mask.nii.gz"
        for kind_index, kind in enumerate(KINDS):
            lesioned, truth = add_lesions(
                image, brain, kind=kind, seed=SEED_OFFSET + 10 * index + kind_index
            )
            _save(lesioned, slab, out / f"{name}_{kind}.nii.gz")
            _save(truth.astype(np.uint8), slab, out / f"{name}_{kind}_truth.nii.gz")
            entry["lesions"][kind] = {
                "scan": f"{name}_{kind}.nii.gz",
                "truth": f"{name}_{kind}_truth.nii.gz",
                "volume_ml": round(float(truth.sum()) / 1000.0, 3),
            }
        manifest["subjects"].append(entry)
        print(f"{name}: slab from z = {z_mm:.0f} mm, lesions {entry['lesions']}", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _save(data, affine, path: Path) -> None:
    image = nib.Nifti1Image(np.asarray(data), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    build(args.out, subjects=args.subjects, slices=args.slices)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Build the benchmark set: healthy "subjects" unlike the training template, each with synthetic
lesions of four kinds, as NIfTI files, split into tuning and test subjects.

Needs nilearn (``pip install "napari-uad[data]"``); about 20 s per subject; deterministic::

    python benchmarks/make_benchmark_set.py [--tune 3] [--test 4] [--slices 16] [--out DIR]

The only healthy brain to be had offline is the MNI152 2009 T1 template the models train on, so
each subject is that template made into another person's scan, in the ways a new scan differs:

- **anatomy**: a global scaling and rotation and a smooth 3-D deformation (training augments
  2-D slices independently, with other seeds); enlarged or narrowed lateral ventricles (a
  radial warp about the ventricles' centre); wider sulci and thinner cortex (a greyscale
  erosion blended into the outer 10 mm of the brain, as in atrophy);
- **acquisition**: another grey/white and CSF contrast (a monotone piecewise-linear remapping of
  the tissue levels), a gamma, thick slices or a coarser in-plane resolution (partial volume),
  a multiplicative bias field, and Rician noise of 1.5-4 % of white matter.

Lesions are painted into the subject's anatomy *before* the acquisition, so they are blurred,
biased and noised like the tissue around them (:func:`napari_uad.data.phantoms.add_lesions`):

- ``tumour``: a bright heterogeneous mass with a dark core and a hyperintense oedema rim that
  pushes the tissue around it outward (mass effect; the truth includes the oedema);
- ``ms``: 6-12 small T1-*hypointense* white-matter plaques, 2-6 mm in radius, about half
  periventricular;
- ``bright``: one small T1-bright white-matter lesion, 4-9 mm in radius;
- ``stroke``: a hypointense cortical wedge.

Subjects ``sub-01`` .. ``sub-<tune>`` form the *tune* split (defaults may be chosen on them);
the rest form the *test* split (only ever reported). Files per subject ``sub-XX``:
``sub-XX_healthy.nii.gz``, ``sub-XX_brain_mask.nii.gz``, and per kind ``sub-XX_<kind>.nii.gz``
with ``sub-XX_<kind>_truth.nii.gz``; ``manifest.json`` lists them with their split, the
subject's variations and the lesion volumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from napari_uad.data.phantoms import add_lesions

KINDS = ("tumour", "ms", "bright", "stroke")
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


def _ventricle_centre(template, mask) -> np.ndarray:
    """Voxel centre of the lateral ventricles: the largest dark component deep in the brain."""
    depth = ndimage.distance_transform_edt(mask)
    dark = (template < np.percentile(template[mask], 12)) & (depth > 20)
    labels, count = ndimage.label(dark)
    if count == 0:
        return np.array(ndimage.center_of_mass(mask))
    sizes = np.bincount(labels.ravel())[1:]
    return np.array(ndimage.center_of_mass(labels == 1 + int(np.argmax(sizes))))


def draw_variations(rng) -> dict:
    """One subject's anatomy and acquisition parameters (all drawn here, recorded in the
    manifest)."""
    return {
        "rotation_degrees": float(rng.uniform(-8, 8)),
        "scale": [float(v) for v in rng.uniform(0.92, 1.08, size=3)],
        # Negative: the ventricles grow (tissue at the centre is sampled from farther out).
        "ventricle_warp": float(rng.uniform(-0.45, 0.25)),
        "atrophy": float(rng.uniform(0.0, 0.7)),
        "csf_contrast": float(rng.uniform(0.6, 1.6)),
        "grey_contrast": float(rng.uniform(0.9, 1.08)),
        "gamma": float(rng.uniform(0.85, 1.15)),
        "slice_thickness_mm": float(rng.choice([1.0, 2.0, 3.0])),
        "in_plane_blur_mm": float(rng.uniform(0.0, 0.7)),
        "bias": float(rng.uniform(0.05, 0.2)),
        "noise": float(rng.uniform(0.015, 0.04)),
    }


def make_anatomy(template, mask, variations, rng):
    """The subject's noise-free anatomy (and brain mask) on the template grid."""
    shape = template.shape
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = np.array([(s - 1) / 2 for s in shape], dtype=np.float32)
    coords = np.stack(grid)
    # Ventricles: a radial warp about their centre (applied in the subject's space first).
    middle = _ventricle_centre(template, mask).astype(np.float32)
    offsets = coords - middle[:, None, None, None]
    radius2 = np.sum(offsets**2, axis=0)
    factor = 1.0 - variations["ventricle_warp"] * np.exp(-radius2 / 22.0**2)
    coords = middle[:, None, None, None] + offsets * factor
    angle = np.deg2rad(variations["rotation_degrees"])
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    matrix = rotation @ np.diag(1 / np.asarray(variations["scale"]))
    coords = np.tensordot(matrix, coords - centre[:, None, None, None], axes=1)
    coords += centre[:, None, None, None]
    for axis in range(3):
        coords[axis] += _smooth_field(shape, rng, spacing=24.0, amplitude=3.0)
    image = ndimage.map_coordinates(template, coords, order=1, mode="constant")
    brain = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1) > 0.5
    # Atrophy: dark sulci widen and the cortex thins in the outer 10 mm of the brain.
    depth = ndimage.distance_transform_edt(brain)
    band = np.clip((10.0 - depth) / 4.0, 0.0, 1.0) * variations["atrophy"]
    eroded = ndimage.grey_erosion(np.where(brain, image, 0), size=(3, 3, 3))
    image = (1 - band) * image + band * eroded
    return (image * brain).astype(np.float32), brain


def acquire(anatomy, brain, variations, seed: int) -> np.ndarray:
    """The scan of ``anatomy``: contrast, partial volume, bias and Rician noise.

    The same ``seed`` gives the same bias field and noise, so a subject's healthy and lesioned
    scans differ only by the lesions.
    """
    rng = np.random.default_rng(seed)
    values = anatomy[brain]
    csf, grey, white = np.percentile(values, [3, 35, 85])
    top = float(values.max())
    image = np.interp(
        anatomy,
        [0.0, csf, grey, white, top],
        [
            0.0,
            csf * variations["csf_contrast"],
            grey * variations["grey_contrast"],
            white,
            top,
        ],
    )
    thickness = variations["slice_thickness_mm"]
    sigma_z = 0.0 if thickness <= 1.0 else thickness / 2.355
    sigma_xy = variations["in_plane_blur_mm"]
    if sigma_z or sigma_xy:
        image = ndimage.gaussian_filter(image, (sigma_xy, sigma_xy, sigma_z))
    image = image * np.exp(
        _smooth_field(anatomy.shape, rng, spacing=60.0, amplitude=1.0) * 0.5 * variations["bias"]
    )
    white = np.percentile(image[brain], 90)
    image = white * (image / white).clip(0) ** variations["gamma"]
    sigma = variations["noise"] * white
    real = image + rng.normal(scale=sigma, size=image.shape)
    imaginary = rng.normal(scale=sigma, size=image.shape)
    return (np.sqrt(real**2 + imaginary**2) * brain).astype(np.float32)


def build(out: Path, *, tune: int = 3, test: int = 4, slices: int = 16) -> dict:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template_image = load_mni152_template(resolution=1)
    template = template_image.get_fdata(dtype=np.float32)
    mask = load_mni152_brain_mask(resolution=1).get_fdata() > 0
    affine = template_image.affine
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"subjects": [], "kinds": list(KINDS), "slices": slices}
    for index in range(tune + test):
        rng = np.random.default_rng(SEED_OFFSET + index)
        variations = draw_variations(rng)
        anatomy, brain = make_anatomy(template, mask, variations, rng)
        # An axial slab through the lateral ventricles (MNI z about +2 to +30 mm).
        z_mm = rng.uniform(2.0, 30.0 - slices)
        k0 = int(round((np.linalg.inv(affine) @ [0, 0, z_mm, 1])[2]))
        anatomy, brain = anatomy[:, :, k0 : k0 + slices], brain[:, :, k0 : k0 + slices]
        slab = affine.copy()
        slab[:3, 3] = affine[:3, :3] @ np.array([0, 0, k0]) + affine[:3, 3]
        name = f"sub-{index + 1:02d}"
        split = "tune" if index < tune else "test"
        acquisition_seed = SEED_OFFSET + 500 + index
        entry = {
            "name": name,
            "split": split,
            "variations": variations,
            "healthy": f"{name}_healthy.nii.gz",
            "brain_mask": f"{name}_brain_mask.nii.gz",
            "lesions": {},
        }
        _save(acquire(anatomy, brain, variations, acquisition_seed), slab, out / entry["healthy"])
        _save(brain.astype(np.uint8), slab, out / entry["brain_mask"])
        for kind_index, kind in enumerate(KINDS):
            options = {"mass_effect": float(rng.uniform(0.2, 0.45))} if kind == "tumour" else {}
            lesioned, truth = add_lesions(
                anatomy, brain, kind=kind, seed=SEED_OFFSET + 10 * index + kind_index, **options
            )
            scan = acquire(lesioned, brain, variations, acquisition_seed)
            _save(scan, slab, out / f"{name}_{kind}.nii.gz")
            _save(truth.astype(np.uint8), slab, out / f"{name}_{kind}_truth.nii.gz")
            entry["lesions"][kind] = {
                "scan": f"{name}_{kind}.nii.gz",
                "truth": f"{name}_{kind}_truth.nii.gz",
                "volume_ml": round(float(truth.sum()) / 1000.0, 3),
                "count": int(ndimage.label(truth)[1]),
            }
        manifest["subjects"].append(entry)
        summary = ", ".join(
            f"{kind} {v['volume_ml']} mL ({v['count']})" for kind, v in entry["lesions"].items()
        )
        print(f"{name} ({split}): slab from z = {z_mm:.0f} mm; {summary}", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _save(data, affine, path: Path) -> None:
    image = nib.Nifti1Image(np.asarray(data), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", type=int, default=3, help="subjects defaults may be tuned on")
    parser.add_argument("--test", type=int, default=4, help="subjects only reported")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    build(args.out, tune=args.tune, test=args.test, slices=args.slices)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

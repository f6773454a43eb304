"""Build the sample scans shipped in ``src/napari_uad/sample_data/`` from the MNI152 template.

Needs nilearn (``pip install napari-uad[data]``), used only here, never at run time. Run from the
repository root::

    python scripts/make_sample_data.py

The output is deterministic: the same nilearn template gives byte-identical files.

Files written (all on one grid, with the template's affine restricted to the slab):

- ``healthy_t1.nii.gz``: an axial slab of 24 slices (1 mm, MNI z = +6 to +29 mm, through the
  lateral ventricles) of the skull-stripped ICBM152 2009 T1 template, cropped in-plane to the
  brain's bounding box plus a margin, stored as int16 in 0..1000 (one intensity scale shared with
  ``lesion_t1.nii.gz``, whose brightest lesion voxel is 1000);
- ``lesion_t1.nii.gz``: the same slab with synthetic lesions (one tumour-like lesion of 30 mm
  in the left hemisphere, about 30 mL with its oedema, and five small MS-like lesions in the
  white matter) from ``napari_uad.data.phantoms``. The tumour was 20 mm until the demo used this
  sample: that small a tumour is mostly its faint oedema rim, smaller than any tumour of the
  benchmark set (0.35-0.6 of the brain radius), and no shipped method found it;
- ``lesion_truth.nii.gz``: the lesions' ground truth (uint8, 0/1);
- ``brain_mask.nii.gz``: the template's brain mask (uint8, 0/1);
- ``LICENSE_MNI152.txt``: the licence and citation of the template.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_uad.data.phantoms import add_lesions  # noqa: E402

SLAB_Z_MM = (6.0, 29.0)
MARGIN = 4
SCALE = 1000
SEED = 2
TUMOUR_CENTRE_MM = (-30.0, 20.0, 19.0)
TUMOUR_DIAMETER = 30.0
HEADROOM = 0.8
MS_COUNT = 5
MS_DIAMETER = 7.0

LICENCE = """\
The sample scans in this folder (healthy_t1.nii.gz, lesion_t1.nii.gz, lesion_truth.nii.gz,
brain_mask.nii.gz) are derived from the MNI ICBM152 2009a nonlinear T1-weighted template and its
brain mask as distributed with nilearn (nilearn.datasets.load_mni152_template and
load_mni152_brain_mask, file mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz).
napari-uad cropped an axial slab, rescaled the intensities and, in lesion_t1.nii.gz and
lesion_truth.nii.gz, painted synthetic lesions (scripts/make_sample_data.py). The lesions are
synthetic; the template is an average of healthy adults and contains no patient data.

nilearn ships the template without a licence file; the template's licence, as published by the
McConnell Brain Imaging Centre for the ICBM 2009 nonlinear atlases
(https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/), is:

Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express
or implied warranty. The authors are not responsible for any data loss, equipment damage,
property loss, or injury to subjects or patients resulting from the use or misuse of this
software package.

Please cite:

VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and BDCG. Unbiased average
age-appropriate atlases for pediatric studies. NeuroImage 54(1), 2011, 313-327.
doi:10.1016/j.neuroimage.2010.07.033

VS Fonov, AC Evans, RC McKinstry, CR Almli and DL Collins. Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood. NeuroImage 47, Supplement 1, 2009,
S102 (Organization for Human Brain Mapping 2009 Annual Meeting).
doi:10.1016/S1053-8119(09)70884-5

DL Collins, AP Zijdenbos, WFC Baare and AC Evans. ANIMAL+INSECT: Improved cortical structure
segmentation. Information Processing in Medical Imaging (IPMI) 1999, LNCS 1613, 210-223.
"""


def _write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save(data: np.ndarray, affine: np.ndarray, codes: tuple[int, int], path: Path, what: str):
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=codes[0])
    image.set_qform(affine, code=codes[1])
    image.header["descrip"] = f"napari-uad sample: {what}"[:79].encode()
    _write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=9, mtime=0))


def build(out_dir: Path) -> dict:
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    brain = datasets.load_mni152_brain_mask(resolution=1)
    t1 = np.asarray(template.get_fdata(), dtype=np.float64)
    mask = np.asarray(brain.get_fdata()) > 0
    affine = template.affine.copy()
    codes = (int(template.header["sform_code"]) or 4, int(template.header["qform_code"]) or 4)

    outside = np.count_nonzero(t1[~mask] > 0.05)
    print(
        f"template {t1.shape}, non-zero voxels outside the brain mask: {outside} "
        f"({outside / np.count_nonzero(mask):.2%} of the mask): skull-stripped, masked anyway"
    )

    inverse = np.linalg.inv(affine)
    k0 = int(round((inverse @ [0, 0, SLAB_Z_MM[0], 1])[2]))
    k1 = int(round((inverse @ [0, 0, SLAB_Z_MM[1], 1])[2])) + 1
    slab_mask = mask[:, :, k0:k1]
    in_plane = slab_mask.any(axis=2)
    rows = np.flatnonzero(in_plane.any(axis=1))
    cols = np.flatnonzero(in_plane.any(axis=0))
    i0 = max(0, rows[0] - MARGIN)
    i1 = min(t1.shape[0], rows[-1] + MARGIN + 1)
    j0 = max(0, cols[0] - MARGIN)
    j1 = min(t1.shape[1], cols[-1] + MARGIN + 1)

    crop = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
    brain_mask = mask[crop]
    healthy = np.where(brain_mask, t1[crop], 0.0)
    healthy /= healthy.max()
    slab_affine = affine.copy()
    slab_affine[:3, 3] = affine[:3, :3] @ np.array([i0, j0, k0]) + affine[:3, 3]

    rng = np.random.default_rng(SEED)
    centre = (np.linalg.inv(slab_affine) @ np.r_[TUMOUR_CENTRE_MM, 1.0])[:3]
    lesioned, tumour = add_lesions(
        healthy * HEADROOM,
        brain_mask,
        kind="tumour",
        count=1,
        seed=rng,
        size=TUMOUR_DIAMETER,
        center=centre,
    )
    away = brain_mask & ~ndimage.binary_dilation(tumour, iterations=6)
    lesioned, ms = add_lesions(
        lesioned, away, kind="bright", count=MS_COUNT, seed=rng, size=MS_DIAMETER
    )
    truth = tumour | ms
    lesioned /= HEADROOM
    scale = SCALE / max(1.0, float(lesioned.max()))

    def to_int16(volume):
        return np.round(np.clip(volume, 0, None) * scale).astype(np.int16)

    out_dir.mkdir(parents=True, exist_ok=True)
    _save(to_int16(healthy), slab_affine, codes, out_dir / "healthy_t1.nii.gz", "healthy T1")
    _save(to_int16(lesioned), slab_affine, codes, out_dir / "lesion_t1.nii.gz", "lesion T1")
    _save(truth.astype(np.uint8), slab_affine, codes, out_dir / "lesion_truth.nii.gz", "truth")
    _save(brain_mask.astype(np.uint8), slab_affine, codes, out_dir / "brain_mask.nii.gz", "mask")
    _write_bytes(out_dir / "LICENSE_MNI152.txt", LICENCE.encode())

    _, n_ms = ndimage.label(ms, structure=np.ones((3, 3, 3)))
    summary = {
        "shape": healthy.shape,
        "crop": [(int(s.start), int(s.stop)) for s in crop],
        "affine": slab_affine,
        "tumour_voxels": int(tumour.sum()),
        "ms_lesions": n_ms,
        "ms_voxels": int(ms.sum()),
        "bytes": sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
    }
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "src" / "napari_uad" / "sample_data",
        help="output folder (default: the package's sample_data folder)",
    )
    args = parser.parse_args(argv)
    summary = build(args.out)
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

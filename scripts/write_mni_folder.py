"""Write the MNI152 2009 T1 template that nilearn ships, and its brain mask, as a folder of
healthy scans for ``napari-uad train`` (``mni152.nii.gz`` + ``mni152_mask.nii.gz``).

Usage (needs ``pip install nilearn``)::

    python scripts/write_mni_folder.py mni/
    napari-uad train mni/ --method disyre --out my-disyre
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write")
    args = parser.parse_args()
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=1)
    mask = load_mni152_brain_mask(resolution=1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = template.get_fdata(dtype=np.float32)
    nib.save(nib.Nifti1Image(data, template.affine), args.out / "mni152.nii.gz")
    brain = (mask.get_fdata() > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, mask.affine), args.out / "mni152_mask.nii.gz")
    print(f"wrote {args.out / 'mni152.nii.gz'} and its brain mask")


if __name__ == "__main__":
    main()

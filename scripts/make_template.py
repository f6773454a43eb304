"""Build the alignment template shipped in ``src/napari_uad/prepare/``.

``napari-uad prepare --align rigid|affine`` registers a scan's brain to the space the shipped
models were trained in: the skull-stripped MNI ICBM152 2009 T1 template (1 mm) that nilearn
ships. This script stores it brain-masked, at 2 mm (enough for a rigid or affine fit) and as
uint8 0..255, about 0.2 MB. Needs nilearn (``pip install napari-uad[data]``), used only here::

    python scripts/make_template.py

The output is deterministic. Licence: ``src/napari_uad/sample_data/LICENSE_MNI152.txt``.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "napari_uad" / "prepare" / "mni152_t1_brain_2mm.nii.gz"
STEP = 2


def main() -> None:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=1)
    mask = np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    data = np.asarray(template.dataobj, dtype=np.float32) * mask
    # average 2x2x2 blocks (anti-aliased downsampling), grid cropped to a multiple of 2
    shape = [s - s % STEP for s in data.shape]
    data = data[: shape[0], : shape[1], : shape[2]]
    data = ndimage.uniform_filter(data, STEP)[
        STEP // 2 :: STEP, STEP // 2 :: STEP, STEP // 2 :: STEP
    ]
    data = np.clip(np.rint(255 * data / data.max()), 0, 255).astype(np.uint8)
    affine = template.affine.copy()
    affine[:3, :3] *= STEP
    affine[:3, 3] += template.affine[:3, :3] @ np.full(3, (STEP - 1) / 2)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"MNI152 2009 T1 brain, 2 mm (napari-uad)"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        gz.write(image.to_bytes())
    OUT.write_bytes(buffer.getvalue())
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB, shape {data.shape})")


if __name__ == "__main__":
    main()

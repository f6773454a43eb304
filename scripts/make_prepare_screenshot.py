"""Screenshot of the Load widget after *Prepare raw scan…* on a synthetic head, for the docs.

xvfb-run -a -s "-screen 0 1600x1000x24" \
        python scripts/make_prepare_screenshot.py docs/prepare_widget.png

The raw scan is a synthetic T1 head (scalp, skull, eyes, neck; :mod:`napari_uad.data.head_phantom`)
around the MNI152 brain shipped for alignment (2 mm), written as NIfTI in a temporary folder.
The screenshot shows the raw head with the outline of the prepared brain's BET mask (the
prepared brain itself is the layer above it, hidden).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import nibabel as nib
import numpy as np
from qtpy.QtWidgets import QApplication
from scipy import ndimage

from napari_uad.data.head_phantom import make_head
from napari_uad.prepare.align import load_template
from napari_uad.widgets.load import LoadScanWidget


def wait(app, condition) -> None:
    while not condition():
        app.processEvents()


def main(out: Path) -> None:
    app = QApplication.instance() or QApplication([])
    brain, affine = load_template()
    mask = ndimage.binary_fill_holes(brain > 0.02)
    head = make_head(brain * mask, mask, spacing=(2.0, 2.0, 2.0), seed=4, bias=0.2)
    with tempfile.TemporaryDirectory() as temp:
        path = Path(temp) / "sub-01_T1w.nii.gz"
        data = np.rint(1000 * head.image / head.image.max()).astype(np.int16)
        nib.save(nib.Nifti1Image(data, head.affine), path)
        viewer = napari.Viewer(title="napari-uad: prepare a raw scan")
        viewer.window.resize(1560, 960)
        load = LoadScanWidget(viewer)
        viewer.window.add_dock_widget(load, name="Load scan", area="right")
        loaded = []
        load.loaded.connect(loaded.append)
        load.scan_edit.setText(str(path))
        load.load()
        wait(app, lambda: loaded)
        load.prepare()
        wait(app, lambda: len(loaded) == 2)
        prepared = loaded[1]
        prepared["scan"].visible = False  # the raw head, with the prepared brain's outline
        prepared["brain_mask"].visible = True
        prepared["brain_mask"].contour = 2
        prepared["brain_mask"].opacity = 1.0
        viewer.layers["sub-01_T1w brain mask"].visible = False
        viewer.layers["sub-01_T1w slice range"].visible = False
        viewer.dims.set_current_step(0, int(prepared["scan"].data.shape[0] * 0.55))
        viewer.reset_view()
        for _ in range(30):
            app.processEvents()
        viewer.screenshot(str(out), canvas_only=False, flash=False)
        viewer.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/prepare_widget.png"))

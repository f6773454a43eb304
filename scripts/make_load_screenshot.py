"""Screenshot of the Load scan and Case browser widgets with a case loaded, for the README.

xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_load_screenshot.py docs/load_widget.png

Builds a small cohort from the shipped samples in a temporary folder (three cases, one already
reviewed), opens it in the Case browser and frames slices 4-19 in the Load widget.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_uad.cases import ReviewState, default_results_folder
from napari_uad.data.samples import sample_path
from napari_uad.widgets.browser import CaseBrowserWidget
from napari_uad.widgets.load import LoadScanWidget


def make_cohort(folder: Path) -> Path:
    for case, scan in (("sub-01", "lesion"), ("sub-02", "healthy"), ("sub-03", "lesion")):
        shutil.copy(sample_path(scan), folder / f"{case}_T1w.nii.gz")
        shutil.copy(sample_path("brain_mask"), folder / f"{case}_T1w_brain_mask.nii.gz")
    for case in ("sub-01", "sub-03"):
        shutil.copy(sample_path("lesion_truth"), folder / f"{case}_T1w_truth.nii.gz")
    review = ReviewState(default_results_folder(folder))
    review.set_status("sub-01_T1w", "reviewed")
    review.set_status("sub-02_T1w", "done")
    review.set_current("sub-03_T1w")
    return folder


def wait(app, condition) -> None:
    while not condition():
        app.processEvents()


def main(out: Path) -> None:
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as temp:
        cohort = make_cohort(Path(temp))
        viewer = napari.Viewer(title="napari-uad: load scans")
        viewer.window.resize(1560, 960)
        load = LoadScanWidget(viewer)
        browser = CaseBrowserWidget(viewer)
        viewer.window.add_dock_widget(browser, name="Case browser", area="right")
        viewer.window.add_dock_widget(load, name="Load scan", area="right", tabify=False)
        shown = []
        browser.case_shown.connect(shown.append)
        browser.open(cohort)
        wait(app, lambda: shown)
        load.range_radio.setChecked(True)
        load.first_spin.setValue(4)
        load.last_spin.setValue(19)
        truth = viewer.layers["sub-03_T1w truth"].data
        viewer.dims.set_current_step(0, int(np.argmax(truth.sum(axis=(1, 2)))))
        viewer.layers.selection.active = viewer.layers["sub-03_T1w"]
        viewer.reset_view()
        for _ in range(30):
            app.processEvents()
        viewer.screenshot(str(out), canvas_only=False, flash=False)
        viewer.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/load_widget.png"))

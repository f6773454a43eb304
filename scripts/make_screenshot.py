"""Screenshot of napari running the demo with the widgets docked, for the README.

xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshot.py docs/screenshot.png

Runs the demo (disyre on the lesion sample at the healthy sample's threshold), waits for the
result, goes to the slice with most lesion and selects its lesion in the Threshold table. The
window fits the virtual 1600 x 1000 screen as it would a laptop's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_uad.demo import start_demo_in_viewer


def main(out: Path) -> None:
    viewer = napari.Viewer(title="napari-uad demo")
    start_demo_in_viewer(viewer, device="cpu")
    detect = viewer.window.dock_widgets["Detect anomalies (napari-uad)"]
    threshold = viewer.window.dock_widgets["Threshold (napari-uad)"]
    app = QApplication.instance()
    deadline = time.time() + 600
    # The demo first calibrates on the healthy sample, then runs Detect.
    while detect.state.value not in ("done", "failed", "stopped") or detect.worker is not None:
        app.processEvents()
        time.sleep(0.01)
        if time.time() > deadline:
            raise TimeoutError("the demo did not finish in 10 minutes")
    for _ in range(50):
        app.processEvents()
    if detect.state.value != "done":
        raise RuntimeError(f"Detect ended {detect.state.value}: {detect.status_label.text()}")
    names = detect.last_result_layers
    truth = viewer.layers["lesion truth"]
    shown_slice = int(np.argmax(truth.data.sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, shown_slice)
    viewer.reset_view()
    if threshold.lesions:
        # Highlight the table row of the lesion nearest the slice shown.
        rows = threshold.lesions[: threshold.table.rowCount()]
        distance = [abs(lesion.centroid_voxel[0] - shown_slice) for lesion in rows]
        threshold.table.selectRow(int(np.argmin(distance)))
    viewer.layers.selection.active = viewer.layers[names[1]]
    for _ in range(50):
        app.processEvents()
    window = viewer.window._qt_window
    print(f"window {window.width()} x {window.height()} px")
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    viewer.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png"))

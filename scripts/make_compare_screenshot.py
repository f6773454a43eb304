"""Screenshot of the Compare methods widget after comparing the DDPM-based methods on the
lesion sample's slice with the most lesion, for the docs.

    xvfb-run -a -s "-screen 0 1600x1000x24" \\
        python scripts/make_compare_screenshot.py docs/compare_widget.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication


def main(out: Path) -> None:
    viewer = napari.Viewer(title="napari-uad: compare methods")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-uad", "lesion")
    _, widget = viewer.window.add_plugin_dock_widget("napari-uad", "Compare methods")
    truth = viewer.layers["lesion truth"]
    shown = int(np.argmax(truth.data.sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, shown)
    widget.set_methods(["anoddpm", "autoddpm", "thor"])
    widget.run()
    app = QApplication.instance()
    deadline = time.time() + 600
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.01)
        if time.time() > deadline:
            raise TimeoutError("the comparison did not finish in 10 minutes")
    for _ in range(50):
        app.processEvents()
    truth.visible = False
    viewer.layers.selection.active = viewer.layers["anomaly · thor (compare)"]
    viewer.layers["anomaly · anoddpm (compare)"].visible = False
    viewer.layers["anomaly · thor (compare)"].visible = True
    viewer.reset_view()
    for _ in range(50):
        app.processEvents()
    status = widget.status_label.text()
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    viewer.close()
    print(f"wrote {out}: {status}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/compare_widget.png"))

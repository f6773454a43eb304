"""Screenshot of napari running the demo, for the README (needs a display, or xvfb-run).

xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshot.py docs/screenshot.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_uad.demo import start_demo_in_viewer


def main(out: Path) -> None:
    viewer = napari.Viewer(title="napari-uad demo")
    viewer.window.resize(1500, 900)
    worker = start_demo_in_viewer(viewer, device="cpu")
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    app = QApplication.instance()
    while not finished or "lesion mask" not in viewer.layers:
        app.processEvents()
    truth = viewer.layers["lesion truth"].data
    viewer.dims.set_current_step(0, int(np.argmax(truth.sum(axis=(1, 2)))))
    viewer.layers["lesion truth"].contour = 1
    viewer.layers["lesion truth"].visible = False
    viewer.layers["pseudo-healthy"].visible = False
    viewer.layers["lesion mask"].contour = 1
    viewer.layers.selection.active = viewer.layers["anomaly map"]
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    viewer.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png"))

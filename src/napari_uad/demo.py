"""``napari-uad demo``: the shipped lesion sample through the whole pipeline.

With a display it opens napari with the sample and the Detect, Threshold and Figure widgets
docked, and runs the Detect widget on the sample (in a background thread, with live preview);
the pseudo-healthy image, the heatmap and the lesion mask appear as layers. Without one it
writes the NIfTI outputs and a PNG figure to a folder.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_demo(*, out: Path, gui: bool, device: str = "auto") -> int:
    """Run the demo; returns the exit code."""
    if gui:
        return _demo_napari(device=device)
    return _demo_files(out=Path(out), device=device)


def _demo_files(*, out: Path, device: str) -> int:
    from tqdm.auto import tqdm

    from .figures import overview_figure
    from .io import read_mask, read_scan, write_nifti
    from .io.atomic import atomic_write_text
    from .metrics import evaluate
    from .pipeline import detect
    from .samples import sample_path

    scan = read_scan(sample_path("lesion"))
    brain = read_mask(sample_path("brain_mask"), like=scan)
    truth = read_mask(sample_path("lesion_truth"), like=scan)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(desc="demo (anoddpm)", unit="NFE") as bar:

        def progress(update):
            bar.total = update.total
            bar.update(update.done - bar.n)

        result = detect(scan, method="anoddpm", brain_mask=brain, device=device, progress=progress)
    write_nifti(out / "sample_healthy.nii.gz", result.healthy, like=scan)
    write_nifti(out / "sample_anomaly.nii.gz", result.anomaly, like=scan)
    write_nifti(out / "sample_mask.nii.gz", result.lesion_mask, like=scan, dtype="uint8")
    metrics = evaluate(result.anomaly, truth, mask=brain, threshold=result.threshold)
    record = {**result.provenance, "metrics_vs_truth": metrics}
    atomic_write_text(out / "sample.json", json.dumps(record, indent=2) + "\n")
    figure = overview_figure(scan, result, out / "sample_overview.png", truth=truth)
    print(
        f"voxel AUROC {metrics['auroc']:.3f}, AP {metrics['ap']:.3f}, best Dice "
        f"{metrics['best_dice']:.3f}, Dice at threshold {metrics['dice_at_threshold']:.3f}; "
        f"{result.provenance['timings']['seconds_per_slice']:.2f} s/slice"
    )
    print(f"wrote NIfTI outputs and {figure.name} to {out}")
    return 0


def _demo_napari(*, device: str) -> int:
    import napari

    viewer = napari.Viewer(title="napari-uad demo")
    start_demo_in_viewer(viewer, device=device)
    napari.run()
    return 0


WIDGETS = ("Detect anomalies", "Threshold", "Figure")
#: Docked as tabs behind Figure: used less often during a reading.
TABBED_WIDGETS = ("Compare methods", "Load scan", "Case browser", "Train")


def dock_widgets(viewer) -> dict:
    """Dock the napari-uad widgets on the right of ``viewer``: Detect, Threshold, and Figure
    with Compare methods, Load scan, Case browser and Train as tabs beside it.

    Returns
    -------
    dict
        Display name -> widget.
    """
    from qtpy.QtCore import Qt

    widgets, docks = {}, {}
    for name in WIDGETS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget("napari-uad", name)
    # Give the Threshold table the spare height; Figure needs little.
    for name in TABBED_WIDGETS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(
            "napari-uad", name, tabify=True
        )
    docks["Figure"].show()
    docks["Figure"].raise_()
    viewer.window._qt_window.resizeDocks(
        [docks[name] for name in WIDGETS], [360, 430, 210], Qt.Orientation.Vertical
    )
    return widgets


def start_demo_in_viewer(viewer, *, device: str = "auto", model=None):
    """Add the lesion sample to ``viewer``, dock the widgets and run Detect on the sample.

    ``model`` is a model name or folder (default: the shipped ``anoddpm`` model).

    Returns the Detect widget's worker (already started); the result layers appear, and the
    Threshold widget picks up the anomaly map, when it finishes.
    """
    from ._napari import sample_lesion

    for data, meta, kind in sample_lesion():
        getattr(viewer, f"add_{kind}")(data, **meta)
    widgets = dock_widgets(viewer)
    detect = widgets["Detect anomalies"]
    detect.set_params(layer="T1 with lesions", device=device)
    if model is not None:
        detect.set_params(model=model)
    detect.run()
    if detect.worker is None:
        raise RuntimeError("the demo could not start: " + detect.status_label.text())
    return detect.worker

"""``napari-uad demo``: the shipped lesion sample through the whole pipeline.

The demo runs ``disyre``, the single shipped method that finds the sample's tumour best (the
``ensemble`` of it and ``addm`` is better on the benchmark; docs/benchmarks.md), at a threshold
calibrated on the shipped *healthy* sample: the same scan without lesions, i.e. a healthy scan
from the same "scanner". The model's own calibrated threshold comes from whole template
volumes, whose edge slices score higher than this mid-brain slab, and flags nothing here;
calibrating on a healthy scan of the same site is what a user of new data should do too.

With a display it opens napari with the sample and the Detect, Threshold and Figure widgets
docked, and runs the Detect widget on the sample (in a background thread, with live preview);
the pseudo-healthy image, the heatmap and the lesion mask appear as layers. Without one it
writes the NIfTI outputs and a PNG figure to a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The method the demo runs, and the share of the healthy sample's brain its threshold flags.
DEMO_METHOD = "disyre"
HEALTHY_PERCENTILE = 99.5


def sample_thresholds(
    method: str = DEMO_METHOD, *, model=None, device: str = "auto", percentile=HEALTHY_PERCENTILE
) -> tuple[float, float | None]:
    """The lesion threshold of ``method`` calibrated on the shipped healthy sample, and the
    model's own calibrated threshold beside it.

    The healthy sample is the lesion sample's scan without its lesions; the threshold is the
    ``percentile`` of the method's anomaly scores inside its brain mask (99.5: half a percent
    of a healthy brain is flagged), as the model calibration does on its training data.

    Parameters
    ----------
    method : str
    model : str or path, optional
        Model name or folder (default: the method's shipped model).
    device : str
    percentile : float

    Returns
    -------
    (float, float or None)
        The healthy sample's threshold, and the model's (None when it has none).
    """
    from .data.samples import sample_path
    from .io import read_mask, read_scan
    from .pipeline import detect, load_method
    from .postprocess import healthy_threshold

    healthy = read_scan(sample_path("healthy"))
    brain = read_mask(sample_path("brain_mask"), like=healthy)
    result = detect(healthy, method=method, model=model, brain_mask=brain, device=device)
    threshold = float(healthy_threshold(result.anomaly, percentile=percentile, mask=brain))
    own = load_method(method, model, device=device).method.calibrated_threshold()
    return threshold, own


def explanation(
    method: str, threshold: float, calibrated: float | None, *, percentile=HEALTHY_PERCENTILE
) -> str:
    """One line saying which method and threshold the demo uses, and why."""
    model_part = (
        f"; the model's own calibrated {calibrated:.3g} comes from whole template volumes and "
        "is too high for this mid-brain slab"
        if calibrated is not None
        else ""
    )
    return (
        f"demo: {method}, the shipped method that finds the sample's tumour (docs/benchmarks.md "
        f"compares them all), at threshold {threshold:.3g}: the "
        f"{percentile:g}th percentile of its map on the healthy sample (the same scan "
        f"without lesions){model_part}. On your own data, calibrate on healthy scans of your "
        "scanner."
    )


def run_demo(*, out: Path, gui: bool, device: str = "auto") -> int:
    """Run the demo; returns the exit code."""
    if gui:
        return _demo_napari(device=device)
    return _demo_files(out=Path(out), device=device)


def _demo_files(*, out: Path, device: str) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from .data.samples import sample_path
    from .figures import overview_figure
    from .io import read_mask, read_scan, write_nifti
    from .io.atomic import atomic_write_text
    from .metrics import evaluate
    from .pipeline import detect

    scan = read_scan(sample_path("lesion"))
    brain = read_mask(sample_path("brain_mask"), like=scan)
    truth = read_mask(sample_path("lesion_truth"), like=scan)
    out.mkdir(parents=True, exist_ok=True)
    print("demo: calibrating the threshold on the healthy sample...", flush=True)
    threshold, calibrated = sample_thresholds(DEMO_METHOD, device=device)
    print(explanation(DEMO_METHOD, threshold, calibrated), flush=True)
    with tqdm(desc=f"demo ({DEMO_METHOD})", unit="step") as bar:

        def progress(update):
            bar.total = update.total
            bar.update(update.done - bar.n)

        result = detect(
            scan,
            method=DEMO_METHOD,
            brain_mask=brain,
            device=device,
            threshold=threshold,
            progress=progress,
        )
    write_nifti(out / "sample_healthy.nii.gz", result.healthy, like=scan)
    write_nifti(out / "sample_anomaly.nii.gz", result.anomaly, like=scan)
    write_nifti(out / "sample_mask.nii.gz", result.lesion_mask, like=scan, dtype="uint8")
    metrics = evaluate(result.anomaly, truth, mask=brain, threshold=result.threshold)
    record = {
        **result.provenance,
        "threshold_rule": f"{HEALTHY_PERCENTILE:g}th percentile on the healthy sample",
        "model_calibrated_threshold": calibrated,
        "metrics_vs_truth": metrics,
    }
    atomic_write_text(out / "sample.json", json.dumps(record, indent=2) + "\n")
    title = (
        f"{DEMO_METHOD} on the lesion sample, axial slice {{slice}}, threshold "
        f"{result.threshold:.3g} ({HEALTHY_PERCENTILE:g}th percentile on the healthy sample)"
    )
    figure = overview_figure(scan, result, out / "sample_overview.png", truth=truth, title=title)
    lesions = result.provenance["lesions"]
    truth_ml = truth.sum() * float(np.prod(scan.spacing)) / 1000
    print(
        f"{lesions['count']} lesion(s), {lesions['total_volume_ml']:.1f} mL (truth "
        f"{truth_ml:.1f} mL); voxel AUROC {metrics['auroc']:.3f}, "
        f"AP {metrics['ap']:.3f}, best Dice {metrics['best_dice']:.3f}, Dice at threshold "
        f"{metrics['dice_at_threshold']:.3f}; "
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


#: Stacked on the right, Detect above Threshold (its lesion table takes the spare height).
WIDGETS = ("Detect anomalies", "Threshold")
#: Docked as tabs behind Threshold: used less often during a reading.
TABBED_WIDGETS = ("Figure", "Compare methods", "Load scan", "Case browser", "Train")


def dock_widgets(viewer) -> dict:
    """Dock the napari-uad widgets on the right of ``viewer`` and fit the window to its screen.

    Detect sits above Threshold; Figure, Compare methods, Load scan, Case browser and Train are
    tabs beside Threshold. When the screen is too short for Detect and Threshold one above the
    other, Threshold becomes a tab beside Detect too, so the canvas keeps the height.

    Returns
    -------
    dict
        Display name -> widget.
    """
    from qtpy.QtCore import Qt

    widgets, docks = {}, {}
    for name in WIDGETS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget("napari-uad", name)
    for name in TABBED_WIDGETS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(
            "napari-uad", name, tabify=True
        )
    window = viewer.window._qt_window
    available = _available_geometry(window)
    if available is not None:
        # The stacked docks are the tallest column: tab them when they cannot fit.
        stacked = sum(docks[name].minimumSizeHint().height() for name in WIDGETS)
        if stacked + 80 > available.height():
            window.tabifyDockWidget(docks["Detect anomalies"], docks["Threshold"])
        window.setGeometry(available)
    docks["Threshold"].show()
    docks["Threshold"].raise_()
    docks["Detect anomalies"].raise_()
    window.resizeDocks(
        [docks["Detect anomalies"]], [max(360, window.width() // 4)], Qt.Orientation.Horizontal
    )
    return widgets


def _available_geometry(window):
    """The part of the window's screen not taken by task bars, or None without a screen."""
    from qtpy.QtWidgets import QApplication

    screen = window.screen() if hasattr(window, "screen") else None
    screen = screen or QApplication.primaryScreen()
    return screen.availableGeometry() if screen is not None else None


def start_demo_in_viewer(
    viewer, *, device: str = "auto", method: str = DEMO_METHOD, model=None, percentile=None
):
    """Add the lesion sample to ``viewer``, dock the widgets and run Detect on the sample.

    First the threshold is calibrated on the healthy sample (:func:`sample_thresholds`, in a
    background thread); then the Detect widget runs ``method`` on the lesion sample at that
    threshold, and a notification says which method and threshold the demo uses, and why.

    Parameters
    ----------
    viewer : napari.Viewer
    device : str
    method : str
    model : str or path, optional
        Model name or folder (default: the method's shipped model).
    percentile : float, optional
        Of the healthy sample's scores (default :data:`HEALTHY_PERCENTILE`).

    Returns
    -------
    worker
        The calibration worker (already started); when it returns, Detect starts, and the
        result layers appear, and the Threshold widget picks up the anomaly map, when
        Detect finishes.
    """
    from napari.qt.threading import thread_worker

    from ._napari import outline_labels, sample_lesion
    from .display import apply_view_choice
    from .widgets._common import error_text, show_error, show_info

    for data, meta, kind in sample_lesion():
        layer = getattr(viewer, f"add_{kind}")(data, **meta)
        if kind == "labels":
            outline_labels(layer)
    # World coordinates are scanner mm; the camera shows them in the radiological convention.
    apply_view_choice(viewer)
    # Name the slider's axis (napari labels it "-3" otherwise).
    viewer.dims.axis_labels = ("axial slice", "anterior-posterior", "right-left")
    widgets = dock_widgets(viewer)
    detect = widgets["Detect anomalies"]
    detect.set_params(layer="T1 with lesions", method=method, device=device)
    if model is not None:
        detect.set_params(model=model)
    model = detect.params().model
    detect.status_label.setText(f"Demo: calibrating {method}'s threshold on the healthy sample…")

    chosen = HEALTHY_PERCENTILE if percentile is None else float(percentile)

    def calibrated():
        return sample_thresholds(method, model=model, device=device, percentile=chosen)

    def start(result):
        threshold, own = result
        # The fields stay editable while calibrating: run what was calibrated.
        detect.set_params(layer="T1 with lesions", method=method, model=model)
        show_info(explanation(method, threshold, own, percentile=chosen))
        detect.run(threshold=threshold)
        if detect.worker is None:
            show_error("the demo could not start: " + detect.status_label.text())

    worker = thread_worker(calibrated, start_thread=False, ignore_errors=True)()
    worker.returned.connect(start)
    worker.errored.connect(lambda error: show_error(f"Demo: {error_text(error)}"))
    worker.start()
    return worker

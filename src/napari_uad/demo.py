"""``napari-uad demo``: the shipped lesion sample through the whole pipeline.

With a display it opens napari with the sample, runs anomaly detection in a background thread
(progress in napari's activity panel) and adds the pseudo-healthy image, the heatmap and the lesion
mask as layers. Without one it writes the NIfTI outputs and a PNG figure to a folder.
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


def start_demo_in_viewer(viewer, *, device: str = "auto", model=None):
    """Add the lesion sample to ``viewer`` and run detection in a thread worker.

    ``model`` is a model name or folder (default: the shipped ``anoddpm`` model).

    Returns the worker (already started); result layers appear when it finishes.
    """
    from napari.qt.threading import thread_worker
    from napari.utils import progress as napari_progress

    from ._napari import sample_lesion, scan_layer
    from .io import read_mask, read_scan
    from .pipeline import iter_detect
    from .samples import sample_path

    for data, meta, kind in sample_lesion():
        getattr(viewer, f"add_{kind}")(data, **meta)
    scan = read_scan(sample_path("lesion"))
    brain = read_mask(sample_path("brain_mask"), like=scan)

    @thread_worker
    def work():
        return (
            yield from iter_detect(
                scan, method="anoddpm", model=model, brain_mask=brain, device=device
            )
        )

    bar = napari_progress(desc="Detecting anomalies (anoddpm)")

    def advance(update):
        bar.total = update.total
        bar.update(update.done - bar.n)

    def show(result):
        healthy = scan_layer(scan.with_data(result.healthy), name="pseudo-healthy", kind="image")
        viewer.add_image(healthy[0], **healthy[1])
        anomaly = scan_layer(scan.with_data(result.anomaly), name="anomaly map", kind="image")
        anomaly[1].update(
            colormap="hot",
            blending="additive",
            opacity=0.8,
            # Saturate at twice the healthy threshold: healthy tissue stays dark, lesions glow.
            contrast_limits=(0.0, float(max(2 * result.threshold, 1e-6))),
            metadata={**anomaly[1]["metadata"], "provenance": result.provenance},
        )
        viewer.add_image(anomaly[0], **anomaly[1])
        mask = scan_layer(scan.with_data(result.lesion_mask), name="lesion mask", kind="labels")
        viewer.add_labels(mask[0], **mask[1])

    worker = work()
    worker.yielded.connect(advance)
    worker.returned.connect(show)
    worker.finished.connect(bar.close)
    worker.errored.connect(lambda error: _notify(f"napari-uad demo failed: {error}"))
    worker.start()
    return worker


def _notify(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)

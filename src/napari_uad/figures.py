"""Publication figures with matplotlib (no GUI): scan, pseudo-healthy, heatmap, lesion mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .display import to_display
from .io.atomic import atomic_write


def overview_figure(
    scan,
    detection,
    path,
    *,
    truth: np.ndarray | None = None,
    slice_index: int | None = None,
    scale_bar_mm: float = 20.0,
    dpi: int = 150,
) -> Path:
    """Save a 4-panel figure of one axial slice: scan, pseudo-healthy, anomaly map, lesion mask.

    Parameters
    ----------
    scan : Scan
    detection : Detection
        From :func:`napari_uad.pipeline.detect`.
    path : path
        ``.png``, ``.svg`` or ``.pdf``; written atomically.
    truth : (X, Y, Z) bool ndarray, optional
        Ground truth, drawn as a green outline on the mask panel.
    slice_index : int, optional
        Axial display slice; by default the slice with the largest anomaly mass.
    scale_bar_mm : float
        Length of the scale bar.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"figure format {path.suffix!r} not supported: use .png, .svg or .pdf")
    image, scale = to_display(scan.data, scan.affine)
    healthy, _ = to_display(detection.healthy, scan.affine)
    anomaly, _ = to_display(detection.anomaly, scan.affine)
    mask, _ = to_display(detection.lesion_mask, scan.affine)
    truth_display = to_display(truth, scan.affine)[0] if truth is not None else None
    if slice_index is None:
        slice_index = int(np.argmax(anomaly.reshape(len(anomaly), -1).sum(axis=1)))
    aspect = scale[1] / scale[2]
    brain = image[slice_index] > 0
    low, high = np.percentile(image[slice_index][brain], [0.5, 99.5]) if brain.any() else (0, 1)
    vmax = max(
        float(np.percentile(anomaly[anomaly > 0], 99.5)) if (anomaly > 0).any() else 1.0, 1e-6
    )

    figure = Figure(figsize=(12, 3.6), layout="constrained")
    axes = figure.subplots(1, 4)
    panels = [
        ("Scan", image),
        ("Pseudo-healthy", healthy),
        ("Anomaly map", None),
        ("Lesion mask", None),
    ]
    for ax, (title, data) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_axis_off()
        background = data if data is not None else image
        ax.imshow(
            background[slice_index],
            cmap="gray",
            vmin=low,
            vmax=high,
            aspect=aspect,
            interpolation="nearest",
        )
    heat = np.ma.masked_less_equal(anomaly[slice_index], 0)
    shown = axes[2].imshow(
        heat, cmap="hot", vmin=0, vmax=vmax, alpha=0.85, aspect=aspect, interpolation="nearest"
    )
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02, label="anomaly score")
    lesion = np.ma.masked_equal(mask[slice_index], 0)
    axes[3].imshow(lesion, cmap="autumn", alpha=0.7, aspect=aspect, interpolation="nearest")
    if truth_display is not None and truth_display[slice_index].any():
        axes[3].contour(truth_display[slice_index] > 0, levels=[0.5], colors="lime", linewidths=1.0)
        axes[3].set_title("Lesion mask (truth: green)")
    pixels = scale_bar_mm / scale[2]
    rows, cols = image.shape[1:]
    axes[0].plot([cols * 0.05, cols * 0.05 + pixels], [rows * 0.94] * 2, color="white", lw=3)
    axes[0].text(cols * 0.05, rows * 0.90, f"{scale_bar_mm:g} mm", color="white", fontsize=8)
    figure.suptitle(
        f"{detection.provenance['method']} ({detection.provenance['model']}), axial slice "
        f"{slice_index}, threshold {detection.threshold:.3g}",
        fontsize=10,
    )
    atomic_write(
        path, lambda temp: figure.savefig(temp, dpi=dpi, format=path.suffix[1:]), suffix=path.suffix
    )
    plt.close("all")
    return path

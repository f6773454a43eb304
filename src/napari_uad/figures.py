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
    colorbar: bool = True,
    title: str | None = None,
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
        Length of the scale bar; 0 for none.
    dpi : int
        Resolution of raster output (and of raster parts of SVG/PDF).
    colorbar : bool
        Draw the anomaly score colour bar.
    title : str, optional
        Figure title (``{slice}`` is replaced by the slice index); by default the method, model,
        slice and threshold.
    """
    provenance = detection.provenance
    title = title or (
        f"{provenance['method']} ({provenance['model']}), axial slice {{slice}}, "
        f"threshold {detection.threshold:.3g}"
    )
    return comparison_figure(
        scan,
        [(None, detection)],
        path,
        truth=truth,
        slice_index=slice_index,
        scale_bar_mm=scale_bar_mm,
        dpi=dpi,
        colorbar=colorbar,
        title=title,
    )


def comparison_figure(
    scan,
    detections,
    path,
    *,
    truth: np.ndarray | None = None,
    slice_index: int | None = None,
    scale_bar_mm: float = 20.0,
    dpi: int = 150,
    colorbar: bool = True,
    title: str | None = None,
) -> Path:
    """Several detections of one scan side by side: one row of 4 panels per detection.

    Parameters
    ----------
    scan : Scan
    detections : sequence of (label, Detection)
        Each row is titled with its label (e.g. the method and its parameters); each heatmap
        gets its own colour scale (methods score on different scales).
    path : path
        ``.png``, ``.svg`` or ``.pdf``; written atomically.
    truth, slice_index, scale_bar_mm, dpi, colorbar
        As in :func:`overview_figure`; the default slice has the largest anomaly mass of the
        first detection.
    title : str, optional
        Figure title; ``{slice}`` is replaced by the slice index.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    path = _figure_path(path)
    detections = list(detections)
    if not detections:
        raise ValueError("no detection to draw")
    image, scale = to_display(scan.data, scan.affine)
    truth_display = to_display(truth, scan.affine)[0] if truth is not None else None
    if slice_index is None:
        first, _ = to_display(detections[0][1].anomaly, scan.affine)
        slice_index = int(np.argmax(first.reshape(len(first), -1).sum(axis=1)))
    aspect = scale[1] / scale[2]
    brain = image[slice_index] > 0
    low, high = np.percentile(image[slice_index][brain], [0.5, 99.5]) if brain.any() else (0, 1)

    rows = len(detections)
    figure = Figure(figsize=(12, 3.4 * rows + 0.3), layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, 4))
    for row, (label, detection) in zip(axes, detections, strict=True):
        healthy, _ = to_display(detection.healthy, scan.affine)
        anomaly, _ = to_display(detection.anomaly, scan.affine)
        mask, _ = to_display(detection.lesion_mask, scan.affine)
        positive = anomaly[anomaly > 0]
        vmax = max(float(np.percentile(positive, 99.5)) if positive.size else 1.0, 1e-6)
        panels = [("Scan", image), ("Pseudo-healthy", healthy), ("Anomaly map", image)]
        panels.append(("Lesion mask", image))
        for ax, (name, data) in zip(row, panels, strict=True):
            ax.set_title(name if label is None else f"{label}\n{name}", fontsize=9)
            ax.set_axis_off()
            ax.imshow(
                data[slice_index],
                cmap="gray",
                vmin=low,
                vmax=high,
                aspect=aspect,
                interpolation="nearest",
            )
        heat = np.ma.masked_less_equal(anomaly[slice_index], 0)
        shown = row[2].imshow(
            heat, cmap="hot", vmin=0, vmax=vmax, alpha=0.85, aspect=aspect, interpolation="nearest"
        )
        if colorbar:
            figure.colorbar(shown, ax=row[2], fraction=0.046, pad=0.02, label="anomaly score")
        lesion = np.ma.masked_equal(mask[slice_index], 0)
        row[3].imshow(lesion, cmap="autumn", alpha=0.7, aspect=aspect, interpolation="nearest")
        if truth_display is not None and truth_display[slice_index].any():
            row[3].contour(
                truth_display[slice_index] > 0, levels=[0.5], colors="lime", linewidths=1.0
            )
            row[3].set_title(row[3].get_title() + " (truth: green)", fontsize=9)
    for ax in axes[:, 0]:
        _side_marks(ax, image.shape[1:])
    if scale_bar_mm > 0:
        _scale_bar(axes[0, 0], image.shape[1:], scale_bar_mm, mm_per_pixel=scale[2])
    figure.suptitle((title or "axial slice {slice}").format(slice=slice_index), fontsize=10)
    _save(figure, path, dpi)
    plt.close("all")
    return path


def view_figure(
    image,
    path,
    *,
    mm_per_pixel: float | None = None,
    scale_bar_mm: float = 20.0,
    colormap=None,
    contrast_limits: tuple[float, float] | None = None,
    colorbar_label: str = "anomaly score",
    dpi: int = 300,
    pixels_per_inch: float = 100.0,
) -> Path:
    """Save a rendered view (e.g. a napari screenshot) with a colour bar and a scale bar.

    Parameters
    ----------
    image : (H, W, 3 or 4) uint8 ndarray
        The rendered view.
    path : path
        ``.png``, ``.svg`` or ``.pdf``; written atomically.
    mm_per_pixel : float, optional
        Physical size of one pixel of ``image``; no scale bar when None.
    scale_bar_mm : float
        Length of the scale bar; 0 for none.
    colormap : matplotlib colormap or (N, 3 or 4) array of RGB(A) in [0, 1], optional
        Colormap of the heatmap; no colour bar when None.
    contrast_limits : (float, float), optional
        Scores at the two ends of the colormap.
    dpi : int
        Output resolution; ``image`` fills ``W / pixels_per_inch`` inches.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    path = _figure_path(path)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.size == 0:
        raise ValueError(f"image must be an (H, W, 3 or 4) RGB(A) array, got {image.shape}")
    rows, cols = image.shape[:2]
    with_colorbar = colormap is not None and contrast_limits is not None
    width = cols / pixels_per_inch + (1.0 if with_colorbar else 0.0)
    figure = Figure(figsize=(width, rows / pixels_per_inch), layout="constrained")
    ax = figure.add_subplot()
    ax.imshow(image[..., :3], interpolation="nearest")
    ax.set_axis_off()
    if mm_per_pixel and scale_bar_mm > 0:
        length = scale_bar_mm / mm_per_pixel
        x0, y0 = cols * 0.05, rows * 0.95
        ax.plot([x0, x0 + length], [y0, y0], color="white", lw=3, solid_capstyle="butt")
        ax.text(x0, y0 - rows * 0.02, f"{scale_bar_mm:g} mm", color="white", fontsize=9)
    if with_colorbar:
        if not hasattr(colormap, "N"):
            colormap = ListedColormap(np.asarray(colormap, dtype=float)[:, :3])
        mappable = ScalarMappable(norm=Normalize(*contrast_limits), cmap=colormap)
        figure.colorbar(mappable, ax=ax, fraction=0.05, pad=0.02, label=colorbar_label)
    _save(figure, path, dpi)
    return path


def methods_figure(
    scan,
    detections,
    path,
    *,
    truth: np.ndarray | None = None,
    metrics: list[dict | None] | None = None,
    slice_index: int | None = None,
    scale_bar_mm: float = 20.0,
    dpi: int = 150,
    title: str | None = None,
) -> Path:
    """Methods side by side on one slice: a column per method, rows pseudo-healthy, heatmap
    and lesion mask; the first column shows the scan (and the truth outline).

    Parameters
    ----------
    scan : Scan
    detections : sequence of (label, Detection)
        One column each; each heatmap has its own colour bar (methods score on different
        scales).
    path : path
        ``.png``, ``.svg`` or ``.pdf``; written atomically.
    truth : (X, Y, Z) ndarray, optional
        Lesion truth, outlined in green on the scan and on every mask.
    metrics : list of dict or None, optional
        Per detection, ``auroc``/``ap``/``best_dice`` shown under its column title.
    slice_index : int, optional
        Axial display slice; by default the one with the most truth voxels, else the largest
        anomaly mass of the first detection.
    scale_bar_mm, dpi, title
        As in :func:`comparison_figure`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    path = _figure_path(path)
    detections = list(detections)
    if not detections:
        raise ValueError("no detection to draw")
    metrics = list(metrics) if metrics is not None else [None] * len(detections)
    image, scale = to_display(scan.data, scan.affine)
    truth_display = to_display(np.asarray(truth) > 0, scan.affine)[0] if truth is not None else None
    if slice_index is None:
        source = truth_display if truth_display is not None and truth_display.any() else None
        if source is None:
            source = to_display(detections[0][1].anomaly, scan.affine)[0]
        slice_index = int(np.argmax(source.reshape(len(source), -1).sum(axis=1)))
    aspect = scale[1] / scale[2]
    plane = image[slice_index]
    brain = plane > 0
    low, high = np.percentile(plane[brain], [0.5, 99.5]) if brain.any() else (0, 1)
    outline = truth_display[slice_index] if truth_display is not None else None
    has_outline = outline is not None and outline.any()

    columns = len(detections) + 1
    figure = Figure(figsize=(2.6 * columns + 0.6, 8.2), layout="constrained")
    axes = figure.subplots(3, columns, squeeze=False)

    def show(ax, data, **style):
        ax.imshow(data, aspect=aspect, interpolation="nearest", **style)
        ax.set_axis_off()

    for ax in axes[:, 0]:
        show(ax, plane, cmap="gray", vmin=low, vmax=high)
    axes[0, 0].set_title("Scan", fontsize=9)
    axes[1, 0].set_title("Scan + truth (green)" if has_outline else "Scan", fontsize=9)
    axes[2, 0].set_visible(False)
    if has_outline:
        axes[1, 0].contour(outline, levels=[0.5], colors="lime", linewidths=1.0)
    for column, ((label, detection), scores) in enumerate(
        zip(detections, metrics, strict=True), start=1
    ):
        healthy = to_display(detection.healthy, scan.affine)[0][slice_index]
        anomaly = to_display(detection.anomaly, scan.affine)[0]
        mask = to_display(detection.lesion_mask, scan.affine)[0][slice_index]
        positive = anomaly[anomaly > 0]
        vmax = max(float(np.percentile(positive, 99.5)) if positive.size else 1.0, 1e-6)
        heading = label
        if scores:
            heading += "\n" + ", ".join(
                f"{name} {scores[key]:.2f}"
                for key, name in (("auroc", "AUROC"), ("ap", "AP"), ("best_dice", "Dice"))
                if key in scores
            )
        axes[0, column].set_title(f"{heading}\npseudo-healthy", fontsize=8)
        show(axes[0, column], healthy, cmap="gray", vmin=low, vmax=high)
        show(axes[1, column], plane, cmap="gray", vmin=low, vmax=high)
        heat = np.ma.masked_less_equal(anomaly[slice_index], 0)
        shown = axes[1, column].imshow(
            heat, cmap="hot", vmin=0, vmax=vmax, alpha=0.85, aspect=aspect, interpolation="nearest"
        )
        axes[1, column].set_title("anomaly map", fontsize=8)
        figure.colorbar(shown, ax=axes[1, column], fraction=0.046, pad=0.02, shrink=0.8)
        show(axes[2, column], plane, cmap="gray", vmin=low, vmax=high)
        axes[2, column].imshow(
            np.ma.masked_equal(mask, 0),
            cmap="autumn",
            alpha=0.7,
            aspect=aspect,
            interpolation="nearest",
        )
        if has_outline:
            axes[2, column].contour(outline, levels=[0.5], colors="lime", linewidths=1.0)
        axes[2, column].set_title(f"lesions (threshold {detection.threshold:.3g})", fontsize=8)
    _side_marks(axes[0, 0], plane.shape)
    if scale_bar_mm > 0:
        _scale_bar(axes[0, 0], plane.shape, scale_bar_mm, mm_per_pixel=scale[2])
    figure.suptitle((title or "axial slice {slice}").format(slice=slice_index), fontsize=10)
    _save(figure, path, dpi)
    plt.close("all")
    return path


def _scale_bar(ax, shape, length_mm: float, *, mm_per_pixel: float) -> None:
    """A white scale bar of ``length_mm`` in the lower left of an image panel of ``shape``."""
    height, width = shape
    start = width * 0.05
    ax.plot([start, start + length_mm / mm_per_pixel], [height * 0.94] * 2, color="white", lw=3)
    ax.text(start, height * 0.90, f"{length_mm:g} mm", color="white", fontsize=8)


def _side_marks(ax, shape) -> None:
    """ "R" and "L" at the edges of an axial panel (radiological: the patient's right on the
    left of the image, see :mod:`napari_uad.display`)."""
    height, width = shape
    for x, text, align in ((width * 0.02, "R", "left"), (width * 0.98, "L", "right")):
        ax.text(
            x,
            height * 0.5,
            text,
            color="white",
            fontsize=9,
            ha=align,
            va="center",
            fontweight="bold",
        )


def _figure_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"figure format {path.suffix!r} not supported: use .png, .svg or .pdf")
    return path


def _save(figure, path: Path, dpi: int) -> None:
    """Write a matplotlib figure atomically in the format of the path's suffix."""
    atomic_write(
        path, lambda temp: figure.savefig(temp, dpi=dpi, format=path.suffix[1:]), suffix=path.suffix
    )

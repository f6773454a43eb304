"""The "Figure" dock widget: publication figures of the current view or of a result's panels.

Two kinds: the current canvas (a napari screenshot) with a colour bar for the heatmap and a
scale bar in mm (:func:`napari_uad.figures.view_figure`), or the four panels scan /
pseudo-healthy / heatmap / lesion mask of the current axial slice
(:func:`napari_uad.figures.overview_figure`). PNG, SVG or PDF at a chosen DPI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..display import camera, from_display
from ._common import (
    current_slice,
    display_affine,
    error_text,
    geometry,
    is_anomaly_layer,
    linked_layer,
    scan_from_layer,
    show_error,
    show_info,
)

FORMATS = ("png", "svg", "pdf")


class FigureWidget(QWidget):
    """Dock widget: export the view or a panel grid as PNG/SVG/PDF.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.kind_combo = QComboBox()
        self.kind_combo.addItem("Current view", "view")
        self.kind_combo.addItem("Panels: scan, pseudo-healthy, heatmap, mask", "panels")
        self.kind_combo.addItem("Panels of every Detect result, side by side", "compare")
        self.anomaly_combo = QComboBox()
        self.anomaly_combo.setToolTip("Heatmap for the colour bar (and the panels' result)")
        self.format_combo = QComboBox()
        for name in FORMATS:
            self.format_combo.addItem(name.upper(), name)
        self.dpi_spin = QSpinBox()
        self.dpi_spin.setRange(50, 1200)
        self.dpi_spin.setValue(300)
        self.dpi_spin.setSuffix(" dpi")
        self.colorbar_check = QCheckBox("Colour bar")
        self.colorbar_check.setChecked(True)
        self.scalebar_check = QCheckBox("Scale bar")
        self.scalebar_check.setChecked(True)
        self.scalebar_spin = QDoubleSpinBox()
        self.scalebar_spin.setRange(1.0, 500.0)
        self.scalebar_spin.setValue(20.0)
        self.scalebar_spin.setSuffix(" mm")
        self.export_button = QPushButton("Export figure…")
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Figure", self.kind_combo)
        form.addRow("Heatmap", self.anomaly_combo)
        form.addRow("Format", self.format_combo)
        form.addRow("Resolution", self.dpi_spin)
        bars = QHBoxLayout()
        bars.addWidget(self.colorbar_check)
        bars.addWidget(self.scalebar_check)
        bars.addWidget(self.scalebar_spin, 1)
        form.addRow("Add", bars)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.export_button.clicked.connect(self._ask_path)
        self.scalebar_check.toggled.connect(self.scalebar_spin.setEnabled)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        self._refresh_layers(select=layer.name if is_anomaly_layer(layer) else None)

    def _refresh_layers(self, *_, select: str | None = None) -> None:
        from napari.layers import Image

        current = select or self.anomaly_combo.currentText()
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        names = [layer.name for layer in reversed(images) if is_anomaly_layer(layer)]
        names += [layer.name for layer in images if not is_anomaly_layer(layer)]
        self.anomaly_combo.clear()
        self.anomaly_combo.addItem("(none)", None)
        for name in names:
            self.anomaly_combo.addItem(name, name)
        index = self.anomaly_combo.findText(current) if current in names else -1
        self.anomaly_combo.setCurrentIndex(index if index >= 0 else min(1, len(names)))

    def anomaly_layer(self):
        """The heatmap layer chosen for the colour bar, or None."""
        name = self.anomaly_combo.currentData()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def export(self, path) -> Path:
        """Write the chosen figure to ``path`` (its suffix, or the chosen format, decides).

        Returns
        -------
        Path
            The file written.
        """
        path = Path(path)
        if path.suffix.lower().lstrip(".") not in FORMATS:
            path = path.with_name(path.name + "." + self.format_combo.currentData())
        if self.kind_combo.currentData() == "panels":
            return self._export_panels(path, [self.anomaly_layer()])
        if self.kind_combo.currentData() == "compare":
            from napari.layers import Image

            layers = [
                layer
                for layer in self.viewer.layers
                if isinstance(layer, Image) and is_anomaly_layer(layer)
            ]
            if not layers:
                raise ValueError("no Detect results to compare: run Detect first")
            return self._export_panels(path, layers)
        return self._export_view(path)

    def _export_view(self, path: Path) -> Path:
        from ..figures import view_figure

        dpi = self.dpi_spin.value()
        # The canvas as shown: napari's screenshot ``scale`` enlarges the field of view rather
        # than the resolution, so the figure keeps screen resolution, drawn at ``dpi``.
        image = self.viewer.screenshot(canvas_only=True, flash=False)
        mm_per_pixel = None
        if self.scalebar_check.isChecked():
            mm_per_pixel = self._mm_per_pixel(image.shape[1])
        anomaly = self.anomaly_layer() if self.colorbar_check.isChecked() else None
        colormap = limits = None
        if anomaly is not None:
            colormap = np.asarray(anomaly.colormap.colors)
            limits = tuple(float(v) for v in anomaly.contrast_limits)
        written = view_figure(
            image,
            path,
            mm_per_pixel=mm_per_pixel,
            scale_bar_mm=self.scalebar_spin.value(),
            colormap=colormap,
            contrast_limits=limits,
            dpi=dpi,
        )
        if self.scalebar_check.isChecked() and mm_per_pixel is None:
            show_info("No scale bar: it is drawn only for 2-D views")
        return written

    def _mm_per_pixel(self, image_width: int) -> float | None:
        """World units (mm for napari-uad layers) per screenshot pixel, 2-D views only."""
        if self.viewer.dims.ndisplay != 2:
            return None
        try:  # the canvas in logical pixels, the unit of the camera's zoom
            canvas_width = self.viewer.window._qt_viewer.canvas.size[1]
        except AttributeError:  # private napari API: assume one screenshot pixel per point
            canvas_width = image_width
        zoom = float(camera(self.viewer).zoom)  # canvas pixels per world unit
        return float(canvas_width) / (zoom * image_width)

    def _export_panels(self, path: Path, anomalies: list) -> Path:
        """One row of scan / pseudo-healthy / heatmap / mask panels per anomaly layer."""
        from ..figures import comparison_figure, overview_figure

        if not anomalies or anomalies[0] is None:
            raise ValueError("choose a heatmap (an anomaly map from the Detect widget)")
        rows = [self._detection_of(anomaly) for anomaly in anomalies]
        scan = rows[0][0]
        first = anomalies[0]
        slice_index = current_slice(self.viewer, first)
        options = dict(
            slice_index=slice_index,
            scale_bar_mm=self.scalebar_spin.value() if self.scalebar_check.isChecked() else 0,
            dpi=self.dpi_spin.value(),
            colorbar=self.colorbar_check.isChecked(),
        )
        if len(rows) == 1:
            return overview_figure(scan, rows[0][1], path, **options)
        labels = [anomaly.name.split(" · ", 1)[-1] for anomaly in anomalies]
        detections = [
            (label, detection) for label, (_, detection) in zip(labels, rows, strict=True)
        ]
        return comparison_figure(scan, detections, path, **options)

    def _detection_of(self, anomaly):
        """The scan and a :class:`~napari_uad.pipeline.Detection` rebuilt from a result's layers."""
        from ..pipeline import Detection

        roles = {role: linked_layer(self.viewer, anomaly, role) for role in ("scan", "healthy")}
        roles["mask"] = linked_layer(self.viewer, anomaly, "mask")
        missing = [role for role, layer in roles.items() if layer is None]
        if missing:
            raise ValueError(
                f"the {', '.join(missing)} layer(s) of {anomaly.name!r} are gone: the panels need "
                "a Detect result with its scan, pseudo-healthy and lesion layers"
            )
        scan = scan_from_layer(roles["scan"])
        info = geometry(anomaly)
        affine = np.asarray(info["affine"]) if info else display_affine(anomaly.scale[-3:])

        def file_grid(layer, dtype):
            return from_display(np.asarray(layer.data), affine).astype(dtype)

        provenance = (info or {}).get("provenance") or {"method": "?", "model": anomaly.name}
        mask_info = geometry(roles["mask"]) or {}
        detection = Detection(
            healthy=file_grid(roles["healthy"], np.float32),
            anomaly=file_grid(anomaly, np.float32),
            lesion_mask=(file_grid(roles["mask"], np.int32) > 0).astype(np.uint8),
            brain_mask=None,
            threshold=float(mask_info.get("threshold", (info or {}).get("threshold", 0.0))),
            provenance=provenance,
        )
        return scan, detection

    def _ask_path(self) -> None:
        fmt = self.format_combo.currentData()
        path, _ = QFileDialog.getSaveFileName(
            self, "Export figure", f"figure.{fmt}", f"{fmt.upper()} (*.{fmt})"
        )
        if not path:
            return
        try:
            written = self.export(path)
        except Exception as error:
            show_error(f"Figure: {error_text(error)}")
            return
        self.status_label.setText(f"Wrote {written}")
        show_info(f"Wrote {written}")

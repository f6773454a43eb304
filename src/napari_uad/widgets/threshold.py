"""The "Threshold" dock widget: anomaly map -> live lesion mask, lesion table, exports.

Everything runs on the main thread because one update is a few tens of milliseconds on a
256×256×24 volume (:func:`napari_uad.postprocess.threshold_lesions` labels once); slider moves
are coalesced so a fast drag never queues up work. The median-filtered map is cached per
filter size, so only a change of filter pays for the filter.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ..display import camera, from_display
from ._common import (
    KEY,
    display_affine,
    error_text,
    geometry,
    is_anomaly_layer,
    linked_layer,
    placement_of,
    show_error,
    show_info,
)

#: Rows shown in the lesion table (largest lesions first); the CSV export has them all.
MAX_TABLE_ROWS = 200
MEDIAN_SIZES = (1, 3, 5)


def filtered_map(anomaly: np.ndarray, size: int) -> np.ndarray:
    """The display-ordered (Z, Y, X) anomaly map median filtered in-plane (``size`` 1: as is)."""
    from ..postprocess import median_filter

    anomaly = np.asarray(anomaly, dtype=np.float32)
    if size <= 1:
        return anomaly
    return np.moveaxis(median_filter(np.moveaxis(anomaly, 0, -1), size=size), -1, 0)


class ThresholdWidget(QWidget):
    """Dock widget: threshold an anomaly map into a labelled lesion mask, live.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.lesions: list = []
        self.labels: np.ndarray | None = None
        self.last_update_ms = float("nan")
        self._anomaly_name: str | None = None
        self._watched = None
        self._filtered: dict[int, np.ndarray] = {}
        self._pending = QTimer(self)
        self._pending.setSingleShot(True)
        self._pending.setInterval(0)
        self._pending.timeout.connect(self.update_mask)

        self.anomaly_combo = QComboBox()
        self.threshold_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setDecimals(4)
        self.threshold_slider.setRange(0.0, 1.0)
        self.auto_button = QPushButton("Auto")
        self.auto_button.setToolTip("The model's threshold calibrated on healthy scans")
        self.pick_button = QPushButton("Pick")
        self.pick_button.setCheckable(True)
        self.pick_button.setToolTip(
            "Click on the image to set the threshold to the score of the voxel under the mouse"
        )
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 100_000)
        self.min_size_spin.setSuffix(" voxels")
        self.min_size_spin.setToolTip("Lesions with fewer voxels are dropped")
        self.median_combo = QComboBox()
        for size in MEDIAN_SIZES:
            self.median_combo.addItem("off" if size == 1 else f"{size}×{size} in-plane", size)
        self.summary_label = QLabel("No anomaly map")
        self.summary_label.setWordWrap(True)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(
            ["ID", "Volume (mL)", "Mean score", "Max score", "Centroid (z, y, x)"]
        )
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip("Click a lesion to go to it")
        self.table.setMinimumHeight(120)
        self.csv_button = QPushButton("Export table (CSV)…")
        self.mask_button = QPushButton("Export mask (NIfTI)…")

        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold_slider, 1)
        threshold_row.addWidget(self.auto_button)
        threshold_row.addWidget(self.pick_button)
        form = QFormLayout()
        form.addRow("Anomaly map", self.anomaly_combo)
        form.addRow("Threshold", threshold_row)
        form.addRow("Min. size", self.min_size_spin)
        form.addRow("Median filter", self.median_combo)
        exports = QHBoxLayout()
        exports.addWidget(self.csv_button)
        exports.addWidget(self.mask_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(exports)

        self.anomaly_combo.currentIndexChanged.connect(self._on_anomaly_changed)
        self.threshold_slider.valueChanged.connect(self.schedule_update)
        self.min_size_spin.valueChanged.connect(self.schedule_update)
        self.median_combo.currentIndexChanged.connect(self.schedule_update)
        self.auto_button.clicked.connect(self.set_auto)
        self.pick_button.toggled.connect(self._on_pick_toggled)
        self.table.cellClicked.connect(lambda row, _column: self.go_to_lesion(row))
        self.csv_button.clicked.connect(self._ask_csv)
        self.mask_button.clicked.connect(self._ask_mask)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ----------------------------------------------------------------- layers
    def _refresh_layers(self, *_, select: str | None = None) -> None:
        from napari.layers import Image

        current = select or self.anomaly_combo.currentText()
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        # Anomaly maps from the Detect widget first, newest first; other images after.
        names = [layer.name for layer in reversed(images) if is_anomaly_layer(layer)]
        names += [layer.name for layer in images if not is_anomaly_layer(layer)]
        self.anomaly_combo.blockSignals(True)
        self.anomaly_combo.clear()
        self.anomaly_combo.addItems(names)
        if current in names:
            self.anomaly_combo.setCurrentText(current)
        elif not any(is_anomaly_layer(layer) for layer in images):
            self.anomaly_combo.setCurrentIndex(-1)  # never threshold a plain scan unasked
        self.anomaly_combo.blockSignals(False)
        if self.anomaly_combo.currentText() != self._anomaly_name:
            self._on_anomaly_changed()

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        self._refresh_layers(select=layer.name if is_anomaly_layer(layer) else None)
        anomaly = self.anomaly_layer()
        mask = linked_layer(self.viewer, anomaly, "mask") if anomaly is not None else None
        # By name, not identity: napari hands plugin widgets a proxy viewer whose every
        # attribute access wraps the layer in a new proxy object.
        if mask is not None and mask.name == layer.name:
            self.schedule_update()  # the Detect widget adds the mask after the map

    def anomaly_layer(self):
        """The anomaly map layer being thresholded, or None."""
        name = self.anomaly_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def mask_layer(self, *, create: bool = False):
        """The labels layer the mask is written to (the Detect run's lesion layer)."""
        anomaly = self.anomaly_layer()
        if anomaly is None:
            return None
        linked = linked_layer(self.viewer, anomaly, "mask")
        if linked is not None:
            return linked
        if ((geometry(anomaly) or {}).get("links") or {}).get("mask"):
            return None  # the Detect widget is about to add it
        name = f"lesions · {anomaly.name}"
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        if not create:
            return None
        metadata = {KEY: {**(geometry(anomaly) or {}), "role": "mask"}}
        return self.viewer.add_labels(
            np.zeros(anomaly.data.shape, dtype=np.int32),
            name=name,
            **placement_of(anomaly, ndim=anomaly.ndim),
            opacity=0.7,
            metadata=metadata,
        )

    def _on_anomaly_changed(self, *_) -> None:
        layer = self.anomaly_layer()
        if self._watched is not None:
            self._watched.events.data.disconnect(self._on_anomaly_data)
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self._on_anomaly_data)
        self._filtered.clear()
        self._anomaly_name = layer.name if layer is not None else None
        self.labels, self.lesions = None, []
        if layer is None:
            self.summary_label.setText("No anomaly map: run Detect first")
            self.table.setRowCount(0)
            return
        data = np.asarray(layer.data)
        if data.ndim not in (2, 3) or getattr(layer, "rgb", False):
            self.summary_label.setText(f"{layer.name!r} is not a 2-D or 3-D map")
            return
        finite = data[np.isfinite(data)]
        high = float(finite.max()) if finite.size else 1.0
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setRange(0.0, max(high, 1e-6))
        self.threshold_slider.setValue(self._initial_threshold(layer, finite))
        self.threshold_slider.blockSignals(False)
        self.auto_button.setEnabled(self.calibrated_threshold() is not None)
        self.schedule_update()

    def _on_anomaly_data(self, *_) -> None:
        """The map was replaced (a new Detect run with the same name): start again from it."""
        self._on_anomaly_changed()

    def _initial_threshold(self, layer, finite) -> float:
        info = geometry(layer) or {}
        if info.get("threshold") is not None:
            return float(info["threshold"])
        positive = finite[finite > 0]
        return float(np.percentile(positive, 99)) if positive.size else 0.0

    def calibrated_threshold(self) -> float | None:
        """The model's healthy threshold stored on the anomaly layer, or None."""
        layer = self.anomaly_layer()
        value = (geometry(layer) or {}).get("calibrated_threshold") if layer else None
        return None if value is None else float(value)

    # ----------------------------------------------------------------- actions
    def set_threshold(self, value: float) -> None:
        """Set the threshold (clipped to the slider's range); the mask follows."""
        self.threshold_slider.setValue(float(value))

    def set_auto(self) -> None:
        """Use the model's calibrated healthy threshold."""
        value = self.calibrated_threshold()
        if value is None:
            show_error(
                "Threshold: this anomaly map has no calibrated threshold (model not calibrated)"
            )
            return
        self.set_threshold(value)

    def _on_pick_toggled(self, checked: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if checked and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not checked and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, viewer, event) -> None:
        """Mouse press with "Pick" on: threshold := the score of the voxel under the mouse."""
        if event.type != "mouse_press":
            return
        if viewer.dims.ndisplay == 3:
            # In 3-D the click is a ray: napari picks the value along it as rendered.
            layer = self.anomaly_layer()
            value = None
            if layer is not None:
                value = layer.get_value(
                    event.position,
                    view_direction=event.view_direction,
                    dims_displayed=event.dims_displayed,
                    world=True,
                )
            value = float(value) if isinstance(value, (int, float, np.number)) else None
        else:
            value = self.score_at(event.position)
        if value is not None:
            self.set_threshold(value)
            self.update_mask()

    def score_at(self, world_position) -> float | None:
        """The (filtered) anomaly score at a world position, None outside the map."""
        layer = self.anomaly_layer()
        if layer is None:
            return None
        index = np.round(np.asarray(layer.world_to_data(world_position))[-layer.ndim :])
        shape = np.asarray(layer.data.shape)
        if np.any(index < 0) or np.any(index >= shape):
            return None
        score = self._current_map()[tuple(int(i) for i in index)]
        return float(score) if np.isfinite(score) else None

    def _current_map(self) -> np.ndarray:
        size = int(self.median_combo.currentData() or 1)
        if size not in self._filtered:
            layer = self.anomaly_layer()
            data = np.nan_to_num(np.asarray(layer.data, dtype=np.float32), nan=0.0)
            self._filtered[size] = filtered_map(data, size) if data.ndim == 3 else data
        return self._filtered[size]

    def schedule_update(self, *_) -> None:
        """Recompute the mask at the next event-loop turn (coalesces fast slider moves)."""
        self._pending.start()

    def update_mask(self) -> float:
        """Threshold, drop small lesions, label, refresh the labels layer and the table.

        Returns
        -------
        float
            Milliseconds the update took (also kept in ``last_update_ms``).
        """
        from ..postprocess import threshold_lesions

        self._pending.stop()
        layer = self.anomaly_layer()
        if layer is None or np.asarray(layer.data).ndim not in (2, 3):
            return float("nan")
        started = time.perf_counter()
        try:
            scores = self._current_map()
            threshold = max(float(self.threshold_slider.value()), np.finfo(np.float32).tiny)
            labels, lesions = threshold_lesions(
                scores,
                threshold,
                spacing=tuple(float(s) for s in layer.scale[-scores.ndim :]),
                min_size=self.min_size_spin.value(),
            )
            mask = self.mask_layer(create=True)
            if mask is None:
                return float("nan")
            mask.data = labels
            info = mask.metadata.setdefault(KEY, {})
            info.update(
                threshold=threshold,
                min_size=self.min_size_spin.value(),
                median_size=int(self.median_combo.currentData() or 1),
            )
        except Exception as error:
            show_error(f"Threshold: {error_text(error)}")
            return float("nan")
        self.labels, self.lesions = labels, lesions
        self._fill_table()
        self.last_update_ms = (time.perf_counter() - started) * 1000
        return self.last_update_ms

    def _fill_table(self) -> None:
        lesions = self.lesions
        total = sum(lesion.volume_ml for lesion in lesions)
        text = f"{len(lesions)} lesion(s), {total:.2f} mL in total"
        if len(lesions) > MAX_TABLE_ROWS:
            text += f" (table shows the {MAX_TABLE_ROWS} largest; the CSV has all)"
        self.summary_label.setText(text)
        shown = lesions[:MAX_TABLE_ROWS]
        self.table.setUpdatesEnabled(False)
        self.table.setRowCount(len(shown))
        for row, lesion in enumerate(shown):
            centroid = ", ".join(f"{c:.0f}" for c in lesion.centroid_voxel)
            cells = (
                str(lesion.label),
                f"{lesion.volume_ml:.3f}",
                f"{lesion.mean_score:.3g}",
                f"{lesion.max_score:.3g}",
                centroid,
            )
            for column, text in enumerate(cells):
                item = self.table.item(row, column)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(row, column, item)
                item.setText(text)
        self.table.setUpdatesEnabled(True)

    def go_to_lesion(self, row: int) -> None:
        """Centre the view on lesion ``row`` of the table (its axial slice, its centre)."""
        if not 0 <= row < len(self.lesions):
            return
        layer = self.anomaly_layer()
        lesion = self.lesions[row]
        world = np.asarray(layer.data_to_world(lesion.centroid_voxel), dtype=float)
        ndim = self.viewer.dims.ndim
        point = list(self.viewer.dims.point)
        point[ndim - len(world) :] = world
        self.viewer.dims.point = point
        displayed = list(self.viewer.dims.displayed)
        camera(self.viewer).center = tuple(point[axis] for axis in displayed)
        mask = self.mask_layer()
        if mask is not None:
            mask.selected_label = lesion.label

    # ----------------------------------------------------------------- exports
    def _file_geometry(self):
        """``(affine, metadata)`` mapping display arrays back to the file grid."""
        layer = self.anomaly_layer()
        info = geometry(layer)
        if info is not None:
            return np.asarray(info["affine"]), {KEY: info}
        affine = display_affine(layer.scale[-3:])
        shape = from_display(np.empty(layer.data.shape, dtype=bool), affine).shape
        info = {"affine": affine, "header": None, "source": None, "shape": shape}
        return affine, {KEY: info}

    def export_csv(self, path) -> Path:
        """Write the lesion table: all lesions, centroids as file voxel indices (i, j, k) and
        scanner mm (x, y, z), with the threshold and, for a Detect result, method and model."""
        from ..io import Scan
        from ..postprocess import lesion_table, lesions_to_csv

        if self.labels is None:
            raise ValueError("no lesion mask yet: choose an anomaly map first")
        affine, metadata = self._file_geometry()
        mask = from_display(self.labels > 0, affine)
        scores = from_display(self._current_map(), affine)
        spacing = Scan(data=mask, affine=affine).spacing
        provenance = metadata[KEY].get("provenance") or {}
        return lesions_to_csv(
            lesion_table(mask, scores, spacing=spacing),
            path,
            affine=affine,
            threshold=float(self.threshold_slider.value()),
            method=provenance.get("method"),
            model=provenance.get("model"),
        )

    def export_mask(self, path) -> Path:
        """Write the binary lesion mask (uint8) as NIfTI on the scan's grid and affine."""
        from .._napari import write_labels

        if self.labels is None:
            raise ValueError("no lesion mask yet: choose an anomaly map first")
        _, metadata = self._file_geometry()
        source = metadata[KEY].get("source")
        if source and Path(source).resolve() == Path(path).resolve():
            raise ValueError("that is the scan's own file: choose another name")
        binary = (self.labels > 0).astype(np.uint8)
        return Path(write_labels(str(path), binary, {"metadata": metadata})[0])

    def _ask_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export lesion table", "lesions.csv", "CSV (*.csv)"
        )
        if path:
            self._export(self.export_csv, path)

    def _ask_mask(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export lesion mask", "lesion_mask.nii.gz", "NIfTI (*.nii.gz *.nii)"
        )
        if path:
            self._export(self.export_mask, path)

    def _export(self, export, path) -> None:
        try:
            written = export(path)
        except Exception as error:
            show_error(f"Export failed: {error_text(error)}")
            return
        show_info(f"Wrote {written}")

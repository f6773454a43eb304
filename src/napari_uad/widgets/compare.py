"""The "Compare methods" dock widget: several methods on one scan, a metrics table and a
side-by-side figure.

Thin over :mod:`napari_uad.compare`: :func:`compare_job` is the generator a napari
``thread_worker`` runs; layers are read before it starts and added on the main thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..display import from_display, to_display
from ._common import (
    KEY,
    current_slice,
    error_text,
    layer_metadata,
    placement_of,
    scan_from_layer,
    show_error,
    show_info,
)
from .detect import method_availability, reports_errors

#: Table columns shown in the widget (all are in the saved CSV).
SHOWN_COLUMNS = ("method", "auroc", "ap", "best_dice", "nfe_per_slice", "seconds_per_slice")
NO_TRUTH = "(none)"


@dataclass
class CompareUpdate:
    """Progress of the method being run: ``done`` of ``total`` network evaluations."""

    method_index: int
    methods: int
    message: str
    done: int
    total: int
    elapsed_s: float


@dataclass
class CompareOutcome:
    """What the worker returns: the comparison and each run's display-ordered anomaly map."""

    comparison: object
    scan: object
    truth: np.ndarray | None
    anomalies: dict[str, np.ndarray]
    slice_index: int | None = None


@reports_errors
def compare_job(scan, methods, kwargs: dict, *, truth=None, should_stop=None):
    """Generator run by the widget's worker: yields :class:`CompareUpdate`, returns a
    :class:`CompareOutcome`. GUI-free; errors come back as :class:`~.detect.DetectError` lines."""
    from ..compare import iter_compare

    started = time.perf_counter()
    names = list(methods)
    generator = iter_compare(scan, names, truth=truth, should_stop=should_stop, **kwargs)
    while True:
        try:
            update = next(generator)
        except StopIteration as finished:
            comparison = finished.value
            break
        index = next((i for i, m in enumerate(names) if update.message.startswith(m)), 0)
        yield CompareUpdate(
            index,
            len(names),
            update.message,
            update.done,
            update.total,
            time.perf_counter() - started,
        )
    anomalies = {
        run.method: np.ascontiguousarray(to_display(run.detection.anomaly, scan.affine)[0])
        for run in comparison.runs
    }
    slices = kwargs.get("slices")
    shown = int(slices[0]) if slices and len(slices) == 1 else None
    return CompareOutcome(comparison, scan, truth, anomalies, slice_index=shown)


class CompareWidget(QWidget):
    """Dock widget: run several methods on an image layer and compare them.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.outcome: CompareOutcome | None = None
        self._cancel_requested = False
        self._running_worker: list = []
        running = self._running_worker
        self.destroyed.connect(lambda *_: [worker.quit() for worker in running])

        self.layer_combo = QComboBox()
        self.truth_combo = QComboBox()
        self.truth_combo.setToolTip("A labels layer with the true lesions, for AUROC, AP, Dice")
        self.method_list = QListWidget()
        self.method_list.setMaximumHeight(140)
        self.scope_combo = QComboBox()
        self.scope_combo.addItem("current slice", "slice")
        self.scope_combo.addItem("whole volume", "volume")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.run_button = QPushButton("Compare")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("Tick the methods to compare (each with its default model)")
        self.status_label.setWordWrap(True)
        self.table = QTableWidget(0, len(SHOWN_COLUMNS))
        self.table.setHorizontalHeaderLabels([c.replace("_", " ") for c in SHOWN_COLUMNS])
        self.table.verticalHeader().setVisible(False)
        self.figure_button = QPushButton("Save figure and table…")
        self.figure_button.setEnabled(False)

        form = QFormLayout()
        form.addRow("Image", self.layer_combo)
        form.addRow("Truth", self.truth_combo)
        form.addRow("Methods", self.method_list)
        form.addRow("Scope", self.scope_combo)
        form.addRow("Seed", self.seed_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.table)
        layout.addWidget(self.figure_button)

        self.refresh_methods()
        self._refresh_layers()
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.figure_button.clicked.connect(self._ask_figure_path)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._refresh_layers)

    # ----------------------------------------------------------------- choices
    def refresh_methods(self) -> None:
        """List every method; those without a model are greyed with the reason."""
        ticked = set(self.checked_methods())
        self.method_list.clear()
        for name, reason in method_availability():
            item = QListWidgetItem(name if reason is None else f"{name} (no model)")
            item.setData(Qt.ItemDataRole.UserRole, name)
            if reason is None:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                checked = name in ticked or not ticked
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            else:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
                item.setToolTip(reason)
            self.method_list.addItem(item)

    def checked_methods(self) -> list[str]:
        """The methods ticked, in list order."""
        names = []
        for row in range(self.method_list.count()):
            item = self.method_list.item(row)
            if item.checkState() == Qt.CheckState.Checked:
                names.append(item.data(Qt.ItemDataRole.UserRole))
        return names

    def set_methods(self, names) -> None:
        """Tick exactly these methods (scripts and tests)."""
        wanted = set(names)
        for row in range(self.method_list.count()):
            item = self.method_list.item(row)
            if item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
                name = item.data(Qt.ItemDataRole.UserRole)
                state = Qt.CheckState.Checked if name in wanted else Qt.CheckState.Unchecked
                item.setCheckState(state)

    def _refresh_layers(self, *_):
        from napari.layers import Image, Labels

        for combo, kind, extra in (
            (self.layer_combo, Image, []),
            (self.truth_combo, Labels, [NO_TRUTH]),
        ):
            current = combo.currentText()
            names = extra + [
                layer.name
                for layer in self.viewer.layers
                if isinstance(layer, kind) and "·" not in layer.name
            ]
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            elif kind is Labels and "lesion truth" in names:
                combo.setCurrentText("lesion truth")
            combo.blockSignals(False)

    # ----------------------------------------------------------------- running
    def run(self, models: dict | None = None) -> None:
        """Run the ticked methods on the chosen layer (``models``: method -> model, else the
        methods' defaults)."""
        from napari.qt.threading import thread_worker

        if self.worker is not None:
            return
        try:
            name = self.layer_combo.currentText()
            if name not in self.viewer.layers:
                raise ValueError("no image layer: open a scan first")
            methods = self.checked_methods()
            if not methods:
                raise ValueError("tick at least one method")
            layer = self.viewer.layers[name]
            scan = scan_from_layer(layer)
            truth = self._truth(layer, scan)
            kwargs = {"device": "auto", "seed": self.seed_spin.value(), "models": models or {}}
            if self.scope_combo.currentData() == "slice":
                if layer.ndim < 3:
                    raise ValueError("no current slice: open a 3-D scan first")
                kwargs["slices"] = [current_slice(self.viewer, layer)]
        except Exception as error:
            show_error(f"Compare: {error_text(error)}")
            return
        self._cancel_requested = False
        worker = thread_worker(compare_job, start_thread=False, ignore_errors=True)(
            scan, methods, kwargs, truth=truth, should_stop=lambda: self._cancel_requested
        )
        worker.yielded.connect(self._on_update)
        worker.returned.connect(self._on_result)
        worker.errored.connect(lambda error: self._finish(f"Failed: {error_text(error)}"))
        worker.aborted.connect(lambda: self._finish("Cancelled"))
        worker.finished.connect(lambda: self._finish(None))
        self.worker = worker
        self._running_worker[:] = [worker]
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.figure_button.setEnabled(False)
        self.status_label.setText(f"Running {', '.join(methods)}…")
        self.progress_bar.setRange(0, 0)
        worker.start()

    def _truth(self, layer, scan) -> np.ndarray | None:
        name = self.truth_combo.currentText()
        if name in (NO_TRUTH, "") or name not in self.viewer.layers:
            return None
        labels = np.asarray(self.viewer.layers[name].data)
        if labels.shape != np.asarray(layer.data).shape:
            raise ValueError(f"truth layer {name!r} is not on the grid of {layer.name!r}")
        return from_display(labels > 0, scan.affine)

    def cancel(self) -> None:
        """Stop within one denoising step; no layers are added."""
        if self.worker is None:
            return
        self._cancel_requested = True
        self.worker.quit()
        self.status_label.setText("Cancelling…")

    def _on_update(self, update: CompareUpdate) -> None:
        if self._cancel_requested or not update.total:
            return
        self.progress_bar.setRange(0, update.total)
        self.progress_bar.setValue(update.done)
        self.status_label.setText(
            f"{update.message}: {update.done}/{update.total} steps · "
            f"{update.elapsed_s:.1f} s elapsed"
        )

    def _on_result(self, outcome: CompareOutcome) -> None:
        if self._cancel_requested:
            return
        self.outcome = outcome
        source = self.viewer.layers[self.layer_combo.currentText()]
        for run in outcome.comparison.runs:
            name = f"anomaly · {run.method} (compare)"
            data = outcome.anomalies[run.method]
            metadata = layer_metadata(
                outcome.scan, role="anomaly", provenance=run.detection.provenance
            )
            metadata[KEY]["threshold"] = float(run.detection.threshold)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
                self.viewer.layers[name].metadata = metadata
                continue
            # As in Detect: dark below half the healthy threshold, saturated at twice it.
            top = float(max(2 * run.detection.threshold, 1e-6))
            self.viewer.add_image(
                data,
                name=name,
                metadata=metadata,
                **placement_of(source),
                colormap="hot",
                blending="additive",
                opacity=0.8,
                contrast_limits=(top / 4, top),
                visible=run is outcome.comparison.runs[0],
            )
        self._fill_table(outcome.comparison.rows())
        self.figure_button.setEnabled(True)

    def _fill_table(self, rows) -> None:
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, column in enumerate(SHOWN_COLUMNS):
                value = row.get(column)
                text = (
                    "–"
                    if value is None
                    else f"{value:.3f}"
                    if isinstance(value, float)
                    else str(value)
                )
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    def _finish(self, message: str | None) -> None:
        if self.worker is None:
            return
        self.worker = None
        self._running_worker[:] = []
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if self.outcome is not None else 0)
        if message is None:
            message = "Cancelled" if self._cancel_requested else "Done"
            if self.outcome is not None and not self._cancel_requested:
                runs = self.outcome.comparison.runs
                message = f"Done: {len(runs)} methods compared"
        self.status_label.setText(message)

    # ----------------------------------------------------------------- export
    def _ask_figure_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save comparison figure", "comparison.png", "Images (*.png *.svg *.pdf)"
        )
        if path:
            self.save(path)

    def save(self, path):
        """Write the side-by-side figure at ``path`` and the table beside it (``.csv``)."""
        from pathlib import Path

        from ..compare import write_table
        from ..figures import methods_figure

        if self.outcome is None:
            raise ValueError("run a comparison first")
        path = Path(path)
        runs = self.outcome.comparison.runs
        try:
            methods_figure(
                self.outcome.scan,
                [(run.label, run.detection) for run in runs],
                path,
                truth=self.outcome.truth,
                metrics=[run.metrics for run in runs],
                slice_index=self.outcome.slice_index,
            )
            table = write_table(self.outcome.comparison.rows(), path.with_suffix(".csv"))
        except Exception as error:
            show_error(f"Compare: {error_text(error)}")
            return None
        show_info(f"Saved {path.name} and {table.name}")
        return path, table

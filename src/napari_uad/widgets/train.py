"""The Train dock widget: train or fine-tune a model on a folder of healthy scans.

A thin form over :func:`napari_uad.training.api.create_trainer`. The work runs in a generator
thread worker that yields the trainer's updates; the main thread draws the loss curve, the
progress bar and the preview layer. Stop asks the loop to stop at the next step; it then saves
a checkpoint, so "Resume the run in the output folder" continues it later.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..device import DEVICE_CHOICES, available_devices
from ..display import upright_affine
from ._common import show_error as _notify_error
from ._common import show_info as _notify_info

NEW_MODEL = "new model"
RESUME = "resume the run in the output folder"
PREVIEW_LAYER = "training preview"
FAMILIES = {
    "ddpm": "DDPM (Gaussian/simplex noise) for anoddpm",
    "addm": "DDPM + adversarial loss (ADDM)",
    "disyre": "synthetic-anomaly restoration (DISYRE)",
    "madad": "VAE + masked latent diffusion (MAD-AD)",
}


class LossCurve(QWidget):
    """A small matplotlib plot of the training loss (log scale) against the step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self._draw()

    def reset(self, losses: list[float] | None = None) -> None:
        self.losses = list(losses or [])
        self.steps = list(range(1, len(self.losses) + 1))
        self._draw()

    def add(self, step: int, loss: float, *, draw: bool) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        if draw:
            self._draw()

    def _draw(self) -> None:
        axes = self.axes
        axes.clear()
        axes.set_xlabel("step", fontsize=8)
        axes.set_ylabel("loss", fontsize=8)
        axes.tick_params(labelsize=7)
        if self.losses:
            values = np.asarray(self.losses)
            axes.plot(self.steps, values, color="0.7", linewidth=0.8)
            window = max(1, len(values) // 20)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            axes.plot(self.steps[window - 1 :], smooth, color="tab:orange", linewidth=1.5)
            if values.min() > 0:
                axes.set_yscale("log")
        self.canvas.draw_idle()


class TrainWidget(QWidget):
    """Dock widget: folder of healthy scans -> a model in the user models folder.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    #: Emitted with the model folder when a run has saved a model (finished or stopped).
    model_saved = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self._stop = False

        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder of healthy NIfTI scans")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder)
        folder_row.addWidget(browse)

        self.family = QComboBox()
        for key, label in FAMILIES.items():
            self.family.addItem(f"{key}: {label}", key)
        self.noise = QComboBox()
        self.noise.addItems(["gaussian", "simplex"])
        self.family.currentIndexChanged.connect(self._family_changed)
        self.steps = QSpinBox(minimum=1, maximum=1_000_000, value=1000, singleStep=100)
        self.batch = QSpinBox(minimum=2, maximum=512, value=16)
        self.learning_rate = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=1.0, value=2e-4)
        self.learning_rate.setSingleStep(1e-4)
        self.grid = QComboBox()
        self.grid.addItems(["128", "64", "256", "32"])
        self.device = QComboBox()
        present = available_devices()
        self.device.addItem(f"auto ({present[0]})", "auto")
        for name in DEVICE_CHOICES[1:]:
            self.device.addItem(name if name in present else f"{name} (not available)", name)
            if name not in present:
                self.device.model().item(self.device.count() - 1).setEnabled(False)
        self.start_from = QComboBox()
        self.output = QLineEdit("my-model")
        self.output.setToolTip("a model name (saved in the user models folder) or a folder path")
        self.refresh_models()

        form = QFormLayout()
        form.addRow("Healthy scans", folder_row)
        form.addRow("Model family", self.family)
        form.addRow("Noise", self.noise)
        form.addRow("Steps", self.steps)
        form.addRow("Batch size", self.batch)
        form.addRow("Learning rate", self.learning_rate)
        form.addRow("Grid", self.grid)
        form.addRow("Device", self.device)
        form.addRow("Start from", self.start_from)
        form.addRow("Output name", self.output)

        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)

        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.curve = LossCurve()

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.curve)
        layout.addStretch()

    # -- form -------------------------------------------------------------------------------
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of healthy scans")
        if folder:
            self.folder.setText(folder)

    def _family_changed(self) -> None:
        self.noise.setEnabled(self.family.currentData() == "ddpm")
        self.refresh_models()

    def refresh_models(self) -> None:
        """Fill "Start from" with the installed models of the chosen family."""
        from ..models.registry import list_models
        from ..training.api import get_trainer_class

        current = self.start_from.currentText()
        self.start_from.clear()
        self.start_from.addItems([NEW_MODEL, RESUME])
        method = get_trainer_class(self.family.currentData()).method
        for info in list_models(method):
            self.start_from.addItem(f"{info.name} ({info.source})", str(info.path))
        index = self.start_from.findText(current)
        self.start_from.setCurrentIndex(max(index, 0))

    def output_folder(self) -> Path:
        """Where the model goes: a bare name lands in the user models folder."""
        from ..models.registry import model_output_folder

        return model_output_folder(self.output.text())

    # -- running ----------------------------------------------------------------------------
    def start(self):
        """Validate the form and start training in a thread worker; returns the worker."""
        from napari.qt.threading import thread_worker

        if self.worker is not None:
            return self.worker
        try:
            folder = Path(self.folder.text().strip()).expanduser()
            if not self.folder.text().strip() or not folder.is_dir():
                raise ValueError(f"choose a folder of healthy scans (got {str(folder)!r})")
            out = self.output_folder()
        except ValueError as error:
            _notify_error(str(error))
            return None
        choice = self.start_from.currentText()
        resume = choice == RESUME
        init = self.start_from.currentData() if choice not in (NEW_MODEL, RESUME) else None
        family = self.family.currentData()
        settings = dict(
            method=None if resume else family,
            out=out,
            steps=self.steps.value(),
            noise=self.noise.currentText() if family == "ddpm" and not resume else None,
            init=init,
            resume=resume,
            grid=int(self.grid.currentText()),
            device=self.device.currentData(),
        )
        if not resume:
            settings.update(batch_size=self.batch.value(), learning_rate=self.learning_rate.value())
        self._stop = False

        @thread_worker(ignore_errors=True)
        def work():
            return (yield from _train_steps(self, folder, settings))

        self.worker = work()
        self.worker.yielded.connect(self._on_update)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText(f"reading scans in {folder}…")
        self.curve.reset()
        self.worker.start()
        return self.worker

    def stop(self) -> None:
        """Ask the run to stop after the current step (it saves a checkpoint first)."""
        self._stop = True
        self.stop_button.setEnabled(False)
        self.status.setText("stopping after this step…")

    def _on_update(self, update) -> None:
        if isinstance(update, str):
            self.status.setText(update)
            return
        if update.step == 1 or self.progress.maximum() != update.total:
            self.progress.setRange(0, update.total)
        self.progress.setValue(update.step)
        eta = update.eta_seconds
        eta_text = "" if math.isnan(eta) else f", about {_duration(eta)} left"
        losses = ", ".join(f"{k} {v:.4f}" for k, v in update.losses.items())
        self.status.setText(
            f"{update.stage}: step {update.step} of {update.total} ({losses}{eta_text})"
        )
        self.curve.add(update.step, update.loss, draw=update.step % 10 == 0)
        if update.preview is not None:
            self._show_preview(update.preview)

    def _show_preview(self, preview: np.ndarray) -> None:
        rows, count, height, width = preview.shape
        tiles = preview.transpose(0, 2, 1, 3).reshape(rows * height, count * width)
        # Upright on screen even when the camera shows scans in the radiological view.
        upright = upright_affine(self.viewer)
        if PREVIEW_LAYER in self.viewer.layers:
            layer = self.viewer.layers[PREVIEW_LAYER]
            layer.data = tiles
            if not np.allclose(layer.affine.affine_matrix, upright):
                layer.affine = upright
        else:
            self.viewer.add_image(
                tiles,
                name=PREVIEW_LAYER,
                colormap="gray",
                contrast_limits=(0.0, 1.0),
                affine=upright,
            )

    def _on_done(self, result) -> None:
        self.curve.reset(result.losses)
        how = "stopped" if result.stopped else "finished"
        threshold = "" if result.threshold is None else f"; threshold {result.threshold:.4f}"
        self.status.setText(
            f"{how} at step {result.step} of {result.total}, saved {result.model_dir}{threshold}"
        )
        self.model_saved.emit(str(result.model_dir))
        self.refresh_models()
        for widget in _dock_widgets(self.viewer):
            if widget is not self and hasattr(widget, "refresh_models"):
                widget.refresh_models()
        _notify_info(f"napari-uad: model {how} and saved to {result.model_dir}")

    def _on_error(self, error) -> None:
        message = " ".join(str(error).split()) or type(error).__name__
        self.status.setText(f"failed: {message}")
        _notify_error(f"napari-uad training failed: {message}")

    def _on_finished(self) -> None:
        self.worker = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)


def _train_steps(widget: TrainWidget, folder: Path, settings: dict):
    """The worker's generator: read the data, then train, yielding status text and updates."""
    from ..training.api import create_trainer

    trainer = create_trainer(folder, **settings)
    yield trainer.data_report.summary().splitlines()[0]
    return (yield from trainer.iter_run(should_stop=lambda: widget._stop))


def _dock_widgets(viewer):
    try:
        widgets = viewer.window.dock_widgets.values()
    except AttributeError:
        return []
    found = []
    for widget in widgets:
        found.append(widget)
        inner = getattr(widget, "widget", None)
        if callable(inner):
            try:
                found.append(inner())
            except TypeError:
                pass
    return found


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

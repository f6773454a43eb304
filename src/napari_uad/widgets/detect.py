"""The "Detect anomalies" dock widget: run a method on an image layer, live, cancellable.

The widget is thin: :class:`DetectParams` holds what the user chose, :func:`detect_kwargs`
turns it into :func:`napari_uad.pipeline.iter_detect` arguments (tested without Qt), and
:func:`detect_job` is the generator that a napari ``thread_worker`` runs. Layers are read
before the worker starts and written only in slots that run on the main thread.
"""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QStandardItem, QStandardItemModel
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._napari import LESION_COLOUR, single_colour_style
from ..display import placement, to_display
from ._common import (
    KEY,
    current_slice,
    error_text,
    geometry,
    layer_metadata,
    placement_of,
    scan_from_layer,
    show_error,
)

PREVIEW_LAYER = "denoising preview"
#: Seconds between two live previews: converting one costs a few ms on the main thread.
PREVIEW_INTERVAL_S = 0.25


class State(enum.Enum):
    """What the widget is doing."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class DetectParams:
    """What the user chose in the Detect widget (plain data, no Qt).

    ``scope`` is ``"volume"`` or ``"slice"``; with ``"slice"``, ``slice_index`` is the axial
    display slice (which is also the RAS+ slice index the pipeline takes). ``samples > 1`` runs
    that many seeds and adds an uncertainty layer (the per-voxel standard deviation).
    """

    method: str = "anoddpm"
    model: str | None = None
    noise: str | None = None
    noise_level: int | None = None
    steps: int | None = None
    scope: Literal["volume", "slice"] = "volume"
    slice_index: int | None = None
    device: str = "auto"
    seed: int = 0
    samples: int = 1
    extra: dict = field(default_factory=dict)


def detect_kwargs(params: DetectParams) -> dict:
    """Keyword arguments of :func:`napari_uad.pipeline.iter_detect` for ``params``.

    Raises
    ------
    ValueError
        For a slice scope without a slice, or an unknown scope.
    """
    kwargs = {
        "method": params.method,
        "model": params.model,
        "device": params.device,
        "seed": int(params.seed),
        "threshold": "auto",
        **params.extra,
    }
    for name in ("noise", "noise_level", "steps"):
        value = getattr(params, name)
        if value is not None:
            kwargs[name] = value
    if params.samples != 1:
        if int(params.samples) < 1:
            raise ValueError("samples must be >= 1")
        kwargs["samples"] = int(params.samples)
    if params.scope == "slice":
        if params.slice_index is None:
            raise ValueError("no current slice: open a 3-D scan first")
        kwargs["slices"] = [int(params.slice_index)]
    elif params.scope != "volume":
        raise ValueError(f"scope must be 'volume' or 'slice', got {params.scope!r}")
    return kwargs


def result_suffix(params: DetectParams, *, default_model: str | None = None) -> str:
    """The part of result layer names that says how they were made.

    e.g. ``"anoddpm gaussian t=25, 10 steps"``; the model is named when it is not the method's
    default, the slice when only one was processed.
    """
    parts = [params.method]
    if params.model and params.model != default_model:
        parts.append(f"[{_short_model(params.model)}]")
    if params.noise:
        parts.append(params.noise)
    if params.noise_level is not None:
        parts.append(f"t={params.noise_level}")
    text = " ".join(parts)
    if params.steps is not None:
        text += f", {params.steps} steps"
    if params.samples > 1:
        text += f", {params.samples} seeds"
    if params.scope == "slice" and params.slice_index is not None:
        text += f", slice {params.slice_index}"
    return text


def _short_model(model: str) -> str:
    from pathlib import Path

    return Path(str(model)).name or str(model)


def method_availability() -> list[tuple[str, str | None]]:
    """``(method, reason)`` for every known method; ``reason`` is None when it can run."""
    from ..methods import METHOD_NAMES, get_method_class
    from ..models.registry import list_models

    models = list_models()
    out = []
    for name in METHOD_NAMES:
        try:
            get_method_class(name)
        except (ValueError, ImportError):
            out.append((name, "not implemented in this version of napari-uad"))
            continue
        if not _models_for(name, models):
            out.append((name, "no model installed: train one with the Train widget"))
            continue
        out.append((name, None))
    return out


def _models_for(method: str, models) -> list:
    from ..methods import get_method_class

    method_class = get_method_class(method)
    return [info for info in models if method_class.accepts(info.method)]


def model_description(info, *, method: str | None = None, full: bool = False) -> str:
    """A line about a model for the widget: noise, grid, the calibrated threshold (``method``'s
    own when given) and, with ``full``, the training steps and where it was found."""
    from ..methods import get_method_class
    from ..models.registry import model_config

    try:
        config = model_config(info)
    except Exception as error:  # a broken model must not break the widget
        return f"unreadable model: {error_text(error)}"
    if method is None:
        calibrated = config.calibration.get("threshold")
    else:
        calibrated = get_method_class(method).calibrated_threshold_of(config)
    members = (config.training or {}).get("members") if config.method == "ensemble" else None
    if isinstance(members, list):
        kind = "fuses " + " + ".join(str(m.get("method")) for m in members if isinstance(m, dict))
    else:
        kind = f"{info.noise} noise"
    parts = [kind, f"{info.grid} px"]
    parts.append(f"threshold {calibrated:.3g}" if calibrated is not None else "not calibrated")
    if method is not None and calibrated is not None:
        from ..site_calibration import site_entry_of

        site = site_entry_of(config, method)
        if site is not None:
            parts[-1] += f" (from {site.get('count', '?')} site controls)"
    if full and getattr(info, "origin", ""):
        parts.append(info.origin)
    if full:
        steps = (config.training or {}).get("steps")
        if steps:
            parts.append(f"{steps} training steps")
        parts.append(f"{'shipped' if info.source == 'package' else info.source}: {info.path}")
    return " · ".join(parts)


@dataclass
class DetectUpdate:
    """One update from :func:`detect_job` to the main thread.

    ``planes`` maps display slice indices to preview images (Y, X) in the scan's units; it is
    filled at most every :data:`PREVIEW_INTERVAL_S` seconds.
    """

    done: int
    total: int
    elapsed_s: float
    planes: dict[int, np.ndarray] | None = None
    message: str = ""


@dataclass
class DetectOutcome:
    """What the worker returns: the detection and its display-ordered (Z, Y, X) arrays.

    The reorientation and the lesion labelling happen in the worker so the main thread only
    adds layers.
    """

    detection: object
    healthy: np.ndarray
    anomaly: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray | None = None

    @classmethod
    def from_detection(cls, detection, affine) -> DetectOutcome:
        from ..postprocess import label_lesions

        def shown(volume):
            return np.ascontiguousarray(to_display(volume, affine)[0])

        return cls(
            detection=detection,
            healthy=shown(detection.healthy),
            anomaly=shown(detection.anomaly),
            labels=label_lesions(shown(detection.lesion_mask))[0],
            uncertainty=(
                shown(detection.uncertainty) if detection.uncertainty is not None else None
            ),
        )


class DetectError(Exception):
    """A failure inside the worker, carried to the main thread as a one-line message."""


def reports_errors(job):
    """Wrap a worker's generator so that any failure comes out as one :class:`DetectError`
    line; closing the generator (cancellation) passes through untouched."""

    @functools.wraps(job)
    def wrapper(*args, **kwargs):
        try:
            return (yield from job(*args, **kwargs))
        except GeneratorExit:
            raise
        except Exception as error:
            raise DetectError(error_text(error)) from error

    return wrapper


@reports_errors
def detect_job(scan, kwargs: dict, *, should_stop=None, preview_interval_s=PREVIEW_INTERVAL_S):
    """Generator run by the widget's ``thread_worker``: yields :class:`DetectUpdate`, returns
    a :class:`DetectOutcome`.

    GUI-free: it only computes. Previews are mapped from the model grid to display slices
    here, with the slice geometry of a second :func:`~napari_uad.preprocess.prepare_volume`
    (the pipeline keeps its own private). Any error is re-raised as :class:`DetectError`
    (superqt workers swallow a bare ``RuntimeError`` as a warning).

    Parameters
    ----------
    scan : Scan
        Read from the layer on the main thread before the worker starts.
    kwargs : dict
        :func:`detect_kwargs` output, passed to :func:`napari_uad.pipeline.iter_detect`.
    should_stop : callable, optional
        Cooperative cancellation, checked after every denoising step.
    preview_interval_s : float
        Minimum seconds between two previews.
    """
    from ..checks import check_not_label_map
    from ..pipeline import iter_detect, load_method
    from ..preprocess import from_model_grid, prepare_volume

    started = time.perf_counter()
    yield DetectUpdate(0, 0, 0.0, message="loading model")
    loaded = load_method(
        kwargs["method"],
        kwargs.get("model"),
        noise=kwargs.get("noise"),
        device=kwargs["device"],
    )
    config = loaded.method.config
    check_not_label_map(scan.data)  # before this preview geometry's own errors, as the pipeline
    prepared = prepare_volume(
        scan,
        brain_mask=kwargs.get("brain_mask"),
        grid=config.grid,
        lower_percentile=config.preprocessing.get("lower_percentile", 1.0),
        upper_percentile=config.preprocessing.get("upper_percentile", 99.0),
    )
    low, high = prepared.intensity_range
    generator = iter_detect(scan, should_stop=should_stop, **kwargs)
    last_preview = 0.0
    while True:
        try:
            progress = next(generator)
        except StopIteration as finished:
            return DetectOutcome.from_detection(finished.value, scan.affine)
        now = time.perf_counter()
        planes = None
        if progress.preview is not None and now - last_preview >= preview_interval_s:
            last_preview = now
            ras = from_model_grid(progress.preview, prepared.geometry)
            planes = {
                int(z): (ras[:, :, i].T[::-1, ::-1] * (high - low) + low).astype(np.float32)
                for i, z in enumerate(progress.slice_ids)
            }
        yield DetectUpdate(progress.done, progress.total, now - started, planes)


#: File dialog filter of the healthy control scans.
CONTROL_FILTER = "NIfTI scans (*.nii *.nii.gz);;All files (*)"


def calibration_kwargs(params: DetectParams) -> dict:
    """Keyword arguments of :func:`napari_uad.site_calibration.iter_calibrate_on_controls`
    for ``params``: those of a whole-volume run, without a threshold."""
    kwargs = detect_kwargs(replace(params, scope="volume", slice_index=None))
    kwargs.pop("threshold", None)
    return kwargs


@reports_errors
def calibration_job(controls, kwargs: dict, out, *, overwrite=False, should_stop=None):
    """Generator run by the widget's ``thread_worker``: calibrates on the healthy
    ``controls`` (yielding :class:`~napari_uad.site_calibration.CalibrationProgress`), saves
    the site model ``out``, and returns ``(calibration, folder)``; None when cancelled (no
    model is saved then)."""
    from ..progress import Cancelled
    from ..site_calibration import iter_calibrate_on_controls

    try:
        calibration = yield from iter_calibrate_on_controls(
            controls, should_stop=should_stop, **kwargs
        )
    except Cancelled:
        return None
    return calibration, calibration.save(out, overwrite=overwrite)


class DetectWidget(QWidget):
    """Dock widget: detect anomalies in an image layer with a diffusion model.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = State.IDLE
        self.worker = None
        self.last_result_layers: list[str] = []
        self._cancel_requested = False
        self._run_context: dict = {}
        self._result_steps: list = []
        self._result_detection = None
        # Closing the window deletes the widget: stop a running worker rather than leave it
        # signalling a deleted object (the lambda must not hold ``self``).
        self._running_worker: list = []
        running = self._running_worker
        self.destroyed.connect(lambda *_: [worker.quit() for worker in running])
        #: Seconds between live previews (tests set 0 to see every step).
        self.preview_interval_s = PREVIEW_INTERVAL_S

        self.layer_combo = QComboBox()
        self.method_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setStyleSheet("color: gray;")
        self.noise_combo = QComboBox()
        self.noise_level_spin = QSpinBox()
        self.noise_level_spin.setRange(1, 999)
        self.noise_level_spin.setToolTip(
            "Timestep t the scan is noised to before denoising (higher: larger anomalies "
            "removed, less detail kept)"
        )
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setToolTip("Network evaluations per slice on the way back to t = 0")
        self.scope_combo = QComboBox()
        self.scope_combo.addItem("whole volume", "volume")
        self.scope_combo.addItem("current slice", "slice")
        self.device_combo = QComboBox()
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 32)
        self.samples_spin.setToolTip(
            "Runs with seeds seed, seed + 1, ...: the anomaly map is their mean, and an "
            "uncertainty layer shows their per-voxel standard deviation (time grows with it)"
        )
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.calibrate_button = QPushButton("Calibrate on healthy scans…")
        self.calibrate_button.setToolTip(
            "Set the threshold from your own healthy scans (3 or more, from this scanner, "
            "prepared like your patients'): saves a copy of the model that carries it"
        )
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("%v / %m steps")
        self.progress_bar.setValue(0)
        self.status_label = QLabel("Ready")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image", self.layer_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.model_label)
        form.addRow("Noise", self.noise_combo)
        form.addRow("Noise level t", self.noise_level_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Scope", self.scope_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Seed", self.seed_spin)
        form.addRow("Samples", self.samples_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.calibrate_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self._fill_devices()
        self.refresh_models()
        self._refresh_layers()
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.calibrate_button.clicked.connect(self.calibrate_dialog)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.reordered.connect(self._refresh_layers)

    # ----------------------------------------------------------------- choices
    def _fill_devices(self) -> None:
        from ..device import DEVICE_CHOICES, available_devices

        present = available_devices()
        model = QStandardItemModel(self.device_combo)
        for name in DEVICE_CHOICES:
            if name == "auto":
                item = QStandardItem(f"auto ({present[0]})")
            elif name in present:
                item = QStandardItem(name)
            else:
                item = QStandardItem(f"{name} (not present)")
                item.setEnabled(False)
                item.setToolTip(f"no {name} device on this machine")
            item.setData(name, Qt.ItemDataRole.UserRole)
            model.appendRow(item)
        self.device_combo.setModel(model)
        self.device_combo.setCurrentIndex(0)

    def refresh_models(self) -> None:
        """Re-read the model registry: methods (greyed with a reason when unusable) and models.

        Call it after a model was trained or copied into the user models folder.
        """
        previous_method = self.method_combo.currentData(Qt.ItemDataRole.UserRole)
        previous_model = self.model_combo.currentData(Qt.ItemDataRole.UserRole)
        self.method_combo.blockSignals(True)
        model = QStandardItemModel(self.method_combo)
        first_available = None
        for row, (name, reason) in enumerate(method_availability()):
            item = QStandardItem(name if reason is None else f"{name} — unavailable")
            item.setData(name, Qt.ItemDataRole.UserRole)
            if reason is not None:
                item.setEnabled(False)
                item.setToolTip(reason)
            elif first_available is None:
                first_available = row
            model.appendRow(item)
        self.method_combo.setModel(model)
        index = self.method_combo.findData(previous_method, Qt.ItemDataRole.UserRole)
        if index < 0 or not model.item(index).isEnabled():
            index = first_available if first_available is not None else 0
        self.method_combo.setCurrentIndex(index)
        self.method_combo.blockSignals(False)
        self._fill_models(keep=previous_model)

    def method_reason(self, method: str) -> str | None:
        """Why ``method`` is greyed out in the list (None when it is usable)."""
        index = self.method_combo.findData(method, Qt.ItemDataRole.UserRole)
        if index < 0:
            return "unknown method"
        item = self.method_combo.model().item(index)
        return None if item.isEnabled() else item.toolTip()

    def _fill_models(self, keep=None) -> None:
        from ..methods import default_model_name
        from ..models.registry import list_models

        method = self.method_combo.currentData(Qt.ItemDataRole.UserRole)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        if method is not None and self.method_reason(method) is None:
            default = default_model_name(method)
            for info in _models_for(method, list_models()):
                label = info.name + (" (default)" if info.name == default else "")
                self.model_combo.addItem(label, str(info.path))
                row = self.model_combo.count() - 1
                self.model_combo.setItemData(row, info, Qt.ItemDataRole.UserRole + 1)
                self.model_combo.setItemData(
                    row, model_description(info, full=True), Qt.ItemDataRole.ToolTipRole
                )
            index = self.model_combo.findData(keep) if keep else -1
            if index < 0:
                index = max(self.model_combo.findText(f"{default} (default)"), 0)
            self.model_combo.setCurrentIndex(index)
        self.model_combo.blockSignals(False)
        self._on_model_changed()

    def _on_method_changed(self, *_):
        self._fill_models()

    def _on_model_changed(self, *_):
        """Show the model's description and load its defaults into the parameter fields."""
        from ..methods import get_method_class
        from ..models.registry import model_config

        info = self.model_combo.currentData(Qt.ItemDataRole.UserRole + 1)
        usable = info is not None
        self.run_button.setEnabled(usable and self.state is not State.RUNNING)
        self.calibrate_button.setEnabled(usable and self.state is not State.RUNNING)
        if not usable:
            reason = self.method_reason(self.method_combo.currentData(Qt.ItemDataRole.UserRole))
            self.model_label.setText(reason or "no model installed for this method")
            for widget in (self.noise_combo, self.noise_level_spin, self.steps_spin):
                widget.setEnabled(False)
            return
        method = self.method_combo.currentData(Qt.ItemDataRole.UserRole)
        self.model_label.setText(model_description(info, method=method))
        self.model_label.setToolTip(model_description(info, method=method, full=True))
        try:
            config = model_config(info)
            method_class = get_method_class(method)
            defaults = method_class.defaults_for_config(config)
        except Exception as error:
            self.model_label.setText(f"unreadable model: {error_text(error)}")
            self.run_button.setEnabled(False)
            return
        self.method_combo.setToolTip(method_class.description)
        self.noise_combo.clear()
        if "noise" in defaults:
            trained = config.diffusion.noise
            self.noise_combo.addItem(f"{trained} (as trained)", trained)
            for kind in ("gaussian", "simplex"):
                if kind != trained:
                    self.noise_combo.addItem(kind, kind)
        self.noise_combo.setEnabled("noise" in defaults)
        self.noise_level_spin.setEnabled("noise_level" in defaults)
        if "noise_level" in defaults:
            self.noise_level_spin.setRange(1, config.diffusion.num_train_timesteps - 1)
            self.noise_level_spin.setValue(int(defaults["noise_level"]))
        self.steps_spin.setEnabled("steps" in defaults)
        if "steps" in defaults:
            self.steps_spin.setValue(int(defaults["steps"]))

    def _refresh_layers(self, *_):
        from napari.layers import Image

        current = self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        names = [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Image)
            and layer.name != PREVIEW_LAYER
            and (geometry(layer) or {}).get("role") in (None, "scan")
        ]
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)

    # ----------------------------------------------------------------- params
    def params(self) -> DetectParams:
        """The current choices as :class:`DetectParams`."""
        method = self.method_combo.currentData(Qt.ItemDataRole.UserRole)
        scope = self.scope_combo.currentData()
        slice_index = None
        if scope == "slice":
            slice_index = self._current_slice()
        return DetectParams(
            method=method,
            model=self.model_combo.currentData(),
            noise=self.noise_combo.currentData() if self.noise_combo.isEnabled() else None,
            noise_level=(
                self.noise_level_spin.value() if self.noise_level_spin.isEnabled() else None
            ),
            steps=self.steps_spin.value() if self.steps_spin.isEnabled() else None,
            scope=scope,
            slice_index=slice_index,
            device=self.device_combo.currentData(Qt.ItemDataRole.UserRole),
            seed=self.seed_spin.value(),
            samples=self.samples_spin.value(),
        )

    def _current_slice(self) -> int | None:
        layer = self._input_layer()
        if layer is None or layer.ndim < 3:
            return 0 if layer is not None else None
        return current_slice(self.viewer, layer)

    def _layer_or_none(self, name):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _input_layer(self):
        name = self.layer_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # ----------------------------------------------------------------- running
    def run(self, *, threshold: float | None = None) -> None:
        """Start detection on the chosen layer (no-op while a run is in progress).

        ``threshold`` sets the lesion threshold of this run only (the demo's threshold from the
        healthy sample); by default the model's calibrated threshold is used.
        """
        from napari.qt.threading import thread_worker

        from ..methods import default_model_name

        if self.state is State.RUNNING:
            return
        layer = self._input_layer()
        try:
            if layer is None:
                raise ValueError("no image layer: open a scan first (File > Open, or a sample)")
            params = self.params()
            if self.method_reason(params.method) is not None:
                raise ValueError(f"{params.method}: {self.method_reason(params.method)}")
            if not params.model:
                raise ValueError(f"no model installed for {params.method}")
            scan = scan_from_layer(layer)
            if not np.isfinite(scan.data).all():
                raise ValueError(
                    f"layer {layer.name!r} contains NaN or infinite values: clean the scan first"
                )
            kwargs = detect_kwargs(params)
            kwargs.update(self._loaded_scan_inputs(layer, params))
            if threshold is not None:
                kwargs["threshold"] = float(threshold)
            from ..device import resolve_device

            resolve_device(params.device)
        except Exception as error:
            show_error(f"Detect: {error_text(error)}")
            return
        default = self.model_combo.currentText().endswith("(default)")
        suffix = result_suffix(
            params, default_model=params.model if default else default_model_name(params.method)
        )
        self._run_context = {
            "layer": layer.name,
            "scan": scan,
            "params": params,
            "suffix": suffix,
        }
        self._cancel_requested = False
        self._started = time.perf_counter()
        worker = thread_worker(detect_job, start_thread=False, ignore_errors=True)(
            scan,
            kwargs,
            should_stop=lambda: self._cancel_requested,
            preview_interval_s=self.preview_interval_s,
        )
        worker.yielded.connect(self._on_update)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        worker.warned.connect(self._on_warning)
        self.worker = worker
        self._running_worker[:] = [worker]
        self._set_state(State.RUNNING, f"Running {suffix}…")
        self.progress_bar.setRange(0, 0)
        # Created now, not from the first update: adding a layer stalls the GUI ~0.1 s, which
        # is fine on a click but not while the restoration runs.
        self._add_preview_layer(layer)
        worker.start()

    def _loaded_scan_inputs(self, layer, params: DetectParams) -> dict:
        """Brain mask (as edited) and slice range of a scan opened with the Load scan widget."""
        if layer.metadata.get(KEY, {}).get("role") != "scan":
            return {}
        from .load import detection_inputs

        inputs = detection_inputs(self.viewer, layer)
        extra = {}
        if inputs["brain_mask"] is not None:
            extra["brain_mask"] = inputs["brain_mask"]
        if params.scope == "volume" and inputs["slices"] is not None:
            extra["slices"] = [int(z) for z in inputs["slices"]]
        return extra

    def cancel(self) -> None:
        """Stop the run within one denoising step; no result layers are added."""
        if self.worker is None or self.state is not State.RUNNING:
            return
        self._cancel_requested = True
        self.worker.quit()
        self.status_label.setText("Cancelling…")

    # ----------------------------------------------------------------- site calibration
    def calibrate_dialog(self) -> None:
        """Ask for healthy control scans and the new model's name, then :meth:`calibrate`."""
        if self.state is State.RUNNING:
            return
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Healthy control scans from this scanner (3 or more)", "", CONTROL_FILTER
        )
        if not paths:
            return
        info = self.model_combo.currentData(Qt.ItemDataRole.UserRole + 1)
        default = f"{info.name}-site" if info is not None else "site"
        name, ok = QInputDialog.getText(
            self, "Save the calibrated model", "Name of the new model:", text=default
        )
        if ok and name.strip():
            self.calibrate(paths, name.strip())

    def calibrate(self, paths, name: str, *, overwrite: bool | None = None) -> None:
        """Calibrate the chosen method and model on healthy scans ``paths`` in a thread
        worker (progress bar, Cancel) and save the result as the model ``name``
        (:mod:`napari_uad.site_calibration`); it is then selected. An existing model ``name``
        is replaced after asking (``overwrite`` None) or when ``overwrite`` is True."""
        from napari.qt.threading import thread_worker

        from ..site_calibration import find_controls, site_model_folder

        if self.state is State.RUNNING:
            return
        try:
            params = self.params()
            if self.method_reason(params.method) is not None:
                raise ValueError(f"{params.method}: {self.method_reason(params.method)}")
            if not params.model:
                raise ValueError(f"no model installed for {params.method}")
            controls = find_controls(list(paths))
            folder = site_model_folder(name)
            if folder.exists() and overwrite is None:
                answer = QMessageBox.question(
                    self, "Replace model?", f"A model {folder.name!r} exists. Replace it?"
                )
                if answer != QMessageBox.StandardButton.Yes:
                    return
                overwrite = True
            if folder.exists() and not overwrite:
                raise ValueError(f"model {folder.name!r} exists: choose another name")
            kwargs = calibration_kwargs(params)
        except Exception as error:
            show_error(f"Calibrate: {error_text(error)}")
            return
        self._cancel_requested = False
        worker = thread_worker(calibration_job, start_thread=False, ignore_errors=True)(
            controls,
            kwargs,
            str(folder),
            overwrite=bool(overwrite),
            should_stop=lambda: self._cancel_requested,
        )
        worker.yielded.connect(self._on_calibration_update)
        worker.returned.connect(self._on_calibrated)
        worker.errored.connect(self._on_calibration_error)
        worker.aborted.connect(self._on_calibration_aborted)
        worker.finished.connect(self._on_calibration_finished)
        self.worker = worker
        self._running_worker[:] = [worker]
        self._set_state(State.RUNNING, f"Calibrating on {len(controls)} healthy scan(s)…")
        self.progress_bar.setRange(0, 0)
        worker.start()

    def _on_calibration_update(self, update) -> None:
        if self._cancel_requested:
            return
        where = f"control {update.control + 1} of {update.controls} ({update.name})"
        if update.total:
            self.progress_bar.setRange(0, update.total)
            self.progress_bar.setValue(update.done)
            self.status_label.setText(f"Calibrating on {where}: {update.done}/{update.total} steps")
        else:
            self.status_label.setText(f"Calibrating: reading {where}…")

    def _on_calibrated(self, outcome) -> None:
        if outcome is None:
            self._on_calibration_aborted()
            return
        calibration, folder = outcome
        self.refresh_models()
        try:
            self._select_model(str(folder))
        except Exception as error:  # the model was saved; only selecting it failed
            show_error(f"Calibrate: saved {folder}, but could not select it: {error_text(error)}")
        old = calibration.old_threshold
        old_text = "none" if old is None else f"{old:.4g}"
        notes = f" Warning: {calibration.warnings[0]}" if calibration.warnings else ""
        self._set_state(
            State.DONE,
            f"Calibrated on {len(calibration.controls)} healthy scan(s): threshold "
            f"{calibration.threshold:.4g} (was {old_text}); saved and selected model "
            f"{folder.name!r}.{notes}",
        )

    def _on_calibration_error(self, error) -> None:
        show_error(f"Calibrate failed: {error_text(error)}")
        self._set_state(State.FAILED, f"Calibration failed: {error_text(error)}")

    def _on_calibration_aborted(self) -> None:
        self._set_state(State.STOPPED, "Calibration cancelled: no model saved")

    def _on_calibration_finished(self) -> None:
        self._running_worker.clear()
        self.worker = None
        if self.state is State.RUNNING:
            self._set_state(State.STOPPED, "Calibration stopped: no model saved")
        self.progress_bar.setRange(0, max(self.progress_bar.maximum(), 1))

    def _set_state(self, state: State, message: str) -> None:
        self.state = state
        running = state is State.RUNNING
        self.run_button.setEnabled(not running and self.model_combo.currentData() is not None)
        self.calibrate_button.setEnabled(self.run_button.isEnabled())
        self.cancel_button.setEnabled(running)
        self.status_label.setText(message)

    def _on_update(self, update: DetectUpdate) -> None:
        if self._cancel_requested:
            return
        if update.total:
            self.progress_bar.setRange(0, update.total)
            self.progress_bar.setValue(update.done)
            rate = update.elapsed_s / max(update.done, 1)
            eta = rate * (update.total - update.done)
            self.status_label.setText(
                f"{update.done}/{update.total} steps · {update.elapsed_s:.1f} s elapsed · "
                f"about {eta:.0f} s left"
            )
        elif update.message:
            self.status_label.setText(update.message.capitalize() + "…")
        if update.planes:
            self._show_preview(update.planes)

    def _add_preview_layer(self, source) -> None:
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_LAYER)
        buffer = np.array(source.data, dtype=np.float32)
        if buffer.ndim == 2:
            buffer = buffer[None]
        self.viewer.add_image(
            buffer,
            name=PREVIEW_LAYER,
            colormap="gray",
            contrast_limits=source.contrast_limits,
            metadata={KEY: {"role": "preview"}},
            **placement_of(source),
        )

    def _show_preview(self, planes: dict[int, np.ndarray]) -> None:
        if PREVIEW_LAYER not in self.viewer.layers:
            return  # the user removed it
        preview = self.viewer.layers[PREVIEW_LAYER]
        for z, plane in planes.items():
            if 0 <= z < preview.data.shape[0] and plane.shape == preview.data.shape[1:]:
                preview.data[z] = plane
        preview.refresh()

    def _remove_preview(self) -> None:
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_LAYER)

    def _on_result(self, outcome: DetectOutcome) -> None:
        """Add the result layers, one per event-loop turn so the GUI never freezes long."""
        try:
            steps = self._result_layer_steps(outcome)
        except Exception as error:
            self._fail_result(error)
            return
        self._result_steps = steps
        self._add_next_result_layer()

    def _add_next_result_layer(self) -> None:
        if not self._result_steps:
            detection = self._result_detection
            seconds = time.perf_counter() - self._started
            count = detection.provenance["lesions"]["count"]
            names = self.last_result_layers
            if names[1] in self.viewer.layers:
                self.viewer.layers.selection.active = self.viewer.layers[names[1]]
            # The scan's warnings (skull, contrast) also came as napari notifications from the
            # worker; the status keeps them beside the result.
            notes = "".join(f"\nWarning: {w}" for w in detection.provenance.get("warnings", []))
            self._set_state(
                State.DONE,
                f"Done in {seconds:.1f} s: {count} lesion(s) at threshold "
                f"{detection.threshold:.3g}{notes}",
            )
            return
        step = self._result_steps.pop(0)
        try:
            step()
        except Exception as error:
            self._result_steps = []
            self._fail_result(error)
            return
        QTimer.singleShot(0, self._add_next_result_layer)

    def _fail_result(self, error) -> None:
        show_error(f"Detect: could not show the result: {error_text(error)}")
        self._set_state(State.FAILED, f"Failed: {error_text(error)}")

    def _on_warning(self, showwarning_args: tuple) -> None:
        """The run's warnings (skull, contrast, NaN voxels, ...) as napari notifications: the
        worker catches them, and napari's own relay is not connected for generator workers."""
        from napari.utils.notifications import show_warning

        show_warning(f"Detect: {showwarning_args[0]}")

    def _on_error(self, error) -> None:
        show_error(f"Detect failed: {error_text(error)}")
        self._set_state(State.FAILED, f"Failed: {error_text(error)}")

    def _on_aborted(self) -> None:
        self._set_state(State.STOPPED, "Cancelled: no layers added")

    def _on_finished(self) -> None:
        self._running_worker.clear()
        if self.state is not State.RUNNING or not self._result_steps:
            self._remove_preview()
        self.worker = None
        if self.state is State.RUNNING and not self._result_steps:
            self._set_state(State.STOPPED, "Stopped")  # no result, error or abort signal
        self.progress_bar.setRange(0, max(self.progress_bar.maximum(), 1))

    def _result_layer_steps(self, outcome: DetectOutcome) -> list:
        """Callables adding the pseudo-healthy, anomaly and lesion layers (same names replaced).

        The live-preview layer becomes the pseudo-healthy layer when that name is new, which
        spares napari one layer removal and one addition.
        """
        context = self._run_context
        result = outcome.detection
        scan, suffix = context["scan"], context["suffix"]
        source = self._layer_or_none(context["layer"])
        names = {
            "healthy": f"pseudo-healthy · {suffix}",
            "anomaly": f"anomaly · {suffix}",
            "mask": f"lesions · {suffix}",
        }
        if outcome.uncertainty is not None:
            names["uncertainty"] = f"uncertainty · {suffix}"
        self.last_result_layers = list(names.values())
        self._result_detection = result
        calibrated = result.provenance["parameters"].get("threshold_source") == "model calibration"
        common = {
            "links": {"scan": context["layer"], **names},
            "provenance": result.provenance,
            "threshold": float(result.threshold),
            "calibrated_threshold": float(result.threshold) if calibrated else None,
        }
        if source is not None and source.ndim >= 3:
            where = placement_of(source)
        else:
            where = {"translate": (0.0, 0.0, 0.0), **placement(scan.affine, scan.data.shape)}
        contrast = source.contrast_limits if source is not None else None
        high = float(max(2 * result.threshold, 1e-6))
        lesion_style = single_colour_style(LESION_COLOUR)
        specs = [
            (
                "healthy",
                "image",
                outcome.healthy,
                {"colormap": "gray", "contrast_limits": contrast, "visible": False},
            ),
            (
                "anomaly",
                "image",
                outcome.anomaly,
                {
                    "colormap": "hot",
                    "blending": "additive",
                    "opacity": 0.8,
                    # Dark below half the healthy threshold, saturated at twice it: healthy
                    # tissue stays clear of colour and lesions glow.
                    "contrast_limits": (high / 4, high),
                },
            ),
            ("mask", "labels", outcome.labels, {"opacity": 0.7, **lesion_style}),
        ]
        if outcome.uncertainty is not None:
            spread = outcome.uncertainty[outcome.uncertainty > 0]
            top = float(np.percentile(spread, 99.5)) if spread.size else 1.0
            style = {"colormap": "viridis", "visible": False, "contrast_limits": (0.0, top)}
            specs.append(("uncertainty", "image", outcome.uncertainty, style))

        def step(role, kind, data, style):
            style = {k: v for k, v in style.items() if v is not None}
            metadata = layer_metadata(scan, role=role, **common)
            name = names[role]
            existing = self._layer_or_none(name)
            if existing is None and role == "healthy" and PREVIEW_LAYER in self.viewer.layers:
                existing = self.viewer.layers[PREVIEW_LAYER]
                existing.name = name
            elif role == "healthy":
                self._remove_preview()
            if existing is not None:
                existing.data = data
                existing.metadata = metadata
                existing.scale, existing.translate = where["scale"], where["translate"]
                existing.affine = where["affine"]
                for key in ("contrast_limits", "visible", "colormap"):
                    if key in style:
                        setattr(existing, key, style[key])
                return
            add = self.viewer.add_image if kind == "image" else self.viewer.add_labels
            add(data, name=name, metadata=metadata, **where, **style)

        return [lambda spec=spec: step(*spec) for spec in specs]

    def set_params(self, **values) -> None:
        """Set widget fields from keyword values (used by the demo, scripts and tests).

        Accepts ``method``, ``model`` (name or path), ``noise``, ``noise_level``, ``steps``,
        ``scope`` (``"volume"``/``"slice"``), ``device``, ``seed``, ``samples``, ``layer``.
        """
        if "layer" in values:
            self.layer_combo.setCurrentText(values.pop("layer"))
        if "method" in values:
            self.method_combo.setCurrentIndex(
                self.method_combo.findData(values.pop("method"), Qt.ItemDataRole.UserRole)
            )
        if "model" in values:
            self._select_model(values.pop("model"))
        simple = {
            "noise": lambda v: self.noise_combo.setCurrentIndex(self.noise_combo.findData(v)),
            "noise_level": self.noise_level_spin.setValue,
            "steps": self.steps_spin.setValue,
            "scope": lambda v: self.scope_combo.setCurrentIndex(self.scope_combo.findData(v)),
            "device": lambda v: self.device_combo.setCurrentIndex(
                self.device_combo.findData(v, Qt.ItemDataRole.UserRole)
            ),
            "seed": self.seed_spin.setValue,
            "samples": self.samples_spin.setValue,
        }
        for key, value in values.items():
            if key not in simple:
                raise ValueError(f"unknown Detect parameter {key!r}")
            simple[key](value)

    def _select_model(self, model) -> None:
        from pathlib import Path

        from ..models.registry import resolve_model

        path = str(resolve_model(model).resolve())
        for row in range(self.model_combo.count()):
            if str(Path(self.model_combo.itemData(row)).resolve()) == path:
                self.model_combo.setCurrentIndex(row)
                return
        # A model outside the registry's folders (a path): add it to the list.
        from ..models.checkpoint import load_config
        from ..models.registry import ModelInfo

        config = load_config(path)
        info = ModelInfo(
            name=config.name,
            method=config.method,
            path=Path(path),
            source="path",
            grid=config.grid,
            noise=config.diffusion.noise,
            size_mb=0.0,
            config=config,
        )
        self.model_combo.addItem(f"{config.name} ({path})", path)
        row = self.model_combo.count() - 1
        self.model_combo.setItemData(row, info, Qt.ItemDataRole.UserRole + 1)
        self.model_combo.setCurrentIndex(row)

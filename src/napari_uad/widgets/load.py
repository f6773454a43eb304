"""The "Load scan" dock widget: a scan with its brain mask and truth, aligned, and the slices to
process.

A thin Qt layer over :mod:`napari_uad.cases`. Reading and mask estimation run in a thread worker;
layers are only touched on the main thread. Layers carry ``metadata["napari_uad"]`` with their
geometry and a ``role``:

- ``"scan"``: the scan (grey, placed in scanner mm with :func:`napari_uad.display.placement`;
  the viewer is put in the radiological view). It also holds ``"info"`` (what was read),
  ``"brain_slices"`` and ``"slice_range"`` = (start, stop), display Z indices, stop exclusive:
  the slices Detect should process.
- ``"brain_mask"``: labels ``"<stem> brain mask"``, hidden by default, editable.
- ``"truth"``: labels ``"<stem> truth"``, drawn as outlines.
- ``"slice_range"``: a shapes layer framing the brain on the slices to process.

The mask, truth and frame layers name their scan in ``metadata["napari_uad"]["scan"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._napari import outline_labels, truth_style
from ..cases import LoadedCase, check_slice_range, scan_stem
from ..display import apply_view_choice
from ..io.errors import InputError
from ._common import KEY, placement_of
from ._common import error_line as _one_line
from ._common import layer_info as _info
from ._common import show_error as _show_error
from ._common import show_info as _notify
from ._common import show_warnings as _warn

SCAN_FILTER = "Scans (*.nii *.nii.gz *.dcm);;All files (*)"
MASK_FILTER = "NIfTI masks (*.nii *.nii.gz);;All files (*)"
FRAME_COLOUR = "#ffd200"


def layer_role(layer) -> str | None:
    """The ``metadata["napari_uad"]["role"]`` of a layer, or None."""
    return _info(layer).get("role")


def scan_layers(viewer) -> list:
    """The layers holding scans loaded with napari-uad (role ``"scan"``), in layer order."""
    return [layer for layer in viewer.layers if layer_role(layer) == "scan"]


def companion_layers(viewer, scan_layer) -> dict[str, Any]:
    """The brain mask, truth and slice-range layers that belong to a scan layer, by role."""
    source = _info(scan_layer).get("source")
    found = {}
    for layer in viewer.layers:
        info = _info(layer)
        if layer.name != scan_layer.name and info.get("scan") == source and info.get("role"):
            found.setdefault(info["role"], layer)
    return found


def batched(viewer):
    """Context manager grouping layer-list changes (napari redraws once, not per layer)."""
    import contextlib

    update = getattr(viewer.layers, "batched_update", None)
    return update() if update is not None else contextlib.nullcontext()


def add_case_layers(viewer, case: LoadedCase, *, name: str | None = None) -> dict[str, Any]:
    """Add a loaded case to a viewer: scan, brain mask, truth and slice-range frame.

    Layers of an earlier load of the same scan are replaced. Must run on the main thread.

    Parameters
    ----------
    viewer : napari.Viewer
    case : LoadedCase
        From :func:`napari_uad.cases.load_case`.
    name : str, optional
        Scan layer name (default: the scan's stem); the other layers are named after it.

    Returns
    -------
    dict
        Layers by role: ``"scan"``, ``"brain_mask"``, ``"slice_range"`` and ``"truth"`` (when a
        truth mask was given).
    """
    from .._napari import scan_layer

    scan = case.scan
    stem = name or scan_stem(scan.source)
    source = str(scan.source)
    old = []
    for layer in list(viewer.layers):
        info = _info(layer)
        if (
            info.get("source") == source
            and info.get("role") == "scan"
            or (
                info.get("scan") == source
                and info.get("role") in ("brain_mask", "truth", "slice_range")
            )
        ):
            old.append(layer)
    with batched(viewer):
        for layer in old:
            viewer.layers.remove(layer)

    data, kwargs, _ = scan_layer(scan, name=stem, kind="image", role="scan")
    kwargs["metadata"][KEY].update(
        info=case.info.rows(),
        brain_mask=case.info.brain_mask,
        brain_slices=[int(k) for k in case.brain_slices],
        slice_mode="brain",
        slice_range=case.brain_span,
        notes=list(case.notes),
    )
    layers = {"scan": viewer.add_image(data, **kwargs)}

    data, kwargs, _ = scan_layer(
        scan.with_data(case.brain_mask.astype(np.uint8)),
        name=f"{stem} brain mask",
        kind="labels",
        role="brain_mask",
    )
    kwargs["metadata"][KEY]["scan"] = source
    layers["brain_mask"] = viewer.add_labels(data, opacity=0.35, visible=False, **kwargs)

    if case.truth is not None:
        data, kwargs, _ = scan_layer(
            scan.with_data(case.truth), name=f"{stem} truth", kind="labels", role="truth"
        )
        kwargs["metadata"][KEY]["scan"] = source
        truth = viewer.add_labels(data, **truth_style(), **kwargs)
        outline_labels(truth)
        layers["truth"] = truth

    layers["slice_range"] = update_slice_frame(viewer, layers["scan"])
    viewer.layers.selection.active = layers["scan"]
    start, stop = case.brain_span
    rows, cols = layers["scan"].data.shape[-2:]
    centre = ((start + stop - 1) / 2.0, (rows - 1) / 2.0, (cols - 1) / 2.0)
    middle = layers["scan"].data_to_world(centre)  # world: scanner mm
    axes = tuple(range(viewer.dims.ndim - len(middle), viewer.dims.ndim))
    viewer.dims.set_point(axes, tuple(float(v) for v in middle))
    apply_view_choice(viewer)
    viewer.reset_view()
    return layers


def update_slice_frame(viewer, scan_layer):
    """Draw (or redraw) the frame around the brain on the slices in the scan's slice range.

    Returns the shapes layer, created when missing.
    """
    info = _info(scan_layer)
    start, stop = info["slice_range"]
    companions = companion_layers(viewer, scan_layer)
    mask_layer = companions.get("brain_mask")
    footprint = None
    if mask_layer is not None and mask_layer.data.shape == scan_layer.data.shape:
        footprint = np.asarray(mask_layer.data[start:stop]).any(axis=0)
    if footprint is None or not footprint.any():
        footprint = np.ones(scan_layer.data.shape[1:], dtype=bool)
    rows = np.flatnonzero(footprint.any(axis=1))
    cols = np.flatnonzero(footprint.any(axis=0))
    y0, y1 = rows[0] - 1.0, rows[-1] + 1.0
    x0, x1 = cols[0] - 1.0, cols[-1] + 1.0
    shapes = [
        np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], dtype=float)
        for z in range(start, stop)
    ]
    layer = companions.get("slice_range")
    if layer is None:
        layer = viewer.add_shapes(
            shapes,
            shape_type="rectangle",
            name=f"{scan_layer.name} slice range",
            edge_color=FRAME_COLOUR,
            face_color="transparent",
            edge_width=1.5,
            opacity=0.9,
            **placement_of(scan_layer),
            metadata={
                KEY: {
                    "role": "slice_range",
                    "scan": info.get("source"),
                    "range": [start, stop],
                }
            },
        )
        layer.editable = False
        viewer.layers.selection.active = scan_layer
        return layer
    layer.data = []
    layer.add_rectangles(shapes, edge_color=FRAME_COLOUR, face_color="transparent", edge_width=1.5)
    layer.metadata[KEY]["range"] = [start, stop]
    return layer


class LoadScanWidget(QWidget):
    """Dock widget: load a scan (NIfTI or DICOM folder) with its brain mask and truth mask.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    scan_edit, mask_edit, truth_edit : QLineEdit
        Paths; empty mask: estimate it; empty truth: none.
    load_button, estimate_button : QPushButton
    prepare_button : QPushButton
        Prepares the selected raw scan (:meth:`prepare`); cancels while it runs.
    prepare_progress : QProgressBar
        The preparation's steps, shown while it runs.
    scan_combo : QComboBox
        The loaded scan the info panel, the brain mask and the slice range refer to.
    info_label : QLabel
        What was read (shape, voxel size, orientation, intensities, data type, brain mask).
    all_slices_radio, range_radio : QRadioButton
    first_spin, last_spin : QSpinBox
        Slice range (display Z, both inclusive as napari's slider shows them).
    loaded : Signal(dict)
        Emitted with the added layers (by role) after a load.
    mask_estimated : Signal(Layer)
        Emitted with the scan layer once its estimated brain mask is in place.
    prepare_step : Signal(int, int, str)
        Emitted from the preparation's thread before each step (done, total, step name).
    failed : Signal(str)
        Emitted with the one-line message shown when loading or estimating fails.
    """

    loaded = Signal(object)
    mask_estimated = Signal(object)
    failed = Signal(str)
    prepare_step = Signal(int, int, str)

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self._syncing = False

        self.scan_edit = QLineEdit()
        self.scan_edit.setPlaceholderText(".nii(.gz) or DICOM")
        self.scan_edit.setToolTip("A NIfTI file, a DICOM series folder or one .dcm file of it")
        self.scan_file_button = QPushButton("File…")
        self.scan_folder_button = QPushButton("DICOM…")
        self.mask_edit = QLineEdit()
        self.mask_edit.setPlaceholderText("optional (else estimated)")
        self.mask_button = QPushButton("…")
        self.truth_edit = QLineEdit()
        self.truth_edit.setPlaceholderText("optional lesion mask")
        self.truth_button = QPushButton("…")
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Read the scan and masks and add them as aligned layers")

        files = QFormLayout()
        files.addRow("Scan", _row(self.scan_edit, self.scan_file_button, self.scan_folder_button))
        files.addRow("Brain mask", _row(self.mask_edit, self.mask_button))
        files.addRow("Truth", _row(self.truth_edit, self.truth_button))
        files.addRow(self.load_button)
        files_box = QGroupBox("Open")
        files_box.setLayout(files)

        self.scan_combo = QComboBox()
        self.info_label = QLabel("No scan loaded.")
        self.info_label.setTextFormat(Qt.TextFormat.RichText)
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info_label.setWordWrap(True)
        self.notes_label = QLabel("")
        self.notes_label.setWordWrap(True)
        self.notes_label.setStyleSheet("color: #f0a030;")
        self.notes_label.setVisible(False)
        info_layout = QVBoxLayout()
        info_layout.addWidget(self.scan_combo)
        info_layout.addWidget(self.info_label)
        info_layout.addWidget(self.notes_label)
        info_box = QGroupBox("Scan")
        info_box.setLayout(info_layout)

        self.estimate_button = QPushButton("Estimate brain mask")
        self.estimate_button.setToolTip(
            "Threshold, hole filling and largest component: for skull-stripped scans. "
            "Edit the result with the labels tools."
        )
        self.prepare_button = QPushButton("Prepare raw scan…")
        self.prepare_button.setToolTip(
            "For scans with skull and neck: crop the neck, N4 bias correction and skull "
            "stripping (BET), as 'napari-uad prepare --align none --resolution native'. Adds the "
            "prepared brain as a new scan on the same voxels; run Detect on it."
        )
        self.prepare_progress = QProgressBar()
        self.prepare_progress.setVisible(False)
        self._prepare_stop = False
        self._preparing = False
        self.all_slices_radio = QRadioButton("All slices with brain")
        self.range_radio = QRadioButton("Slices")
        self.all_slices_radio.setChecked(True)
        self._mode_group = QButtonGroup(self)
        self._mode_group.addButton(self.all_slices_radio)
        self._mode_group.addButton(self.range_radio)
        self.first_spin = QSpinBox()
        self.last_spin = QSpinBox()
        self.use_current_button = QPushButton("Here")
        self.use_current_button.setToolTip("Start or end the range at the slice on screen")
        self.range_label = QLabel("")
        range_row = _row(
            self.range_radio, self.first_spin, QLabel("to"), self.last_spin, self.use_current_button
        )
        process = QVBoxLayout()
        process.addWidget(self.estimate_button)
        process.addWidget(self.prepare_button)
        process.addWidget(self.prepare_progress)
        process.addWidget(self.all_slices_radio)
        process.addWidget(range_row)
        process.addWidget(self.range_label)
        process_box = QGroupBox("Brain mask and slices to process")
        process_box.setLayout(process)

        layout = QVBoxLayout(self)
        layout.addWidget(files_box)
        layout.addWidget(info_box)
        layout.addWidget(process_box)
        layout.addStretch(1)

        self.scan_file_button.clicked.connect(self._pick_scan_file)
        self.scan_folder_button.clicked.connect(self._pick_scan_folder)
        self.mask_button.clicked.connect(lambda: self._pick_mask(self.mask_edit, "brain mask"))
        self.truth_button.clicked.connect(lambda: self._pick_mask(self.truth_edit, "truth mask"))
        self.load_button.clicked.connect(self.load)
        self.scan_edit.returnPressed.connect(self.load)
        self.estimate_button.clicked.connect(self.estimate_brain_mask)
        self.prepare_button.clicked.connect(self._prepare_clicked)
        self.prepare_step.connect(self._prepare_step_shown)
        self.scan_combo.currentIndexChanged.connect(self._show_selected)
        self.all_slices_radio.toggled.connect(self._range_changed)
        self.first_spin.valueChanged.connect(self._range_changed)
        self.last_spin.valueChanged.connect(self._range_changed)
        self.use_current_button.clicked.connect(self._use_current_slice)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_scans)
        self._refresh_scans()

    # ---- files ----------------------------------------------------------------------------

    def _pick_scan_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a scan", "", SCAN_FILTER)
        if path:
            self.scan_edit.setText(path)

    def _pick_scan_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a DICOM series folder")
        if path:
            self.scan_edit.setText(path)

    def _pick_mask(self, edit: QLineEdit, what: str) -> None:
        start = str(Path(self.scan_edit.text()).parent) if self.scan_edit.text() else ""
        path, _ = QFileDialog.getOpenFileName(self, f"Open a {what}", start, MASK_FILTER)
        if path:
            edit.setText(path)

    # ---- loading --------------------------------------------------------------------------

    def load(self):
        """Read the files named in the path fields in a worker, then add the layers.

        Returns the worker (started), or None when the fields are not valid.
        """
        scan = self.scan_edit.text().strip()
        if not scan:
            _show_error("Choose a scan first: a NIfTI file or a DICOM folder")
            return None
        mask = self.mask_edit.text().strip() or None
        truth = self.truth_edit.text().strip() or None
        return self.load_paths(scan, brain_mask=mask, truth=truth)

    def load_paths(self, scan, *, brain_mask=None, truth=None, name: str | None = None):
        """Load a scan with optional masks (files) in a worker; layers appear when done.

        Parameters
        ----------
        scan, brain_mask, truth : str or path-like
        name : str, optional
            Scan layer name (default: the scan's stem).

        Returns
        -------
        napari.qt.threading.FunctionWorker
            Already started; :attr:`loaded` or :attr:`failed` is emitted when it ends.
        """
        from napari.qt.threading import thread_worker

        from ..cases import load_case

        self.load_button.setEnabled(False)
        self.load_button.setText("Loading…")
        worker = thread_worker(load_case, start_thread=False, ignore_errors=True)(
            scan, brain_mask=brain_mask, truth=truth
        )
        worker.returned.connect(lambda case: self._show_case(case, name=name))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._idle)
        self.worker = worker
        worker.start()
        return worker

    def _idle(self) -> None:
        self.load_button.setEnabled(True)
        self.load_button.setText("Load")

    def _failed(self, error: BaseException) -> None:
        message = _one_line(error)
        _show_error(message)
        self.failed.emit(message)

    def _show_case(self, case: LoadedCase, *, name=None) -> None:
        try:
            layers = add_case_layers(self.viewer, case, name=name)
        except Exception as error:  # never let a bad file take the viewer down
            self._failed(error)
            return
        _warn(case.notes)
        self._refresh_scans()
        self.scan_combo.setCurrentIndex(scan_layers(self.viewer).index(layers["scan"]))
        self._show_selected()
        self.loaded.emit(layers)

    # ---- the selected scan ----------------------------------------------------------------

    def selected_scan_layer(self):
        """The scan layer the panel shows (None when no scan is loaded)."""
        layers = scan_layers(self.viewer)
        index = self.scan_combo.currentIndex()
        return layers[index] if 0 <= index < len(layers) else None

    def _refresh_scans(self, event=None) -> None:
        current = self.selected_scan_layer() if self.scan_combo.count() else None
        layers = scan_layers(self.viewer)
        self._syncing = True
        self.scan_combo.clear()
        self.scan_combo.addItems([layer.name for layer in layers])
        if current in layers:
            self.scan_combo.setCurrentIndex(layers.index(current))
        self._syncing = False
        self._show_selected()

    def _show_selected(self, index=None) -> None:
        if self._syncing:
            return
        layer = self.selected_scan_layer()
        enabled = layer is not None
        for widget in (
            self.estimate_button,
            self.all_slices_radio,
            self.range_radio,
            self.first_spin,
            self.last_spin,
            self.use_current_button,
        ):
            widget.setEnabled(enabled)
        if layer is None:
            self.info_label.setText("No scan loaded.")
            self.notes_label.setVisible(False)
            self.range_label.setText("")
            return
        info = _info(layer)
        self.info_label.setText(_info_html(info.get("info") or []))
        notes = info.get("notes") or []
        self.notes_label.setText("\n".join(notes))
        self.notes_label.setVisible(bool(notes))
        n_slices = layer.data.shape[0]
        start, stop = info.get("slice_range") or (0, n_slices)
        self._syncing = True
        self.first_spin.setRange(0, n_slices - 1)
        self.last_spin.setRange(0, n_slices - 1)
        self.first_spin.setValue(start)
        self.last_spin.setValue(stop - 1)
        brain_mode = info.get("slice_mode", "brain") == "brain"
        self.all_slices_radio.setChecked(brain_mode)
        self.range_radio.setChecked(not brain_mode)
        self._syncing = False
        self._show_range(layer)

    def _show_range(self, layer) -> None:
        info = _info(layer)
        start, stop = info["slice_range"]
        n_slices = layer.data.shape[0]
        self.first_spin.setEnabled(not self.all_slices_radio.isChecked())
        self.last_spin.setEnabled(not self.all_slices_radio.isChecked())
        self.range_label.setText(
            f"Processing {stop - start} of {n_slices} slices ({start}–{stop - 1}), framed in yellow"
        )

    def _range_changed(self, *args) -> None:
        if self._syncing:
            return
        layer = self.selected_scan_layer()
        if layer is None:
            return
        try:
            if self.all_slices_radio.isChecked():
                self.set_slice_range(None)
            else:
                first, last = self.first_spin.value(), self.last_spin.value()
                if last < first:  # keep the pair ordered as the user drags either end
                    self._syncing = True
                    if self.sender() is self.first_spin:
                        self.last_spin.setValue(first)
                    else:
                        self.first_spin.setValue(last)
                    self._syncing = False
                    first, last = self.first_spin.value(), self.last_spin.value()
                self.set_slice_range((first, last + 1))
        except InputError as error:
            _show_error(_one_line(error))

    def _use_current_slice(self) -> None:
        layer = self.selected_scan_layer()
        if layer is None:
            return
        z = int(round(layer.world_to_data(self.viewer.dims.point)[0]))
        first, last = self.first_spin.value(), self.last_spin.value()
        self._syncing = True
        self.range_radio.setChecked(True)
        if abs(z - first) <= abs(z - last):
            self.first_spin.setValue(min(z, last))
        else:
            self.last_spin.setValue(max(z, first))
        self._syncing = False
        self._range_changed()

    def set_slice_range(self, slice_range: tuple[int, int] | None) -> tuple[int, int]:
        """Set the selected scan's slices to process and redraw the frame.

        Parameters
        ----------
        slice_range : (int, int) or None
            (start, stop) in display Z, stop exclusive; None: all slices with brain.

        Returns
        -------
        (int, int)
            The range stored in ``metadata["napari_uad"]["slice_range"]``.
        """
        layer = self.selected_scan_layer()
        if layer is None:
            raise InputError("Load a scan first")
        info = _info(layer)
        n_slices = layer.data.shape[0]
        if slice_range is None:
            brain = info.get("brain_slices") or [0, n_slices - 1]
            slice_range = (int(brain[0]), int(brain[-1]) + 1)
            info["slice_mode"] = "brain"
        else:
            info["slice_mode"] = "range"
        info["slice_range"] = check_slice_range(*slice_range, n_slices)
        self._syncing = True
        self.first_spin.setValue(info["slice_range"][0])
        self.last_spin.setValue(info["slice_range"][1] - 1)
        self._syncing = False
        update_slice_frame(self.viewer, layer)
        self._show_range(layer)
        return info["slice_range"]

    def estimate_brain_mask(self):
        """Estimate the selected scan's brain mask in a worker and put it in its mask layer.

        Returns the worker (started), or None when no scan is loaded.
        """
        from napari.qt.threading import thread_worker

        from ..cases import estimate_case_brain_mask

        layer = self.selected_scan_layer()
        if layer is None:
            _show_error("Load a scan first")
            return None
        scan = _scan_of(layer)
        self.estimate_button.setEnabled(False)
        worker = thread_worker(estimate_case_brain_mask, start_thread=False, ignore_errors=True)(
            scan
        )
        worker.returned.connect(lambda result: self._set_mask(layer, scan, *result))
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: self.estimate_button.setEnabled(True))
        self.worker = worker
        worker.start()
        return worker

    def _prepare_step_shown(self, done: int, total: int, name: str) -> None:
        self.prepare_progress.setRange(0, total)
        self.prepare_progress.setValue(done)
        self.prepare_progress.setFormat(f"{name} (%v/%m)")

    def _prepare_clicked(self) -> None:
        if self._preparing:
            self._prepare_stop = True
            self.prepare_button.setText("Cancelling…")
            return
        self.prepare()

    def prepare(self, options=None):
        """Prepare the selected scan in a worker (see :func:`napari_uad.prepare.prepare_scan`)
        and add the prepared brain as a new scan; the button cancels while it runs.

        Returns the worker (started), or None when no scan is loaded.
        """
        from napari.qt.threading import thread_worker

        from ..prepare.case import prepared_case

        layer = self.selected_scan_layer()
        if layer is None:
            _show_error("Load a scan first")
            return None
        scan = _scan_of(layer)
        self._prepare_stop = False
        worker = thread_worker(prepared_case, start_thread=False, ignore_errors=True)(
            scan,
            options,
            progress=self.prepare_step.emit,
            should_stop=lambda: self._prepare_stop,
        )
        worker.returned.connect(self._show_prepared)
        worker.errored.connect(self._prepare_failed)
        worker.finished.connect(self._prepare_idle)
        self._preparing = True
        self.prepare_button.setText("Cancel preparing")
        self.prepare_progress.setValue(0)
        self.prepare_progress.setVisible(True)
        self.worker = worker
        worker.start()
        return worker

    def _show_prepared(self, result) -> None:
        case, prepared = result
        self._show_case(case, name=case.info.name)
        _notify(
            f"Prepared {case.info.name}: brain {case.info.brain_volume_ml:.0f} mL in "
            f"{prepared.seconds:.0f} s. Run Detect on it."
        )

    def _prepare_failed(self, error: BaseException) -> None:
        from ..progress import Cancelled

        if isinstance(error, Cancelled):
            return
        self._failed(error)

    def _prepare_idle(self) -> None:
        self._preparing = False
        self.prepare_progress.setVisible(False)
        self.prepare_button.setText("Prepare raw scan…")

    def _set_mask(self, layer, scan, mask, notes) -> None:
        from .._napari import scan_layer
        from ..preprocess import slices_with_brain, to_canonical

        info = _info(layer)
        data, kwargs, _ = scan_layer(
            scan.with_data(mask.astype(np.uint8)),
            name=f"{layer.name} brain mask",
            kind="labels",
            role="brain_mask",
        )
        kwargs["metadata"][KEY]["scan"] = info.get("source")
        existing = companion_layers(self.viewer, layer).get("brain_mask")
        if existing is not None:
            existing.data = data
            existing.visible = True
        else:
            self.viewer.add_labels(data, opacity=0.35, **kwargs)
            self.viewer.layers.selection.active = layer
        info["brain_mask"] = "estimated"
        info["brain_slices"] = [
            int(k) for k in slices_with_brain(to_canonical(mask, scan.affine)[0])
        ]
        volume_ml = float(mask.sum()) * float(np.prod(scan.spacing)) / 1000.0
        info["info"] = [
            (label, f"estimated, {volume_ml:.4g} mL" if label == "Brain mask" else text)
            for label, text in info.get("info") or []
        ]
        info["notes"] = list(notes)
        _warn(notes)
        if info.get("slice_mode", "brain") == "brain":
            self.set_slice_range(None)
        else:
            update_slice_frame(self.viewer, layer)
        self._show_selected()
        self.mask_estimated.emit(layer)


def detection_inputs(viewer, scan_layer) -> dict[str, Any]:
    """What a detection needs from a scan loaded with this widget, read on the main thread.

    Parameters
    ----------
    viewer : napari.Viewer
    scan_layer : napari.layers.Image
        A layer with role ``"scan"``.

    Returns
    -------
    dict
        ``scan``: the :class:`~napari_uad.io.Scan` on the file's grid; ``brain_mask``: the
        (possibly edited) brain mask layer as a bool array on the file's grid, or None when
        there is none; ``slices``: the RAS+ slice indices of the chosen range (display Z equals
        RAS+ Z), or None for "all slices with brain". These are the ``scan``, ``brain_mask``
        and ``slices`` arguments of :func:`napari_uad.pipeline.iter_detect`.
    """
    from ..display import from_display

    info = _info(scan_layer)
    mask_layer = companion_layers(viewer, scan_layer).get("brain_mask")
    brain_mask = None
    if mask_layer is not None and mask_layer.data.shape == scan_layer.data.shape:
        brain_mask = from_display(np.asarray(mask_layer.data) > 0, info["affine"])
    slices = None
    if info.get("slice_mode") == "range" and info.get("slice_range"):
        start, stop = info["slice_range"]
        slices = np.arange(start, stop)
    return {"scan": _scan_of(scan_layer), "brain_mask": brain_mask, "slices": slices}


def _scan_of(layer):
    """The Scan (file grid) behind a scan layer."""
    from ..display import from_display
    from ..io import Scan

    info = _info(layer)
    return Scan(
        data=from_display(np.asarray(layer.data), info["affine"]).astype(np.float32),
        affine=info["affine"],
        header=info.get("header"),
        source=info.get("source"),
    )


def _row(*widgets) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget, 1 if isinstance(widget, QLineEdit) else 0)
    return row


def _info_html(rows) -> str:
    cells = "".join(
        f"<tr><td style='padding-right:8px;color:#9aa0a6'>{label}</td><td>{text}</td></tr>"
        for label, text in rows
    )
    return f"<table cellspacing='0' cellpadding='1'>{cells}</table>"

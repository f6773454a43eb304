"""The "Case browser" dock widget: go through a cohort case by case, keeping each case's results.

Open a folder of scans or a CSV list (see :mod:`napari_uad.cases` for the conventions). One case
is in the viewer at a time. On leaving a case, its layers are taken out of the viewer and kept:
in memory for the last few cases (exactly as they were, metadata included), and on disk in the
results folder (NIfTI on the scan's grid + ``layers.json``) so they come back in a later
session. Each case has a status, *not run* / *done* / *reviewed*, saved at once in
``napari-uad-review.json`` in the results folder.

Which layers belong to a case is decided generically, so layers added by other widgets are kept
too: a layer whose ``metadata["napari_uad"]`` has ``source`` (or ``scan``) equal to the case's
scan, or a ``role`` naming a result (pseudo-healthy image, anomaly map, lesion mask).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..cases import (
    STATUSES,
    Case,
    ReviewState,
    StoredLayer,
    case_folder,
    default_results_folder,
    open_cases,
)
from ..io.errors import InputError
from ._common import KEY, placement_of
from ._common import error_line as _one_line
from ._common import layer_info as _info
from ._common import show_error as _show_error
from ._common import show_warnings as _warn
from .load import add_case_layers, batched

LOADER_ROLES = ("scan", "brain_mask", "truth", "slice_range")
RESULT_ROLES = (
    "pseudohealthy",
    "healthy",
    "anomaly",
    "anomalymap",
    "heatmap",
    "lesionmask",
    "lesions",
    "mask",
)
STATUS_MARKS = {"not run": "○", "done": "●", "reviewed": "✓"}
STATUS_COLOURS = {"not run": "#9aa0a6", "done": "#f0a030", "reviewed": "#4caf50"}
_DISPLAY_KEYS = {
    "image": ("opacity", "blending", "visible", "contrast_limits", "gamma", "interpolation2d"),
    "labels": ("opacity", "blending", "visible", "contour"),
}


def _normal_role(role) -> str:
    return re.sub(r"[^a-z]", "", str(role).lower()) if role else ""


def _same_path(a, b) -> bool:
    if not a or not b:
        return False
    if str(a) == str(b):
        return True
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def is_result_layer(layer) -> bool:
    """Whether a layer is a result (not the scan, its masks or its frame)."""
    info = _info(layer)
    role = info.get("role")
    if role in LOADER_ROLES:
        return False
    return _normal_role(role) in RESULT_ROLES or bool(info.get("source") or info.get("scan"))


def belongs_to(layer, scan_path) -> bool:
    """Whether a layer belongs to the case of ``scan_path`` (see the module docstring)."""
    info = _info(layer)
    if _same_path(info.get("source"), scan_path) or _same_path(info.get("scan"), scan_path):
        return True
    return _normal_role(info.get("role")) in RESULT_ROLES


def to_stored(layer) -> StoredLayer | None:
    """A layer as plain data for :func:`napari_uad.cases.save_case_layers` (None if not stored).

    Image and labels layers on the scan's display grid are stored; other layer types are kept in
    memory only.
    """
    kind = type(layer).__name__.lower()
    if kind not in _DISPLAY_KEYS:
        return None
    properties = {key: getattr(layer, key) for key in _DISPLAY_KEYS[kind] if hasattr(layer, key)}
    for key, value in list(properties.items()):
        if hasattr(value, "value"):  # enums (blending, interpolation)
            properties[key] = value.value
    if kind == "image":
        properties["colormap"] = layer.colormap.name
        properties["contrast_limits"] = [float(v) for v in layer.contrast_limits]
    metadata = {
        key: value
        for key, value in _info(layer).items()
        if key not in ("affine", "header", "source", "shape", "scan")
    }
    extra = {key: value for key, value in layer.metadata.items() if key != KEY}
    if extra:
        metadata["layer_metadata"] = extra
    return StoredLayer(
        name=layer.name,
        kind=kind,
        data=np.asarray(layer.data),
        properties=properties,
        metadata=metadata,
    )


class CaseBrowserWidget(QWidget):
    """Dock widget: a list of cases with previous/next, per-case results and review status.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    max_cached : int
        Cases whose layers stay in memory after leaving them; older ones are reloaded from disk.

    Attributes
    ----------
    open_folder_button, open_csv_button, previous_button, next_button, reviewed_button :
        QPushButton
    case_list : QListWidget
    status_combo : QComboBox
        The current case's status.
    summary_label, results_label : QLabel
    cases : list of Case
    review : ReviewState or None
    index : int or None
        The case in the viewer.
    case_shown : Signal(int)
        Emitted with the case index once its layers are in the viewer.
    """

    case_shown = Signal(int)
    failed = Signal(str)

    def __init__(self, napari_viewer, parent=None, *, max_cached: int = 6) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.max_cached = max_cached
        self.cases: list[Case] = []
        self.review: ReviewState | None = None
        self.index: int | None = None
        self.worker = None
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._syncing = False

        self.open_folder_button = QPushButton("Open folder…")
        self.open_csv_button = QPushButton("Open CSV list…")
        self.results_label = QLabel("")
        self.results_label.setWordWrap(True)
        self.results_label.setStyleSheet("color: #9aa0a6;")
        self.case_list = QListWidget()
        self.case_list.setMinimumHeight(120)
        self.previous_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.status_combo = QComboBox()
        self.status_combo.addItems(list(STATUSES))
        self.reviewed_button = QPushButton("Reviewed, next")
        self.reviewed_button.setToolTip("Mark this case reviewed and go to the next one")
        self.summary_label = QLabel("Open a folder of scans or a CSV list.")
        self.summary_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(_row(self.open_folder_button, self.open_csv_button))
        layout.addWidget(self.results_label)
        layout.addWidget(self.case_list, 1)
        layout.addWidget(_row(self.previous_button, self.next_button))
        layout.addWidget(_row(QLabel("Status"), self.status_combo, self.reviewed_button))
        layout.addWidget(self.summary_label)

        self.open_folder_button.clicked.connect(self._pick_folder)
        self.open_csv_button.clicked.connect(self._pick_csv)
        self.previous_button.clicked.connect(self.previous)
        self.next_button.clicked.connect(self.next)
        self.reviewed_button.clicked.connect(self._reviewed_next)
        self.status_combo.currentTextChanged.connect(self._status_chosen)
        self.case_list.currentRowChanged.connect(self._row_chosen)
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        self._update_controls()

    # ---- opening --------------------------------------------------------------------------

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of scans")
        if path:
            self.open(path)

    def _pick_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a list of cases", "", "CSV (*.csv *.tsv *.txt);;All files (*)"
        )
        if path:
            self.open(path)

    def open(self, path, *, results=None, show: bool = True):
        """Open a folder or CSV list of cases and show the case the review was left at.

        Parameters
        ----------
        path : str or path-like
            Folder of scans or CSV list.
        results : str or path-like, optional
            Results folder (default: ``napari-uad-results`` beside the cases).
        show : bool
            Load the current case (the one saved in the review file, else the first).

        Returns
        -------
        worker or None
            The loading worker of the case shown (None when nothing is loaded).
        """
        try:
            cases = open_cases(path)
            review = ReviewState(results or default_results_folder(path))
        except InputError as error:
            self._fail(error)
            return None
        self._leave_current()
        self.cases, self.review, self.index = cases, review, None
        self._cache.clear()
        self.results_label.setText(f"{len(cases)} cases · results in {review.results}")
        self.results_label.setToolTip(str(review.results))
        self._syncing = True
        self.case_list.clear()
        for case in cases:
            item = QListWidgetItem()
            item.setToolTip(str(case.scan))
            self.case_list.addItem(item)
        self._syncing = False
        self._refresh_items()
        if not show:
            return None
        ids = [case.id for case in cases]
        start = ids.index(review.current) if review.current in ids else 0
        return self.go_to(start)

    # ---- navigation -----------------------------------------------------------------------

    @property
    def current_case(self) -> Case | None:
        """The case in the viewer."""
        return self.cases[self.index] if self.index is not None else None

    def next(self):
        """Go to the next case (returns the loading worker, or None)."""
        if self.index is not None and self.index + 1 < len(self.cases):
            return self.go_to(self.index + 1)
        return None

    def previous(self):
        """Go to the previous case (returns the loading worker, or None)."""
        if self.index is not None and self.index > 0:
            return self.go_to(self.index - 1)
        return None

    def go_to(self, index: int):
        """Keep the current case's layers and show case ``index``.

        Returns
        -------
        worker or None
            The worker loading the case from disk; None when it came back from memory (then
            :attr:`case_shown` has already been emitted).
        """
        if not 0 <= index < len(self.cases) or self._loading():
            return None
        if index == self.index:
            return None
        self._leave_current()
        self.index = index
        case = self.cases[index]
        self._save_state(self.review.set_current, case.id)
        self._select_row(index)
        cached = self._cache.pop(case.id, None)
        if cached is not None:
            for layer in cached["layers"]:
                self.viewer.layers.append(layer)
            if cached.get("point") is not None:
                self.viewer.dims.point = cached["point"]
            self._shown()
            return None
        return self._load(case)

    def _loading(self) -> bool:
        return self.worker is not None and self.worker.is_running

    def _load(self, case: Case):
        from napari.qt.threading import thread_worker

        folder = case_folder(self.review.results, case.id)

        def work():
            from ..cases import load_case, load_case_layers

            loaded = load_case(case.scan, brain_mask=case.brain_mask, truth=case.truth)
            return loaded, load_case_layers(folder, like=loaded.scan)

        worker = thread_worker(work, start_thread=False, ignore_errors=True)()
        worker.returned.connect(lambda result: self._show_loaded(case, *result))
        worker.errored.connect(self._fail)
        worker.finished.connect(self._update_controls)
        self.worker = worker
        self._update_controls()
        self.summary_label.setText(f"Loading {case.id}…")
        worker.start()
        return worker

    def _show_loaded(self, case: Case, loaded, stored: list[StoredLayer]) -> None:
        if self.current_case is not case:
            return
        try:
            layers = add_case_layers(self.viewer, loaded, name=case.id)
            _warn(loaded.notes)
            for item in stored:
                self._add_stored(item, loaded.scan, layers)
        except Exception as error:  # never let a bad file take the viewer down
            self._fail(error)
            return
        self._shown()

    def _add_stored(self, item: StoredLayer, scan, layers) -> None:
        metadata = dict(item.metadata)
        extra = metadata.pop("layer_metadata", {})
        if metadata.get("role") == "brain_mask" and "brain_mask" in layers:
            layers["brain_mask"].data = item.data
            return
        scan_info = _info(layers["scan"])
        info = {key: scan_info[key] for key in ("affine", "header", "source", "shape")}
        info.update(metadata)
        where = placement_of(layers["scan"])
        properties = dict(item.properties)
        if item.kind == "labels":
            contour = properties.pop("contour", 0)
            layer = self.viewer.add_labels(
                item.data,
                name=item.name,
                metadata={**extra, KEY: info},
                **where,
                **properties,
            )
            layer.contour = contour
        else:
            self.viewer.add_image(
                item.data,
                name=item.name,
                metadata={**extra, KEY: info},
                **where,
                **properties,
            )

    def _shown(self) -> None:
        case = self.current_case
        if self._case_layers() and any(is_result_layer(layer) for layer in self._case_layers()):
            self._mark_done(case)
        self._refresh_items()
        self._update_controls()
        self.case_shown.emit(self.index)

    def _case_layers(self) -> list:
        case = self.current_case
        if case is None:
            return []
        return [layer for layer in self.viewer.layers if belongs_to(layer, case.scan)]

    def _leave_current(self) -> None:
        """Take the current case's layers out of the viewer; keep them in memory and on disk."""
        case = self.current_case
        if case is None:
            return
        layers = self._case_layers()
        if any(is_result_layer(layer) for layer in layers):
            self._mark_done(case)
        try:
            self.save_current(layers)
        except Exception as error:  # keep browsing; the layers stay in memory
            self._fail(error)
        point = tuple(self.viewer.dims.point)
        with batched(self.viewer):  # one scene-graph clean-up instead of one per layer
            for layer in layers:
                self.viewer.layers.remove(layer)
        if any(_info(layer).get("role") == "scan" for layer in layers):
            self._cache[case.id] = {"layers": layers, "point": point}
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        self.index = None

    def save_current(self, layers=None) -> Path | None:
        """Store the current case's result layers (and its brain mask) in the results folder.

        Returns the index file written, or None when there is nothing to store.
        """
        from ..cases import save_case_layers
        from .load import _scan_of

        case = self.current_case
        if case is None:
            return None
        layers = self._case_layers() if layers is None else layers
        scan_layer = next((la for la in layers if _info(la).get("role") == "scan"), None)
        stored = [
            item
            for layer in layers
            if _info(layer).get("role") not in ("scan", "truth", "slice_range")
            and (item := to_stored(layer)) is not None
            and scan_layer is not None
            and item.data.shape == scan_layer.data.shape
        ]
        if scan_layer is None or not any(
            item.metadata.get("role") != "brain_mask" for item in stored
        ):
            return None
        like = _scan_of(scan_layer)
        return save_case_layers(case_folder(self.review.results, case.id), stored, like=like)

    # ---- status ---------------------------------------------------------------------------

    def set_status(self, status: str, index: int | None = None) -> None:
        """Set a case's review status (default: the current case) and save it."""
        index = self.index if index is None else index
        if index is None or self.review is None:
            return
        case = self.cases[index]
        self._save_state(self.review.set_status, case.id, status, scan=case.scan)
        self._refresh_items()

    def _mark_done(self, case: Case) -> None:
        if self.review.status(case.id) == "not run":
            self._save_state(self.review.set_status, case.id, "done", scan=case.scan)

    def _save_state(self, change, *args, **kwargs) -> None:
        """Apply a change to the review state; a file that cannot be written is reported once."""
        try:
            change(*args, **kwargs)
        except InputError as error:
            if not getattr(self, "_state_error_shown", False):
                self._state_error_shown = True
                self._fail(error)

    def _status_chosen(self, status: str) -> None:
        if not self._syncing:
            self.set_status(status)

    def _reviewed_next(self) -> None:
        self.set_status("reviewed")
        self.next()

    def _layer_inserted(self, event) -> None:
        case = self.current_case
        if case is None or self._syncing or self._loading():
            return
        layer = event.value
        if belongs_to(layer, case.scan) and is_result_layer(layer):
            self._mark_done(case)
            self._refresh_items()

    # ---- display --------------------------------------------------------------------------

    def _row_chosen(self, row: int) -> None:
        if self._syncing or row < 0 or row == self.index:
            return
        if self.go_to(row) is None and row != self.index:
            self._select_row(self.index)

    def _select_row(self, row) -> None:
        self._syncing = True
        self.case_list.setCurrentRow(-1 if row is None else row)
        self._syncing = False

    def _refresh_items(self) -> None:
        if self.review is None:
            return
        for row, case in enumerate(self.cases):
            status = self.review.status(case.id)
            item = self.case_list.item(row)
            item.setText(f"{STATUS_MARKS[status]}  {case.id}")
            item.setForeground(QColor(STATUS_COLOURS[status]) if status != "not run" else QColor())
            item.setData(Qt.ItemDataRole.UserRole, status)
        counts = self.review.counts(case.id for case in self.cases)
        position = f"Case {self.index + 1} of {len(self.cases)}" if self.index is not None else ""
        self.summary_label.setText(
            f"{position} · {counts['reviewed']} reviewed, {counts['done']} done, "
            f"{counts['not run']} not run".strip(" ·")
        )
        self._syncing = True
        if self.current_case is not None:
            self.status_combo.setCurrentText(self.review.status(self.current_case.id))
        self._syncing = False

    def _update_controls(self, *args) -> None:
        has = self.index is not None and not self._loading()
        self.previous_button.setEnabled(has and self.index > 0)
        self.next_button.setEnabled(has and self.index + 1 < len(self.cases))
        self.status_combo.setEnabled(has)
        self.reviewed_button.setEnabled(has)

    def _fail(self, error: BaseException) -> None:
        message = _one_line(error)
        _show_error(message)
        self.failed.emit(message)
        self._update_controls()


def _row(*widgets) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return row

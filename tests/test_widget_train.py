"""The Train dock widget drives a real (tiny) training run from napari."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_uad.data.phantoms import make_brain
from napari_uad.models.checkpoint import load_config
from napari_uad.training.state import STATE_NAME
from napari_uad.widgets.train import PREVIEW_LAYER, RESUME, TrainWidget


@pytest.fixture
def healthy_folder(tmp_path):
    folder = tmp_path / "healthy"
    folder.mkdir()
    for index in range(2):
        image, mask = make_brain((40, 44, 6), seed=20 + index)
        affine = np.diag([1.4, 1.4, 3.0, 1.0])
        scan = nib.Nifti1Image((image * 700).astype(np.float32), affine)
        nib.save(scan, folder / f"h{index}.nii.gz")
    return folder


def _form(widget, folder, out, steps):
    widget.folder.setText(str(folder))
    widget.output.setText(str(out))
    widget.steps.setValue(steps)
    widget.batch.setValue(4)
    widget.grid.setCurrentText("32")
    widget.device.setCurrentIndex(widget.device.findData("cpu"))


def test_train_widget_runs_a_tiny_training(make_napari_viewer, qtbot, healthy_folder, tmp_path):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    _form(widget, healthy_folder, tmp_path / "runs" / "tiny", steps=6)
    saved = []
    widget.model_saved.connect(saved.append)
    worker = widget.start()
    assert worker is not None and not widget.start_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert saved == [str(tmp_path / "runs" / "tiny")]
    assert widget.progress.value() == 6
    assert len(widget.curve.losses) == 6
    assert PREVIEW_LAYER in viewer.layers
    rows, columns = viewer.layers[PREVIEW_LAYER].data.shape
    assert rows == 2 * 32 and columns >= 32 and columns % 32 == 0  # inputs over restorations
    config = load_config(tmp_path / "runs" / "tiny")
    assert config.training["steps"] == 6 and config.grid == 32
    assert "finished at step 6 of 6" in widget.status.text()
    assert widget.start_button.isEnabled()


def test_stop_saves_a_resumable_run(make_napari_viewer, qtbot, healthy_folder, tmp_path):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    out = tmp_path / "stopped"
    _form(widget, healthy_folder, out, steps=100_000)
    worker = widget.start()
    worker.yielded.connect(lambda update: None if isinstance(update, str) else widget.stop())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert (out / STATE_NAME).is_file()
    assert "stopped at step" in widget.status.text()
    step = load_config(out).training["steps"]
    assert 0 < step < 100_000
    # Resume from the form: continues from the saved step.
    widget.start_from.setCurrentIndex(widget.start_from.findText(RESUME))
    widget.steps.setValue(step + 2)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert load_config(out).training["steps"] == step + 2


def test_bad_folder_is_reported_without_starting(make_napari_viewer, tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr("napari_uad.widgets.train._notify_error", messages.append)
    widget = TrainWidget(make_napari_viewer())
    widget.folder.setText(str(tmp_path / "missing"))
    assert widget.start() is None and widget.worker is None
    assert "choose a folder" in messages[0]


def test_training_error_is_shown_and_the_widget_recovers(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    messages = []
    monkeypatch.setattr("napari_uad.widgets.train._notify_error", messages.append)
    (tmp_path / "empty").mkdir()
    widget = TrainWidget(make_napari_viewer())
    _form(widget, tmp_path / "empty", tmp_path / "out", steps=5)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "no usable scan" in messages[0]
    assert widget.start_button.isEnabled()


def test_train_widget_is_in_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-uad", "Train")
    assert isinstance(widget, TrainWidget)

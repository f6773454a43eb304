"""The dock widgets working together: Load -> Detect (mask, slice range), Train -> Detect."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from napari_uad.data.phantoms import make_brain
from napari_uad.widgets.detect import DetectWidget, State
from napari_uad.widgets.load import LoadScanWidget
from napari_uad.widgets.train import TrainWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_model_dir):
    folder = tmp_path / "models"
    shutil.copytree(tiny_model_dir, folder / "tiny")
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(folder))
    return folder


def _detect(qtbot, widget):
    widget.run()
    assert widget.state is State.RUNNING, widget.status_label.text()
    with qtbot.waitSignal(widget.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(
        lambda: widget.worker is None and widget.state is not State.RUNNING, timeout=10_000
    )
    assert widget.state is State.DONE, widget.status_label.text()


def test_detect_uses_the_loaded_brain_mask_and_slice_range(
    make_napari_viewer, qtbot, models_dir, phantom_scan_files
):
    viewer = make_napari_viewer()
    loader = LoadScanWidget(viewer)
    viewer.window.add_dock_widget(loader, name="Load scan")
    files = phantom_scan_files
    loader.scan_edit.setText(str(files["scan"]))
    loader.mask_edit.setText(str(files["mask"]))
    with qtbot.waitSignal(loader.loaded, timeout=20_000) as blocker:
        loader.load_button.click()
    layers = blocker.args[0]
    loader.range_radio.setChecked(True)
    loader.first_spin.setValue(1)
    loader.last_spin.setValue(3)  # display slices 1..3
    start, stop = layers["scan"].metadata["napari_uad"]["slice_range"]
    # Edit the brain mask: drop the left half of the brain in every slice.
    mask_layer = layers["brain_mask"]
    edited = mask_layer.data.copy()
    edited[:, :, : edited.shape[2] // 2] = 0
    mask_layer.data = edited

    detect = DetectWidget(viewer)
    detect.set_params(model="tiny", device="cpu", steps=2)
    detect.layer_combo.setCurrentText(layers["scan"].name)
    _detect(qtbot, detect)
    anomaly = next(layer for layer in viewer.layers if layer.name.startswith("anomaly ·"))
    outside = np.ones(anomaly.data.shape[0], bool)
    outside[start:stop] = False
    assert anomaly.data[outside].max() == 0  # slices outside the chosen range are not scored
    assert anomaly.data[start:stop].max() > 0
    assert anomaly.data[edited == 0].max() == 0  # nothing outside the edited brain mask
    assert anomaly.metadata["napari_uad"]["provenance"]["parameters"]["brain_mask"] == "given"


def test_a_model_trained_in_napari_appears_in_detect(
    make_napari_viewer, qtbot, models_dir, tmp_path
):
    folder = tmp_path / "healthy"
    folder.mkdir()
    for index in range(2):
        image, _ = make_brain((40, 44, 6), seed=30 + index)
        scan = nib.Nifti1Image((image * 500).astype(np.float32), np.diag([1.4, 1.4, 3, 1]))
        nib.save(scan, folder / f"h{index}.nii.gz")
    viewer = make_napari_viewer()
    detect = DetectWidget(viewer)
    viewer.window.add_dock_widget(detect, name="Detect anomalies")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train")
    models = [detect.model_combo.itemText(i) for i in range(detect.model_combo.count())]
    assert "fresh" not in models
    train.folder.setText(str(folder))
    train.output.setText("fresh")
    train.steps.setValue(3)
    train.batch.setValue(4)
    train.grid.setCurrentText("32")
    train.start()
    qtbot.waitUntil(lambda: train.worker is None, timeout=120_000)
    assert (models_dir / "fresh" / "config.json").is_file()
    models = [detect.model_combo.itemText(i) for i in range(detect.model_combo.count())]
    assert "fresh" in models

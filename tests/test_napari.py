"""napari contributions: reader, writers, sample data and the demo, under Xvfb."""

import nibabel as nib
import numpy as np
import pytest

from napari_uad._napari import get_reader, read_nifti_layers, sample_lesion
from napari_uad.display import from_display, to_display
from napari_uad.samples import sample_path


def test_reader_keeps_geometry(phantom_scan_files):
    assert get_reader(str(phantom_scan_files["scan"])) is not None
    assert get_reader("picture.png") is None
    ((data, meta, kind),) = read_nifti_layers(str(phantom_scan_files["scan"]))
    assert kind == "image"
    assert data.shape == (6, 56, 48)  # axial slices first
    assert meta["scale"] == pytest.approx((3.0, 1.2, 1.2))
    np.testing.assert_allclose(
        meta["metadata"]["napari_uad"]["affine"], nib.load(phantom_scan_files["scan"]).affine
    )
    ((_, _, mask_kind),) = read_nifti_layers(str(phantom_scan_files["mask"]))
    assert mask_kind == "labels"


def test_display_is_radiological_and_invertible(phantom_scan_files):
    image = nib.load(phantom_scan_files["truth"])
    truth = np.asarray(image.dataobj)
    display, _ = to_display(truth, image.affine)
    np.testing.assert_array_equal(from_display(display, image.affine), truth)
    # The phantom's tumour is in the subject's ... whichever side: the RAS x of its centre
    # decides on which half of the screen it must appear (patient right on screen left).
    ijk = np.argwhere(truth).mean(axis=0)
    x_mm = (image.affine @ np.r_[ijk, 1])[0]
    column = np.argwhere(display).mean(axis=0)[2]
    centre_mm = (image.affine @ np.r_[(np.array(truth.shape) - 1) / 2, 1])[0]
    on_left_of_screen = column < display.shape[2] / 2
    assert on_left_of_screen == (x_mm > centre_mm)


def test_sample_data_layers():
    layers = sample_lesion()
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    assert layers[0][0].shape == layers[1][0].shape
    assert layers[1][0].max() == 1


@pytest.mark.gui
def test_open_and_save_through_napari(make_napari_viewer, phantom_scan_files, tmp_path):
    viewer = make_napari_viewer()
    layers = viewer.open(str(phantom_scan_files["scan"]), plugin="napari-uad")
    assert tuple(layers[0].scale) == pytest.approx((3.0, 1.2, 1.2))
    out = tmp_path / "saved.nii.gz"
    layers[0].save(str(out), plugin="napari-uad")
    saved, original = nib.load(out), nib.load(phantom_scan_files["scan"])
    np.testing.assert_allclose(saved.affine, original.affine)
    np.testing.assert_allclose(saved.get_fdata(), original.get_fdata(), rtol=1e-6)


@pytest.mark.gui
def test_sample_menu_contribution(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-uad", "lesion")
    assert [layer.name for layer in viewer.layers] == ["T1 with lesions", "lesion truth"]
    assert sample_path("lesion").exists()


@pytest.mark.gui
def test_demo_adds_result_layers(make_napari_viewer, qtbot, tiny_disyre_dir):
    from napari_uad.demo import start_demo_in_viewer

    viewer = make_napari_viewer()
    worker = start_demo_in_viewer(viewer, device="cpu", model=tiny_disyre_dir)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    suffix = "disyre [tiny-disyre]"
    qtbot.waitUntil(lambda: f"lesions · {suffix}" in viewer.layers, timeout=60_000)
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "T1 with lesions",
        "lesion truth",
        f"pseudo-healthy · {suffix}",
        f"anomaly · {suffix}",
        f"lesions · {suffix}",
    ]
    scan, anomaly = viewer.layers["T1 with lesions"], viewer.layers[f"anomaly · {suffix}"]
    assert anomaly.data.shape == scan.data.shape
    assert tuple(anomaly.scale) == tuple(scan.scale)
    info = anomaly.metadata["napari_uad"]
    assert info["provenance"]["method"] == "disyre"
    # The threshold came from the healthy sample, not from the model.
    assert info["provenance"]["parameters"]["threshold_source"] == "given"
    assert anomaly.data.max() > 0
    docked = set(viewer.window.dock_widgets)
    assert {"Detect anomalies (napari-uad)", "Threshold (napari-uad)"} <= docked, docked

    # The Threshold widget (docked through napari, so it holds napari's proxy of the viewer)
    # follows the demo's map: its table and the lesion layer agree.
    threshold = viewer.window.dock_widgets["Threshold (napari-uad)"]
    lesions = viewer.layers[f"lesions · {suffix}"]
    qtbot.waitUntil(lambda: threshold.table.rowCount() > 0, timeout=10_000)
    assert threshold.anomaly_combo.currentText() == anomaly.name
    assert "run Detect first" not in threshold.summary_label.text()
    assert threshold.table.rowCount() == min(len(np.unique(lesions.data)) - 1, 200)
    assert threshold.threshold_slider.value() == pytest.approx(info["threshold"], rel=1e-3)

    # Truth drawn as an outline, detections filled in another colour.
    truth = viewer.layers["lesion truth"]
    assert truth.contour >= 1 and lesions.contour == 0
    np.testing.assert_raises(
        AssertionError,
        np.testing.assert_allclose,
        truth.colormap.map(np.array([1]))[0],
        lesions.colormap.map(np.array([1]))[0],
    )
    assert viewer.dims.axis_labels[0] == "axial slice"


@pytest.mark.gui
def test_demo_window_fits_its_screen(make_napari_viewer):
    from qtpy.QtWidgets import QApplication

    from napari_uad.demo import dock_widgets

    viewer = make_napari_viewer()
    dock_widgets(viewer)
    window = viewer.window._qt_window
    available = QApplication.primaryScreen().availableGeometry()
    assert window.height() <= available.height()
    assert window.width() <= available.width()
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 0.4 * window.width() or not window.isVisible()

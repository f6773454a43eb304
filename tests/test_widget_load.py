"""The Load scan dock widget, with napari's viewer under Xvfb."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_uad.display import to_display

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer):
    from napari_uad.widgets.load import LoadScanWidget

    viewer = make_napari_viewer()
    widget = LoadScanWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Load scan")
    return widget


def load(qtbot, widget, scan, mask="", truth=""):
    widget.scan_edit.setText(str(scan))
    widget.mask_edit.setText(str(mask))
    widget.truth_edit.setText(str(truth))
    with qtbot.waitSignal(widget.loaded, timeout=20_000) as blocker:
        widget.load_button.click()
    return blocker.args[0]


def test_las_scan_with_masks_gives_aligned_layers(qtbot, widget, phantom_scan_files):
    files = phantom_scan_files
    layers = load(qtbot, widget, files["scan"], files["mask"], files["truth"])
    viewer = widget.viewer
    scan, mask, truth = layers["scan"], layers["brain_mask"], layers["truth"]
    assert [layer.name for layer in viewer.layers] == [
        "scan",
        "scan brain mask",
        "scan truth",
        "scan slice range",
    ]
    for layer in (scan, mask, truth):
        assert tuple(layer.scale) == pytest.approx((3.0, 1.2, 1.2))
        assert tuple(layer.translate) == pytest.approx(tuple(scan.translate))
        assert layer.data.shape == (6, 56, 48)
    # The mask layer is the file's mask seen the same way as the scan: voxel for voxel.
    image = nib.load(files["mask"])
    expected, _ = to_display(np.asarray(image.dataobj), image.affine)
    np.testing.assert_array_equal(mask.data, expected)
    scan_display, _ = to_display(nib.load(files["scan"]).get_fdata(), image.affine)
    np.testing.assert_allclose(scan.data, scan_display, rtol=1e-6)
    assert scan.data[mask.data == 0].max() == 0  # background outside the brain mask
    assert mask.visible is False and truth.contour == 1
    roles = [layer.metadata["napari_uad"]["role"] for layer in (scan, mask, truth)]
    assert roles == ["scan", "brain_mask", "truth"]
    assert scan.metadata["napari_uad"]["slice_range"] == (0, 6)


def test_load_places_layers_in_scanner_mm_shown_radiological(qtbot, widget, phantom_scan_files):
    from napari_uad.display import camera, is_radiological_view

    files = phantom_scan_files
    layers = load(qtbot, widget, files["scan"], files["mask"], files["truth"])
    viewer = widget.viewer
    # Radiological view: anterior (+y) up, the patient's right (+x) on the screen's left.
    assert tuple(camera(viewer).orientation2d) == ("up", "left")
    assert is_radiological_view(viewer)
    assert tuple(camera(viewer).orientation) == ("away", "up", "left")  # 3-D: seen from the feet
    # World = scanner mm (z, y, x): display voxel (k, r, c) sits where nibabel puts its voxel.
    image = nib.load(files["scan"])
    index = np.arange(np.prod(image.shape)).reshape(image.shape)
    display, _ = to_display(index, image.affine)
    scan = layers["scan"]
    for krc in [(0, 0, 0), (5, 55, 47), (2, 10, 30)]:
        ijk = np.unravel_index(display[krc], image.shape)
        expected = (image.affine @ np.r_[ijk, 1])[[2, 1, 0]]
        np.testing.assert_allclose(scan.data_to_world(krc), expected, atol=1e-6)
        for role in ("brain_mask", "truth", "slice_range"):
            np.testing.assert_allclose(layers[role].data_to_world(krc), expected, atol=1e-6)
    # The viewer shows a slice of the brain range: the point is a world (mm) position.
    start, stop = scan.metadata["napari_uad"]["slice_range"]
    slice_index = scan.world_to_data(viewer.dims.point)[0]
    assert slice_index == pytest.approx((start + stop - 1) / 2)


def test_info_panel_shows_real_voxel_size(qtbot, widget, phantom_scan_files):
    load(qtbot, widget, phantom_scan_files["scan"])
    text = widget.info_label.text()
    assert "1.2 × 1.2 × 3 mm" in text
    assert "LAS" in text and "48 × 56 × 6" in text and "float32" in text
    assert "estimated" in text
    assert widget.viewer.layers["scan brain mask"].data.any()


def test_slice_range_is_stored_and_framed(qtbot, widget, phantom_scan_files):
    layers = load(qtbot, widget, phantom_scan_files["scan"], phantom_scan_files["mask"])
    widget.range_radio.setChecked(True)
    widget.first_spin.setValue(2)
    widget.last_spin.setValue(4)
    scan = layers["scan"]
    assert scan.metadata["napari_uad"]["slice_range"] == (2, 5)
    frame = widget.viewer.layers["scan slice range"]
    assert sorted({int(shape[0, 0]) for shape in frame.data}) == [2, 3, 4]
    assert "3 of 6 slices" in widget.range_label.text()
    widget.last_spin.setValue(1)  # dragging the end below the start moves the start along
    assert scan.metadata["napari_uad"]["slice_range"] == (1, 2)
    widget.all_slices_radio.setChecked(True)
    assert scan.metadata["napari_uad"]["slice_range"] == (0, 6)
    assert len(frame.data) == 6
    widget.viewer.dims.set_current_step(0, 4)
    widget.use_current_button.click()  # nearer the end: the range ends at the slice on screen
    assert widget.range_radio.isChecked()
    assert scan.metadata["napari_uad"]["slice_range"] == (0, 5)


def test_estimate_button_replaces_mask(qtbot, widget, phantom_scan_files):
    layers = load(qtbot, widget, phantom_scan_files["scan"], phantom_scan_files["mask"])
    mask = layers["brain_mask"]
    given = mask.data.copy()
    mask.data = np.zeros_like(given)
    with qtbot.waitSignal(widget.mask_estimated, timeout=20_000):
        widget.estimate_button.click()
    assert mask.data.shape == given.shape
    dice = 2 * np.sum((mask.data > 0) & (given > 0)) / (np.sum(mask.data > 0) + np.sum(given > 0))
    assert dice > 0.95
    assert "estimated" in widget.info_label.text()


def test_bad_file_notifies_and_keeps_viewer(qtbot, widget, tmp_path, monkeypatch):
    import napari_uad.widgets.load as load_module

    messages = []
    monkeypatch.setattr(load_module, "_show_error", messages.append)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    widget.scan_edit.setText(str(bad))
    with qtbot.waitSignal(widget.failed, timeout=20_000):
        widget.load_button.click()
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "broken.nii.gz" in messages[0]
    assert len(widget.viewer.layers) == 0
    qtbot.waitUntil(widget.load_button.isEnabled, timeout=5_000)
    widget.scan_edit.setText("")
    widget.load_button.click()
    assert messages[-1].startswith("Choose a scan")


def test_dicom_folder_loads(qtbot, widget, tmp_path):
    pytest.importorskip("pydicom")
    from tests.test_dicom import marked_volume, write_series

    volume = marked_volume((24, 20, 6))
    volume[4:20, 4:16, :] += 300
    volume[volume < 150] = 0  # skull-stripped: zero background
    write_series(tmp_path / "t1_series", volume)
    layers = load(qtbot, widget, tmp_path / "t1_series")
    assert layers["scan"].name == "t1_series"
    assert layers["scan"].data.shape == (6, 24, 20)
    assert tuple(layers["scan"].scale) == pytest.approx((2.5, 0.8, 0.9))
    assert "DICOM" in widget.info_label.text() and "int16" in widget.info_label.text()


def test_widgets_are_in_the_plugin_menu(make_napari_viewer):
    from napari_uad.widgets.browser import CaseBrowserWidget
    from napari_uad.widgets.load import LoadScanWidget

    viewer = make_napari_viewer()
    _, load_widget = viewer.window.add_plugin_dock_widget("napari-uad", "Load scan")
    _, browser = viewer.window.add_plugin_dock_widget("napari-uad", "Case browser")
    assert isinstance(load_widget, LoadScanWidget)
    assert isinstance(browser, CaseBrowserWidget)


def test_dicom_folder_opens_through_napari(make_napari_viewer, tmp_path):
    pytest.importorskip("pydicom")
    from tests.test_dicom import marked_volume, write_series

    write_series(tmp_path / "series", marked_volume())
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "series"), plugin="napari-uad")
    assert layer.data.shape == (5, 12, 10)
    assert tuple(layer.scale) == pytest.approx((2.5, 0.8, 0.9))


def test_closed_widgets_do_not_break_the_viewer(qtbot, make_napari_viewer):
    from napari_uad.widgets.browser import CaseBrowserWidget
    from napari_uad.widgets.load import LoadScanWidget

    viewer = make_napari_viewer()
    for widget_class in (LoadScanWidget, CaseBrowserWidget):
        widget = widget_class(viewer)
        viewer.window.add_dock_widget(widget)
        viewer.window.remove_dock_widget(widget)
        widget.deleteLater()
    qtbot.wait(50)
    layer = viewer.add_image(np.zeros((3, 4, 4)))
    viewer.layers.remove(layer)


def test_detection_inputs_follow_edits(qtbot, widget, phantom_scan_files):
    from napari_uad.widgets.load import detection_inputs

    layers = load(qtbot, widget, phantom_scan_files["scan"], phantom_scan_files["mask"])
    inputs = detection_inputs(widget.viewer, layers["scan"])
    assert inputs["slices"] is None  # all slices with brain
    file_mask = np.asarray(nib.load(phantom_scan_files["mask"]).dataobj) > 0
    np.testing.assert_array_equal(inputs["brain_mask"], file_mask)
    np.testing.assert_allclose(
        inputs["scan"].data, nib.load(phantom_scan_files["scan"]).get_fdata(), rtol=1e-6
    )
    # Erase the brain on the screen's left half (the patient's right) of one slice.
    edited = layers["brain_mask"].data.copy()
    edited[2, :, :24] = 0
    layers["brain_mask"].data = edited
    widget.range_radio.setChecked(True)
    widget.first_spin.setValue(1)
    widget.last_spin.setValue(3)
    inputs = detection_inputs(widget.viewer, layers["scan"])
    np.testing.assert_array_equal(inputs["slices"], [1, 2, 3])
    # LAS file: x grows towards the patient's left, so the right half is at file x < 24.
    changed = np.argwhere(inputs["brain_mask"] != file_mask)
    assert changed.size and set(changed[:, 2]) == {2} and changed[:, 0].max() < 24


def test_scan_with_skull_gets_a_clear_message(qtbot, widget, tmp_path, monkeypatch):
    import napari_uad.widgets.load as load_module

    warnings = []
    monkeypatch.setattr(load_module, "_warn", warnings.extend)
    rng = np.random.default_rng(0)
    head = rng.rayleigh(20.0, size=(40, 40, 8)).astype(np.float32)  # noisy air, no zeros
    head[6:34, 6:34] += 300.0  # scalp and skull ...
    head[10:30, 10:30] += 300.0  # ... around the brain
    path = tmp_path / "with_skull.nii.gz"
    nib.save(nib.Nifti1Image(head, np.eye(4)), path)
    load(qtbot, widget, path)
    assert len(warnings) == 1 and "still has skull" in warnings[0]
    assert not widget.notes_label.isHidden()
    assert "give a brain mask" in widget.notes_label.text()

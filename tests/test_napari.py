"""napari contributions: reader, writers, sample data and the demo, under Xvfb."""

import nibabel as nib
import numpy as np
import pytest

from napari_uad._napari import get_reader, read_nifti_layers, sample_lesion
from napari_uad.data.samples import sample_path
from napari_uad.display import from_display, to_display


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
    # The reader puts the viewer in the radiological view (world: scanner mm).
    from napari_uad.display import is_radiological_view

    assert is_radiological_view(viewer)
    affine = nib.load(phantom_scan_files["scan"]).affine
    np.testing.assert_allclose(
        layers[0].data_to_world(_display_index((0, 0, 0), nib.load(phantom_scan_files["scan"]))),
        affine[[2, 1, 0], 3],
    )
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
    scan, truth = viewer.layers
    for index in [(0, 0, 0), (5, 40, 90)]:
        np.testing.assert_allclose(scan.data_to_world(index), truth.data_to_world(index))
    from napari_uad.display import is_radiological_view

    assert is_radiological_view(viewer)
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


def _oblique_lps_file(tmp_path):
    """An oblique, anisotropic LPS-like scan (axes permuted, rotated about two axes), holding
    each voxel's flat index, written as NIfTI; returns (path, reloaded nibabel image)."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", [17.0, -9.0, 28.0], degrees=True).as_matrix()
    linear = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag([0.9, 1.4, 3.2])  # LPS, tilted
    affine = np.eye(4)
    affine[:3, :3] = linear[:, [1, 2, 0]]  # file axes: A-P, S-I, R-L
    affine[:3, 3] = [31.5, -17.25, 12.0]
    shape = (9, 7, 11)
    data = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    path = tmp_path / "oblique_lps.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, nib.load(path)


def _display_index(file_voxel, image) -> tuple[int, int, int]:
    """The display-array index of file voxel (i, j, k)."""
    shape = image.shape
    display, _ = to_display(np.arange(np.prod(shape)).reshape(shape), image.affine)
    flat = np.ravel_multi_index(tuple(int(v) for v in file_voxel), shape)
    ((index),) = np.argwhere(display == flat)
    return tuple(int(v) for v in index)


def mirrors_the_patient(camera) -> bool:
    """Whether the camera shows the world (z, y, x) = RAS+ (x, y, z) frame mirrored: the screen
    directions of x, y and z must form a right-handed triple (screen: right, up, towards)."""
    direction = {
        "right": (1, 0, 0),
        "left": (-1, 0, 0),
        "up": (0, 1, 0),
        "down": (0, -1, 0),
        "towards": (0, 0, 1),
        "away": (0, 0, -1),
    }
    depth, vertical, horizontal = (direction[str(v)] for v in camera.orientation)
    return np.linalg.det(np.array([horizontal, vertical, depth])) < 0  # rows: x, y, z


def _zyx(points_xyz):
    return np.asarray(points_xyz)[..., [2, 1, 0]]


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_layer_world_coordinates_are_scanner_mm_for_oblique_lps(tmp_path):
    from napari.layers import Image

    from napari_uad.display import display_world_affine, placement
    from napari_uad.io import read_scan

    path, image = _oblique_lps_file(tmp_path)
    data, meta, _ = read_nifti_layers(str(path))[0]
    layer = Image(data.astype(np.float32), **{k: meta[k] for k in ("scale", "affine")})
    # Scale stays the voxel size in mm (widgets read it for volumes and spacings).
    assert tuple(layer.scale) == pytest.approx((3.2, 1.4, 0.9))
    scan = read_scan(path)
    np.testing.assert_allclose(
        display_world_affine(scan.affine, scan.shape),
        np.asarray(placement(scan.affine, scan.shape)["affine"]) @ np.diag([3.2, 1.4, 0.9, 1]),
        atol=1e-9,
    )
    rng = np.random.default_rng(0)
    voxels = [(0, 0, 0), (8, 6, 10), (8, 0, 0), (0, 6, 0), (0, 0, 10)]
    voxels += [tuple(rng.integers(0, image.shape)) for _ in range(5)]
    for voxel in voxels:
        index = _display_index(voxel, image)
        assert data[index] == np.ravel_multi_index(voxel, image.shape)
        expected = _zyx((image.affine @ np.r_[voxel, 1])[:3])
        np.testing.assert_allclose(layer.data_to_world(index), expected, atol=1e-4)


@pytest.mark.gui
@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_layer_overlays_a_generic_nifti_readers_layer(make_napari_viewer, tmp_path):
    """A napari layer from this plugin overlays one from a generic NIfTI reader (plain
    nibabel: data (k, j, i), the file affine in (z, y, x) order) at the same world point."""
    from napari_uad._napari import scan_layer
    from napari_uad.io import read_scan

    path, image = _oblique_lps_file(tmp_path)
    swap = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z) <-> (z, y, x), also (i, j, k) <-> (k, j, i)
    viewer = make_napari_viewer()
    data, meta, _ = scan_layer(read_scan(path))
    ours = viewer.add_image(data.astype(np.float32), **meta)
    generic = viewer.add_image(
        np.transpose(image.get_fdata(), (2, 1, 0)),
        name="generic",
        affine=swap @ image.affine @ swap,
    )
    rng = np.random.default_rng(1)
    for _ in range(12):
        voxel = rng.integers(0, image.shape)
        jitter = rng.uniform(-0.3, 0.3, 3)  # anywhere inside the voxel, not only its centre
        world = _zyx((image.affine @ np.r_[voxel + jitter, 1])[:3])
        kji = np.rint(generic.world_to_data(world)).astype(int)
        krc = tuple(np.rint(ours.world_to_data(world)).astype(int))
        np.testing.assert_array_equal(kji[::-1], voxel)
        assert ours.data[krc] == np.ravel_multi_index(tuple(voxel), image.shape)
        assert ours.data[krc] == generic.data[tuple(kji)]


@pytest.mark.gui
def test_radiological_view_is_a_camera_choice(make_napari_viewer):
    from napari_uad.display import (
        apply_view_choice,
        camera,
        is_radiological_view,
        set_radiological_view,
    )

    viewer = make_napari_viewer()
    apply_view_choice(viewer)
    assert tuple(camera(viewer).orientation2d) == ("up", "left")  # anterior up, right on left
    assert is_radiological_view(viewer) and not mirrors_the_patient(camera(viewer))
    set_radiological_view(viewer, False)
    assert tuple(camera(viewer).orientation2d) == ("up", "right")
    assert not mirrors_the_patient(camera(viewer))  # the 3-D view is never a mirror image
    apply_view_choice(viewer)  # loading the next scan keeps the user's choice
    assert not is_radiological_view(viewer)
    apply_view_choice(object())  # never raises

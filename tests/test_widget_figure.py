"""The Figure widget: the current view and the panel grid, PNG/SVG/PDF, heatmap colours."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.io import imread

from napari_uad.widgets.figure import FigureWidget

from .test_widget_threshold import add_anomaly, blob_map

pytestmark = pytest.mark.gui


def hot_pixels(path, columns=slice(None)) -> int:
    """Pixels coloured like the 'hot' colormap's middle: strong red, little blue."""
    rgb = imread(path)[:, columns, :3].astype(int)
    return int(np.count_nonzero((rgb[..., 0] > 180) & (rgb[..., 2] < 80) & (rgb[..., 1] < 200)))


@pytest.fixture
def viewer_with_result(make_napari_viewer):
    """A scan, pseudo-healthy, anomaly and lesion layers linked as the Detect widget links them."""
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black
    anomaly = blob_map()
    scan = np.where(anomaly > 0.2, 300.0, 600.0).astype(np.float32)
    links = {"scan": "scan", "healthy": "healthy", "anomaly": "anomaly", "mask": "lesions"}
    layer = add_anomaly(
        viewer, anomaly, links=links, provenance={"method": "anoddpm", "model": "t"}
    )
    info = layer.metadata["napari_uad"]
    layer.blending = "additive"
    layer.contrast_limits = (0.0, 1.0)
    viewer.add_image(scan, name="scan", scale=layer.scale, metadata={"napari_uad": dict(info)})
    viewer.add_image(scan * 0 + 600, name="healthy", scale=layer.scale, visible=False)
    viewer.add_labels((anomaly > 0.3).astype(np.int32), name="lesions", scale=layer.scale)
    viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))
    viewer.dims.set_current_step(0, 2)
    return viewer


def test_view_export_png_has_heatmap_colours_and_bars(viewer_with_result, tmp_path, qtbot):
    viewer = viewer_with_result
    viewer.layers["lesions"].visible = False
    viewer.layers["scan"].visible = False  # the blob alone, 0.8 of 2.0: plain 'hot' red
    viewer.layers["anomaly"].contrast_limits = (0.0, 2.0)
    qtbot.wait(50)
    widget = FigureWidget(viewer)
    assert widget.anomaly_combo.currentText() == "anomaly"
    widget.dpi_spin.setValue(100)
    widget.colorbar_check.setChecked(False)
    plain = widget.export(tmp_path / "plain.png")
    assert hot_pixels(plain) > 50  # the rendered heatmap itself, no colour bar
    widget.colorbar_check.setChecked(True)
    path = widget.export(tmp_path / "view.png")
    # The colour bar widens the figure by about an inch.
    assert imread(path).shape[1] > imread(plain).shape[1] + 50
    # Scale bar: the 48-voxel (57.6 mm) wide map spans 57.6 / mm_per_pixel screenshot pixels.
    shot = viewer.screenshot(canvas_only=True, flash=False)
    columns = np.flatnonzero((shot[..., :3].max(axis=2) > 20).any(axis=0))
    mm_per_pixel = widget._mm_per_pixel(shot.shape[1])
    assert (columns[-1] - columns[0] + 1) * mm_per_pixel == pytest.approx(57.6, rel=0.03)
    viewer.dims.ndisplay = 3
    assert widget._mm_per_pixel(shot.shape[1]) is None


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_view_export_vector_formats(viewer_with_result, tmp_path, fmt):
    widget = FigureWidget(viewer_with_result)
    widget.format_combo.setCurrentIndex(widget.format_combo.findData(fmt))
    path = widget.export(tmp_path / "figure")  # suffix from the chosen format
    assert path.suffix == f".{fmt}" and path.stat().st_size > 1000
    head = path.read_bytes()[:200]
    assert (b"<svg" in head or b"<?xml" in head) if fmt == "svg" else head.startswith(b"%PDF")


def test_panels_export(viewer_with_result, tmp_path):
    # A patch at half the maximum score: orange-red in the 'hot' heatmap panel.
    viewer_with_result.layers["anomaly"].data[2, 20:30, 20:30] = 0.4
    widget = FigureWidget(viewer_with_result)
    widget.kind_combo.setCurrentIndex(widget.kind_combo.findData("panels"))
    widget.dpi_spin.setValue(80)
    widget.colorbar_check.setChecked(False)  # so the hot pixels come from the heatmap panel
    path = widget.export(tmp_path / "panels.png")
    width = imread(path).shape[1]
    assert hot_pixels(path, columns=slice(width // 2, 3 * width // 4)) > 20
    assert imread(path).shape[1] > 3 * imread(path).shape[0] / 2  # four panels side by side


def test_panels_without_links_give_a_clear_error(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((3, 8, 8), dtype=np.float32), name="plain")
    widget = FigureWidget(viewer)
    widget.kind_combo.setCurrentIndex(widget.kind_combo.findData("panels"))
    with pytest.raises(ValueError, match="Detect result"):
        widget.export(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_compare_puts_every_detect_result_side_by_side(viewer_with_result, tmp_path):
    viewer = viewer_with_result
    first = viewer.layers["anomaly"]
    first.data[2, 20:30, 20:30] = 0.4
    second = viewer.add_image(
        np.where(first.data > 0.5, 0.0, first.data[::-1]).astype(np.float32),
        name="anomaly · other method",
        scale=first.scale,
        metadata={"napari_uad": {**first.metadata["napari_uad"]}},
    )
    second.metadata["napari_uad"]["provenance"] = {"method": "other", "model": "u"}
    widget = FigureWidget(viewer)
    widget.kind_combo.setCurrentIndex(widget.kind_combo.findData("compare"))
    widget.dpi_spin.setValue(80)
    widget.colorbar_check.setChecked(False)
    path = widget.export(tmp_path / "compare.png")
    image = imread(path)
    height, width = image.shape[:2]
    assert height > 0.45 * width  # two rows of four panels
    heat = slice(width // 2, 3 * width // 4)
    for rows in (slice(0, height // 2), slice(height // 2, height)):
        rgb = image[rows, heat, :3].astype(int)
        hot = (rgb[..., 0] > 180) & (rgb[..., 2] < 80) & (rgb[..., 1] < 200)
        assert np.count_nonzero(hot) > 20  # each row has its own heatmap


def test_compare_without_results_is_a_clear_error(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((3, 8, 8), dtype=np.float32), name="plain")
    widget = FigureWidget(viewer)
    widget.kind_combo.setCurrentIndex(widget.kind_combo.findData("compare"))
    with pytest.raises(ValueError, match="no Detect results"):
        widget.export(tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()

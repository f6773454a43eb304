"""The Compare methods widget: several methods on the sample, metrics against its truth layer,
layers per method, the side-by-side figure and table (pytest-qt under Xvfb)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from napari_uad.widgets.compare import CompareWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_models):
    folder = tmp_path / "models"
    for method in ("anoddpm", "disyre", "madad"):
        shutil.copytree(tiny_models[method], folder / f"tiny-{method}")
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(folder))
    return {m: f"tiny-{m}" for m in ("anoddpm", "disyre", "madad")}


def wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_compare_three_methods_on_the_current_slice(
    make_napari_viewer, models_dir, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-uad", "lesion")
    widget = CompareWidget(viewer)
    listed = [widget.method_list.item(i).text() for i in range(widget.method_list.count())]
    assert any(text.startswith("madad") for text in listed)
    assert widget.truth_combo.currentText() == "lesion truth"
    widget.set_methods(["anoddpm", "disyre", "madad"])
    assert widget.checked_methods() == ["anoddpm", "disyre", "madad"]
    viewer.dims.set_current_step(0, 13)
    widget.run(models=models_dir)
    assert widget.worker is not None
    wait(qtbot, widget)
    assert widget.status_label.text().startswith("Done"), widget.status_label.text()
    names = [layer.name for layer in viewer.layers if layer.name.endswith("(compare)")]
    assert names == [f"anomaly · {m} (compare)" for m in ("anoddpm", "disyre", "madad")]
    scan = viewer.layers["T1 with lesions"]
    for name in names:
        layer = viewer.layers[name]
        assert layer.data.shape == scan.data.shape
        assert layer.data[13].max() > 0 and layer.data[5].max() == 0  # only the current slice
        for index in [(0, 0, 0), (23, 188, 152), (13, 40, 77)]:  # placed like the scan
            np.testing.assert_allclose(layer.data_to_world(index), scan.data_to_world(index))
    assert widget.table.rowCount() == 3
    aurocs = [float(widget.table.item(r, 1).text()) for r in range(3)]
    assert all(0 < value <= 1 for value in aurocs)
    figure, table = widget.save(tmp_path / "cmp.png")
    assert figure.stat().st_size > 20_000
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["anoddpm", "disyre", "madad"]
    assert [round(float(row["auroc"]), 3) for row in rows] == aurocs


def test_compare_cancel_adds_no_layers_and_errors_are_notifications(
    make_napari_viewer, models_dir, qtbot
):
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    widget.run(models=models_dir)  # no image: a notification, no worker
    assert widget.worker is None
    viewer.open_sample("napari-uad", "lesion")
    widget.set_methods(["anoddpm"])
    widget.scope_combo.setCurrentIndex(widget.scope_combo.findData("volume"))
    widget.run(models=models_dir)
    widget.cancel()
    wait(qtbot, widget)
    assert not [layer for layer in viewer.layers if "(compare)" in layer.name]
    assert widget.status_label.text() == "Cancelled"

"""The Load widget's Prepare button: a raw head becomes a prepared scan on the same grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_uad.data.head_phantom import make_head
from napari_uad.data.phantoms import make_brain
from napari_uad.prepare import PrepareOptions

pytestmark = pytest.mark.gui

FAST = PrepareOptions(resolution=2.5, align="none")


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    brain, mask = make_brain((60, 72, 56), seed=1)
    head = make_head(brain, mask, spacing=(2.5, 2.5, 2.5), seed=2)
    path = tmp_path_factory.mktemp("raw") / "raw.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(1000 * head.image).astype(np.int16), head.affine), path)
    return path, head


@pytest.fixture
def widget(make_napari_viewer):
    from napari_uad.widgets.load import LoadScanWidget

    viewer = make_napari_viewer()
    widget = LoadScanWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Load scan")
    return widget


def _load(qtbot, widget, path):
    widget.scan_edit.setText(str(path))
    with qtbot.waitSignal(widget.loaded, timeout=30_000):
        widget.load_button.click()


def test_prepare_adds_the_prepared_brain_over_the_raw_scan(qtbot, widget, head_file):
    path, head = head_file
    _load(qtbot, widget, path)
    steps = []
    widget.prepare_step.connect(lambda done, total, name: steps.append(name))
    with qtbot.waitSignal(widget.loaded, timeout=120_000) as blocker:
        widget.prepare(FAST)
        assert widget.prepare_button.text() == "Cancel preparing"
        assert not widget.prepare_progress.isHidden()
    layers = blocker.args[0]
    qtbot.waitUntil(lambda: not widget._preparing, timeout=5_000)
    raw = widget.viewer.layers["raw"]
    prepared = layers["scan"]
    assert prepared.name == "raw_prepared"
    assert prepared.data.shape == raw.data.shape  # the input's grid: results overlay the raw
    assert tuple(prepared.scale) == pytest.approx(tuple(raw.scale))
    mask = layers["brain_mask"].data > 0
    assert np.all(prepared.data[~mask] == 0)
    truth = widget.viewer.layers["raw brain mask"].data  # the raw scan's estimate: the head
    assert mask.sum() < 0.6 * (truth > 0).sum()
    assert "skull stripping (bet)" in steps
    assert widget.prepare_button.text() == "Prepare raw scan…"
    assert widget.prepare_progress.isHidden()
    info = prepared.metadata["napari_uad"]
    assert info["brain_mask"].startswith("prepare")


def test_prepare_can_be_cancelled(qtbot, widget, head_file):
    path, _ = head_file
    _load(qtbot, widget, path)
    count = len(widget.viewer.layers)
    worker = widget.prepare(FAST)
    widget.prepare_button.click()  # cancel
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert len(widget.viewer.layers) == count
    assert widget.prepare_button.text() == "Prepare raw scan…"


def test_prepare_without_a_scan_says_so(qtbot, widget, monkeypatch):
    messages = []
    monkeypatch.setattr("napari_uad.widgets.load._show_error", messages.append)
    assert widget.prepare() is None
    assert messages == ["Load a scan first"]

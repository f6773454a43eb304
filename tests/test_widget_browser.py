"""The Case browser dock widget: results kept per case, review status kept across sessions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def cohort(tmp_path, phantom_scan_files):
    folder = tmp_path / "cohort"
    folder.mkdir()
    for k in range(3):
        shutil.copy(phantom_scan_files["scan"], folder / f"sub-{k}.nii.gz")
        shutil.copy(phantom_scan_files["mask"], folder / f"sub-{k}_brain_mask.nii.gz")
    shutil.copy(phantom_scan_files["truth"], folder / "sub-1_truth.nii.gz")
    return folder


def make_browser(viewer):
    from napari_uad.widgets.browser import CaseBrowserWidget

    widget = CaseBrowserWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Case browser")
    return widget


def wait_shown(qtbot, browser, action):
    """Run a navigation action and wait until the case is in the viewer."""
    with qtbot.waitSignal(browser.case_shown, timeout=20_000):
        result = action()
        if result is None:  # came back from memory: shown synchronously
            pass
    return browser.current_case


def add_results(viewer, browser, seed):
    """Stand-in for the Detect widget: a heatmap and a lesion mask on the case's scan grid."""
    from napari_uad.widgets._common import placement_of

    scan = next(la for la in viewer.layers if la.metadata["napari_uad"].get("role") == "scan")
    info = scan.metadata["napari_uad"]
    meta = {k: info[k] for k in ("affine", "header", "source", "shape")}
    heat = np.random.default_rng(seed).random(scan.data.shape).astype(np.float32)
    viewer.add_image(
        heat,
        name="anomaly map",
        colormap="hot",
        blending="additive",
        metadata={"napari_uad": {**meta, "role": "anomaly", "threshold": 0.5 + seed / 10}},
        **placement_of(scan),
    )
    viewer.add_labels(
        (heat > 0.9).astype(np.uint8),
        name="lesion mask",
        metadata={"napari_uad": {**meta, "role": "lesion mask"}},
        **placement_of(scan),
    )
    return heat


def layer_names(viewer):
    return [layer.name for layer in viewer.layers]


def test_three_cases_forward_and_back_keep_results(qtbot, make_napari_viewer, cohort):
    viewer = make_napari_viewer()
    browser = make_browser(viewer)
    case = wait_shown(qtbot, browser, lambda: browser.open(cohort))
    assert case.id == "sub-0"
    assert layer_names(viewer) == ["sub-0", "sub-0 brain mask", "sub-0 slice range"]
    heat0 = add_results(viewer, browser, 0)
    assert browser.review.status("sub-0") == "done"  # results appeared: done

    case = wait_shown(qtbot, browser, browser.next)
    assert case.id == "sub-1"
    assert "anomaly map" not in layer_names(viewer)
    assert "sub-1 truth" in layer_names(viewer)
    heat1 = add_results(viewer, browser, 1)
    browser.reviewed_button.click()  # reviewed, and on to case 3
    qtbot.waitUntil(lambda: browser.index == 2 and len(viewer.layers) > 0, timeout=20_000)
    assert layer_names(viewer) == ["sub-2", "sub-2 brain mask", "sub-2 slice range"]

    # Back twice: each case comes back with its own results and threshold.
    wait_shown(qtbot, browser, browser.previous)
    assert layer_names(viewer)[-2:] == ["anomaly map", "lesion mask"]
    np.testing.assert_array_equal(viewer.layers["anomaly map"].data, heat1)
    assert viewer.layers["anomaly map"].metadata["napari_uad"]["threshold"] == 0.6
    wait_shown(qtbot, browser, browser.previous)
    np.testing.assert_array_equal(viewer.layers["anomaly map"].data, heat0)
    assert viewer.layers["anomaly map"].metadata["napari_uad"]["threshold"] == 0.5
    assert viewer.layers["anomaly map"].colormap.name == "hot"
    assert len([la for la in viewer.layers if la.name.startswith("sub-")]) == 3

    marks = [browser.case_list.item(k).text() for k in range(3)]
    assert marks == ["●  sub-0", "✓  sub-1", "○  sub-2"]
    assert "1 reviewed, 1 done, 1 not run" in browser.summary_label.text()


def test_review_survives_closing_and_reopening(qtbot, make_napari_viewer, cohort):
    viewer = make_napari_viewer()
    browser = make_browser(viewer)
    wait_shown(qtbot, browser, lambda: browser.open(cohort))
    heat = add_results(viewer, browser, 3)
    wait_shown(qtbot, browser, browser.next)
    browser.status_combo.setCurrentText("reviewed")
    wait_shown(qtbot, browser, browser.next)
    viewer.window.remove_dock_widget(browser)
    browser.close()
    browser.deleteLater()

    review = cohort / "napari-uad-results" / "napari-uad-review.json"
    record = json.loads(review.read_text())
    assert record["current"] == "sub-2"
    assert {k: v["status"] for k, v in record["cases"].items()} == {
        "sub-0": "done",
        "sub-1": "reviewed",
    }

    # A new session: a fresh viewer and browser resume where the review was left.
    viewer2 = make_napari_viewer()
    again = make_browser(viewer2)
    case = wait_shown(qtbot, again, lambda: again.open(cohort))
    assert case.id == "sub-2"
    assert [again.review.status(c.id) for c in again.cases] == ["done", "reviewed", "not run"]
    assert again.status_combo.currentText() == "not run"
    # Case 1's results come back from the results folder, on the same grid.
    wait_shown(qtbot, again, lambda: again.go_to(0))
    np.testing.assert_allclose(viewer2.layers["anomaly map"].data, heat, rtol=1e-6)
    assert viewer2.layers["anomaly map"].metadata["napari_uad"]["threshold"] == pytest.approx(0.8)
    assert viewer2.layers["anomaly map"].colormap.name == "hot"
    assert viewer2.layers["lesion mask"].data.max() == 1
    # Results read back from disk are placed like their scan (scanner mm), and the browser
    # shows the case in the radiological view.
    from napari_uad.display import is_radiological_view

    scan = viewer2.layers["sub-0"]
    assert not np.allclose(scan.affine.affine_matrix, np.eye(4))  # the LAS file's flips
    for name in ("anomaly map", "lesion mask", "sub-0 truth", "sub-0 brain mask"):
        if name in viewer2.layers:
            for index in [(0, 0, 0), (5, 55, 47)]:
                np.testing.assert_allclose(
                    viewer2.layers[name].data_to_world(index), scan.data_to_world(index)
                )
    assert is_radiological_view(viewer2)


def test_bad_case_notifies_and_browsing_goes_on(qtbot, make_napari_viewer, cohort, monkeypatch):
    import napari_uad.widgets.load as load_module

    messages = []
    monkeypatch.setattr(load_module, "_show_error", messages.append)
    import napari_uad.widgets.browser as browser_module

    monkeypatch.setattr(browser_module, "_show_error", messages.append)
    (cohort / "sub-1.nii.gz").write_bytes(b"broken")
    viewer = make_napari_viewer()
    browser = make_browser(viewer)
    wait_shown(qtbot, browser, lambda: browser.open(cohort))
    with qtbot.waitSignal(browser.failed, timeout=20_000):
        browser.next()
    assert len(messages) == 1 and "sub-1.nii.gz" in messages[0]
    assert len(viewer.layers) == 0
    qtbot.waitUntil(browser.next_button.isEnabled, timeout=5_000)
    case = wait_shown(qtbot, browser, browser.next)
    assert case.id == "sub-2"

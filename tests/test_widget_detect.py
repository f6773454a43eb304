"""The Detect anomalies widget: parameters, a full run, cancel, re-runs, models, bad input,
and the main thread's responsiveness during a restoration (pytest-qt under Xvfb)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from napari_uad.widgets.detect import (
    PREVIEW_LAYER,
    DetectParams,
    DetectWidget,
    State,
    detect_kwargs,
    method_availability,
    result_suffix,
)

pytestmark = pytest.mark.gui


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_model_dir):
    """A user models folder holding the tiny model (as ``tiny``)."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_model_dir, folder / "tiny")
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(folder))
    return folder


@pytest.fixture
def viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-uad", "lesion")
    return viewer


def make_widget(viewer, **params):
    widget = DetectWidget(viewer)
    widget.set_params(model="tiny", device="cpu", **params)
    return widget


def run_and_wait(qtbot, widget, timeout=60_000):
    widget.run()
    assert widget.state is State.RUNNING
    with qtbot.waitSignal(widget.worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(
        lambda: widget.worker is None and widget.state is not State.RUNNING, timeout=5_000
    )


def result_names(viewer):
    return [layer.name for layer in viewer.layers if "·" in layer.name]


def test_detect_kwargs_without_qt():
    params = DetectParams(noise="simplex", noise_level=40, steps=4, seed=3, device="cpu")
    kwargs = detect_kwargs(params)
    assert kwargs["noise"] == "simplex" and kwargs["noise_level"] == 40 and kwargs["steps"] == 4
    assert kwargs["seed"] == 3 and kwargs["threshold"] == "auto" and "slices" not in kwargs
    sliced = detect_kwargs(DetectParams(scope="slice", slice_index=7))
    assert sliced["slices"] == [7] and "noise" not in sliced
    with pytest.raises(ValueError, match="slice"):
        detect_kwargs(DetectParams(scope="slice"))
    assert result_suffix(params) == "anoddpm simplex t=40, 4 steps"
    assert "slice 7" in result_suffix(DetectParams(scope="slice", slice_index=7))


def test_methods_listed_and_unavailable_ones_greyed(make_napari_viewer, models_dir):
    from napari_uad.methods import get_method_class
    from napari_uad.models.checkpoint import load_config
    from napari_uad.models.registry import list_models, resolve_model

    availability = dict(method_availability())
    installed = list_models()
    for name in ("anoddpm", "addm", "autoddpm", "disyre", "madad", "thor"):
        usable = any(get_method_class(name).accepts(info.method) for info in installed)
        assert (availability[name] is None) == usable, name
        if not usable:
            assert "no model installed" in availability[name]
    # The DDPM-based methods run on the shipped DDPMs.
    assert availability["anoddpm"] is None and availability["thor"] is None
    assert availability["autoddpm"] is None
    widget = DetectWidget(make_napari_viewer())
    listed = [widget.method_combo.itemData(i, 256) for i in range(widget.method_combo.count())]
    assert set(listed) >= {"anoddpm", "addm", "autoddpm", "disyre", "madad", "thor"}
    assert widget.method_reason("anoddpm") is None
    models = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert "tiny" in models and "anoddpm-gaussian (default)" in models
    assert widget.model_combo.currentText() == "anoddpm-gaussian (default)"
    gaussian = load_config(resolve_model("anoddpm-gaussian"))
    assert f"threshold {gaussian.calibration['threshold']:.3g}" in widget.model_label.text()
    # Each method shows its own calibrated threshold on the same model.
    widget.set_params(method="thor")
    thor = gaussian.calibration["methods"]["thor"]["threshold"]
    assert f"threshold {thor:.3g}" in widget.model_label.text()
    widget.set_params(method="anoddpm")
    # Selecting the tiny model loads its own defaults (noise level 100, 5 steps).
    widget.set_params(model="tiny")
    assert (widget.noise_level_spin.value(), widget.steps_spin.value()) == (100, 5)
    devices = [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())]
    assert devices[0].startswith("auto (") and "cpu" in devices
    # THOR on the same model shows THOR's own defaults for it, not AnoDDPM's.
    widget.set_params(method="thor")
    widget.set_params(model="tiny")
    assert (widget.noise_level_spin.value(), widget.steps_spin.value()) == (150, 6)


def test_full_run_adds_three_aligned_layers(viewer_with_sample, models_dir, qtbot):
    viewer = viewer_with_sample
    widget = make_widget(viewer, steps=3)
    widget.preview_interval_s = 0.0
    previews = []
    viewer.layers.events.inserted.connect(
        lambda event: previews.append(event.value.name) if event.value.name == PREVIEW_LAYER else 0
    )
    run_and_wait(qtbot, widget)
    assert widget.state is State.DONE, widget.status_label.text()
    scan = viewer.layers["T1 with lesions"]
    names = result_names(viewer)
    assert names == [
        "pseudo-healthy · anoddpm [tiny] gaussian t=100, 3 steps",
        "anomaly · anoddpm [tiny] gaussian t=100, 3 steps",
        "lesions · anoddpm [tiny] gaussian t=100, 3 steps",
    ]
    assert previews == [PREVIEW_LAYER] and PREVIEW_LAYER not in viewer.layers
    healthy, anomaly, mask = (viewer.layers[name] for name in names)
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in scan.data.shape])).reshape(3, -1).T
    for layer in (healthy, anomaly, mask):
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(layer.scale, scan.scale)
        # Placed like the scan in the scanner's world (mm), voxel for voxel.
        for index in [*corners, (12, 40, 77)]:
            np.testing.assert_allclose(layer.data_to_world(index), scan.data_to_world(index))
        np.testing.assert_allclose(
            layer.metadata["napari_uad"]["affine"], scan.metadata["napari_uad"]["affine"]
        )
    assert anomaly.colormap.name == "hot" and anomaly.blending == "additive"
    # 0 outside the (estimated) brain: the image border and nearly all of the background.
    assert anomaly.data.max() > 0 and anomaly.data[:, :2].max() == 0
    assert (anomaly.data[scan.data == 0] > 0).mean() < 0.05
    assert tuple(healthy.contrast_limits) == tuple(scan.contrast_limits)
    info = anomaly.metadata["napari_uad"]
    assert info["provenance"]["method"] == "anoddpm"
    assert info["provenance"]["parameters"]["steps"] == 3
    assert info["calibrated_threshold"] == pytest.approx(0.2)
    assert mask.data.max() >= 1 and mask.data.dtype.kind in "iu"


def test_rerun_replaces_same_name_and_adds_other_parameters(viewer_with_sample, models_dir, qtbot):
    viewer = viewer_with_sample
    widget = make_widget(viewer, steps=2, scope="slice")
    viewer.dims.set_current_step(0, 12)
    run_and_wait(qtbot, widget)
    first = result_names(viewer)
    assert len(first) == 3 and all("slice 12" in name for name in first)
    anomaly = viewer.layers[first[1]].data
    assert anomaly[12].max() > 0
    assert anomaly[np.arange(len(anomaly)) != 12].max() == 0  # only the current slice
    run_and_wait(qtbot, widget)
    assert result_names(viewer) == first
    widget.set_params(steps=3)
    run_and_wait(qtbot, widget)
    assert len(result_names(viewer)) == 6


def test_cancel_stops_within_a_step_and_adds_nothing(viewer_with_sample, models_dir, qtbot):
    from qtpy.QtCore import Qt

    viewer = viewer_with_sample
    widget = make_widget(viewer, noise_level=400, steps=400)
    emitted = []
    widget.run()
    # A direct connection runs in the worker thread: it counts steps as they are computed,
    # not as the main thread gets round to them.
    widget.worker.yielded.connect(emitted.append, Qt.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: len(emitted) >= 3, timeout=30_000)
    with qtbot.waitSignal(widget.worker.finished, timeout=10_000):
        widget.cancel()
        at_cancel = len(emitted)
    assert widget.state is State.STOPPED
    assert len(emitted) <= at_cancel + 1  # at most the step under way when Cancel came
    assert emitted[-1].done < emitted[-1].total
    assert result_names(viewer) == [] and PREVIEW_LAYER not in viewer.layers
    assert [layer.name for layer in viewer.layers] == ["T1 with lesions", "lesion truth"]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_refresh_models_shows_a_newly_saved_model(make_napari_viewer, models_dir):
    widget = DetectWidget(make_napari_viewer())
    shutil.copytree(models_dir / "tiny", models_dir / "tiny-new")
    assert widget.model_combo.findText("tiny-new") < 0
    widget.refresh_models()
    assert widget.model_combo.findText("tiny-new") >= 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((2, 4, 8, 8), dtype=np.float32), "dimensions"),
        (np.full((4, 16, 16), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_input_shows_an_error_and_keeps_the_viewer(
    make_napari_viewer, models_dir, monkeypatch, data, message
):
    import napari_uad.widgets.detect as detect

    errors = []
    monkeypatch.setattr(detect, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.add_image(data, name="bad")
    widget = make_widget(viewer, layer="bad")
    widget.run()
    assert widget.worker is None and widget.state is State.IDLE
    assert len(errors) == 1 and message in errors[0]


def test_worker_error_is_reported(make_napari_viewer, models_dir, monkeypatch, qtbot):
    import napari_uad.widgets.detect as detect

    errors = []
    monkeypatch.setattr(detect, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.full((4, 32, 32), 5.0, dtype=np.float32), name="constant")
    widget = make_widget(viewer, layer="constant")
    run_and_wait(qtbot, widget)
    assert widget.state is State.FAILED
    assert len(errors) == 1 and errors[0].startswith("Detect failed:")
    assert [layer.name for layer in viewer.layers] == ["constant"]


def test_main_thread_stays_responsive(viewer_with_sample, models_dir, qtbot):
    """Longest gap between 10 ms timer ticks while a restoration runs (target < 100 ms)."""
    from qtpy.QtCore import QTimer

    viewer = viewer_with_sample
    widget = make_widget(viewer, noise_level=300, steps=30)
    widget.preview_interval_s = 0.05
    ticks, returned = [], []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(50)
    widget.run()
    clicked = time.perf_counter()
    widget.worker.returned.connect(lambda _: returned.append(time.perf_counter()))
    yielded = []
    widget.worker.yielded.connect(lambda _: yielded.append(time.perf_counter()))
    qtbot.waitUntil(lambda: widget.state is not State.RUNNING, timeout=120_000)
    qtbot.wait(50)
    timer.stop()
    assert widget.state is State.DONE
    ticks = np.asarray(ticks)
    gaps = np.diff(ticks) * 1000
    # The click itself (reading the layer, creating the preview layer) is one gap spanning
    # ``run()``; the restoration's own stalls are the gaps that start after it.
    click = gaps[(ticks[:-1] < clicked) & (ticks[1:] > clicked)]
    during = gaps[(ticks[:-1] >= clicked) & (ticks[1:] <= yielded[-1])]
    after = gaps[ticks[:-1] >= returned[0] - 0.01]
    print(
        f"\nmain-thread stall: Run click {click.max():.1f} ms; longest {during.max():.1f} ms "
        f"during the restoration ({len(during)} ticks, {returned[0] - clicked:.1f} s), "
        f"{after.max():.1f} ms while the result layers were added"
    )
    assert len(during) > 20
    # Measured on the quiet 2-core machine: 22-24 ms during the restoration, ~90-125 ms for
    # the Run click and ~80-120 ms while the result layers are added (napari creating layers).
    # The bounds leave room for a loaded machine and still catch work on the GUI thread
    # (a restoration there stalls for seconds).
    assert during.max() < 250
    assert after.max() < 2000


def test_manifest_validates_and_its_widgets_import():
    """What ``npe2 validate --imports`` checks, on this checkout's manifest."""
    from pathlib import Path

    from npe2 import PluginManifest

    import napari_uad

    manifest = PluginManifest.from_file(Path(napari_uad.__file__).parent / "napari.yaml")
    manifest.validate_imports()
    names = {widget.display_name for widget in manifest.contributions.widgets}
    assert {"Detect anomalies", "Threshold", "Figure"} <= names
    menus = manifest.contributions.menus
    assert any(
        item.command == "napari-uad.detect_widget" for items in menus.values() for item in items
    )


def test_closing_the_widget_stops_its_worker(viewer_with_sample, models_dir, qtbot):
    viewer = viewer_with_sample
    widget = make_widget(viewer, noise_level=400, steps=400)
    widget.run()
    worker = widget.worker
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        widget.deleteLater()
    assert worker.abort_requested


@pytest.fixture
def method_models_dir(models_dir, tiny_models):
    """The user models folder with a tiny model of every family."""
    for method in ("disyre", "madad"):
        shutil.copytree(tiny_models[method], models_dir / f"tiny-{method}")
    return models_dir


@pytest.mark.parametrize(
    ("method", "model", "samples"),
    [("thor", "tiny", 2), ("disyre", "tiny-disyre", 1), ("madad", "tiny-madad", 1)],
)
def test_other_methods_run_from_the_widget(
    viewer_with_sample, method_models_dir, qtbot, method, model, samples
):
    viewer = viewer_with_sample
    widget = DetectWidget(viewer)
    assert widget.method_reason(method) is None
    widget.set_params(method=method)
    widget.set_params(model=model, device="cpu", scope="slice", samples=samples)
    viewer.dims.set_current_step(0, 12)
    run_and_wait(qtbot, widget)
    assert widget.state is State.DONE, widget.status_label.text()
    names = result_names(viewer)
    assert all(name.split(" · ")[1].startswith(method) for name in names)
    anomaly = viewer.layers[next(n for n in names if n.startswith("anomaly"))]
    assert anomaly.metadata["napari_uad"]["provenance"]["method"] == method
    assert anomaly.data[12].max() > 0
    uncertainty = [n for n in names if n.startswith("uncertainty")]
    assert len(uncertainty) == (1 if samples > 1 else 0)
    if uncertainty:
        layer = viewer.layers[uncertainty[0]]
        assert layer.data.shape == anomaly.data.shape and layer.data[12].max() > 0
        assert "2 seeds" in layer.name

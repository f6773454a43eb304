"""Calibrating the threshold on a site's own healthy controls: the core module, the saved site
model, the ``calibrate`` command and the Detect widget's button (tiny models, phantoms)."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main
from napari_uad.data.phantoms import make_brain
from napari_uad.io import InputError, read_mask, read_scan
from napari_uad.methods.base import Cancelled
from napari_uad.models.checkpoint import load_config
from napari_uad.models.registry import list_models
from napari_uad.site_calibration import (
    SITE_KIND,
    calibrate_on_controls,
    find_controls,
    iter_calibrate_on_controls,
    save_site_model,
    site_entry_of,
)

RUN = {"device": "cpu", "steps": 2}


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(folder))
    return folder


def _pairs(folder):
    return [(folder / f"s{i}.nii.gz", folder / f"s{i}_mask.nii.gz") for i in range(3)]


def _calibrate(folder, model, **kwargs):
    scans, masks = zip(*_pairs(folder), strict=True)
    settings = {"method": "anoddpm", "model": model, **RUN, **kwargs}
    return calibrate_on_controls(list(scans), brain_masks=list(masks), **settings)


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    """Three healthy phantoms with brain masks (as the ``healthy_folder`` fixture), for the
    calibration shared by several tests."""
    folder = tmp_path_factory.mktemp("controls")
    affine = np.diag([1.4, 1.4, 3.0, 1.0])
    for index in range(3):
        image, mask = make_brain((40, 44, 8), seed=10 + index)
        data = (image * 700).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), folder / f"s{index}.nii.gz")
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / f"s{index}_mask.nii.gz")
    return folder


@pytest.fixture(scope="module")
def calibrated(controls, tiny_model_dir):
    """The tiny DDPM calibrated for AnoDDPM on ``controls``, and its progress updates."""
    updates = []
    return _calibrate(controls, tiny_model_dir, progress=updates.append), updates


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_threshold_is_the_percentile_of_the_pooled_healthy_values(
    controls, calibrated, tiny_model_dir
):
    from napari_uad.pipeline import detect

    calibration, updates = calibrated
    pooled, per_control = [], []
    for scan_path, mask_path in _pairs(controls):
        scan = read_scan(scan_path)
        result = detect(
            scan,
            method="anoddpm",
            model=tiny_model_dir,
            brain_mask=read_mask(mask_path, like=scan),
            threshold=1.0,
            **RUN,
        )
        values = result.anomaly[result.brain_mask].astype(np.float64)
        pooled.append(values)
        per_control.append((values, float(np.prod(scan.spacing)) / 1000))
    expected = float(np.percentile(np.concatenate(pooled), 99.5))
    assert calibration.threshold == pytest.approx(expected, abs=1e-6)
    assert calibration.old_threshold == pytest.approx(0.2)
    assert calibration.voxels == sum(v.size for v in pooled)
    for figures, (values, voxel_ml) in zip(calibration.controls, per_control, strict=True):
        assert figures.voxels == values.size
        assert figures.flagged_new == np.count_nonzero(values >= calibration.threshold)
        assert figures.flagged_old == np.count_nonzero(values >= 0.2)
        assert figures.flagged_new_ml == pytest.approx(figures.flagged_new * voxel_ml)
        assert figures.own_threshold == pytest.approx(np.percentile(values, 99.5), abs=1e-6)
        assert figures.brain_mask.endswith("_mask.nii.gz")
    flagged = sum(c.flagged_new for c in calibration.controls)
    assert flagged / calibration.voxels == pytest.approx(0.005, abs=0.002)
    # Progress: every control read, then its steps; the fraction never goes back.
    assert {u.control for u in updates} == {0, 1, 2}
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and 0 <= fractions[0] < fractions[-1] <= 1
    assert calibration.parameters["steps"] == 2 and calibration.given == {"steps": 2}
    rows = calibration.rows()
    assert [r["control"] for r in rows] == ["s0", "s1", "s2", "all 3"]
    # Held out: each control at the threshold of the other two.
    for index, figures in enumerate(calibration.controls):
        others = np.concatenate(pooled[:index] + pooled[index + 1 :])
        cut = np.percentile(others, 99.5)
        assert figures.flagged_held_out == np.count_nonzero(pooled[index] >= cut)


def test_site_model_carries_the_threshold_and_threshold_auto_uses_it(
    controls, calibrated, tiny_model_dir, user_models
):
    from napari_uad.pipeline import detect

    before = _digest(tiny_model_dir)
    calibration = calibrated[0]
    folder = calibration.save("tiny-site")
    assert folder == user_models / "tiny-site"
    assert _digest(tiny_model_dir) == before  # the source model is untouched
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = load_config(folder)
    assert config.name == "tiny-site"
    entry = config.calibration
    assert entry["threshold"] == calibration.threshold and entry["kind"] == SITE_KIND
    assert entry["count"] == 3 and len(entry["controls"]) == 3
    assert entry["controls"][0]["scan"].endswith("s0.nii.gz")
    assert entry["previous_threshold"] == pytest.approx(0.2)
    assert entry["percentile"] == 99.5 and entry["date"]
    source = entry["source_model"]
    assert source["name"] == "tiny"
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert source["sha256"] == hashlib.sha256(weights).hexdigest()
    assert entry["parameters"]["steps"] == 2 and entry["options"]["seed"] == 0
    # The parameters it was calibrated with are the new model's defaults; the rest are kept.
    assert config.defaults["steps"] == 2 and config.defaults["noise_level"] == 100
    assert config.defaults["thor"] == load_config(tiny_model_dir).defaults["thor"]
    assert site_entry_of(config, "anoddpm") is not None and site_entry_of(config, "thor") is None
    info = next(m for m in list_models() if m.name == "tiny-site")
    assert info.origin.startswith("site calibration of tiny (anoddpm: 3 controls")

    scan = read_scan(controls / "s0.nii.gz")
    result = detect(scan, method="anoddpm", model="tiny-site", device="cpu", threshold="auto")
    parameters = result.provenance["parameters"]
    assert parameters["threshold"] == pytest.approx(calibration.threshold)
    assert parameters["threshold_source"] == "model calibration"
    assert parameters["steps"] == 2  # the site model's default
    assert result.provenance["model"] == "tiny-site"


def test_another_method_gets_its_own_entry(healthy_folder, tiny_model_dir, user_models):
    calibration = _calibrate(healthy_folder, tiny_model_dir, method="thor")
    config = load_config(calibration.save("tiny-thor-site"))
    assert config.calibration["threshold"] == 0.2  # AnoDDPM's own threshold is kept
    thor = config.calibration["methods"]["thor"]
    assert thor["threshold"] == calibration.threshold and thor["kind"] == SITE_KIND
    assert config.defaults["thor"]["steps"] == 2 and config.defaults["steps"] == 5


def test_refuses_to_overwrite_unless_asked(calibrated, tiny_model_dir, user_models):
    calibration = calibrated[0]
    folder = calibration.save("tiny-site")
    stamp = _digest(folder)
    with pytest.raises(InputError, match="exists.*--overwrite"):
        calibration.save("tiny-site")
    assert _digest(folder) == stamp
    entry = {**calibration.entry(), "threshold": 0.5}
    save_site_model(tiny_model_dir, "tiny-site", "anoddpm", entry, overwrite=True)
    assert load_config(folder).calibration["threshold"] == 0.5
    assert [p.name for p in user_models.iterdir()] == ["tiny-site"]  # nothing staged is left
    with pytest.raises(InputError, match="shipped models"):
        from napari_uad.models.registry import PACKAGE_MODELS

        save_site_model(tiny_model_dir, PACKAGE_MODELS / "x", "anoddpm", entry)


def test_an_interrupted_save_leaves_no_model_folder(calibrated, user_models, monkeypatch):
    calibration = calibrated[0]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_uad.site_calibration.shutil.copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        calibration.save("tiny-site")
    assert list(user_models.iterdir()) == []


def test_cancel_stops_and_saves_nothing(healthy_folder, tiny_model_dir, user_models):
    scans, masks = zip(*_pairs(healthy_folder), strict=True)
    updates = []
    with pytest.raises(Cancelled):
        calibrate_on_controls(
            list(scans),
            method="anoddpm",
            model=tiny_model_dir,
            progress=updates.append,
            should_stop=lambda: len(updates) >= 4,
            **RUN,
        )
    assert max(u.control for u in updates) < 2
    # Closing the generator (what a napari worker does on Cancel) stops it as well.
    run = iter_calibrate_on_controls(list(scans), method="anoddpm", model=tiny_model_dir, **RUN)
    next(run)
    run.close()
    assert not user_models.exists() or list(user_models.iterdir()) == []


def test_few_controls_and_an_outlier_give_warnings(healthy_folder, tiny_model_dir, tmp_path):
    with pytest.warns(UserWarning, match="1 control.*noisy"):
        one = calibrate_on_controls(
            [healthy_folder / "s0.nii.gz"], method="anoddpm", model=tiny_model_dir, **RUN
        )
    assert len(one.controls) == 1 and "noisy" in one.warnings[0]
    # A control prepared differently (inverted contrast): the threshold of the other controls
    # flags much of it, which the held-out check reports.
    image, mask = make_brain((40, 44, 8), seed=30)
    affine = np.diag([1.4, 1.4, 3.0, 1.0])
    odd = tmp_path / "odd.nii.gz"
    inverted = np.where(mask, 1.05 - image, 0) * 700
    nib.save(nib.Nifti1Image(inverted.astype(np.float32), affine), odd)
    scans = [healthy_folder / "s0.nii.gz", healthy_folder / "s1.nii.gz", odd]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calibrate_on_controls(scans, method="anoddpm", model=tiny_model_dir, **RUN)
    messages = [str(w.message) for w in caught]
    assert any("control odd: the threshold of the other controls" in m for m in messages)
    assert not any("control s0" in m or "control s1" in m for m in messages), messages
    assert result.controls[2].held_out_percent > 2.0
    assert "noisy" not in " ".join(result.warnings)


def test_find_controls_pairs_masks_and_refuses_bad_lists(healthy_folder, tmp_path):
    globbed = sorted(healthy_folder.glob("*.nii.gz"))  # scans and their masks, as a shell gives
    controls = find_controls(globbed)
    assert [c.name for c in controls] == ["s0", "s1", "s2"]
    assert all(c.brain_mask.name == f"{c.name}_mask.nii.gz" for c in controls)
    assert [c.name for c in find_controls([healthy_folder])] == ["s0", "s1", "s2"]
    estimated = find_controls([healthy_folder], ["auto", "auto", "auto"])
    assert all(c.brain_mask is None for c in estimated)
    with pytest.raises(InputError, match="at least one"):
        find_controls([])
    with pytest.raises(InputError, match="not found"):
        find_controls([tmp_path / "missing.nii.gz"])
    with pytest.raises(InputError, match="twice"):
        find_controls([healthy_folder / "s0.nii.gz", healthy_folder / "s0.nii.gz"])
    with pytest.raises(InputError, match="brain mask, not a scan"):
        find_controls([healthy_folder / "s0.nii.gz", healthy_folder / "s1_mask.nii.gz"])
    with pytest.raises(InputError, match="one brain mask per control"):
        find_controls([healthy_folder], ["auto"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI scans"):
        find_controls([tmp_path / "empty"])
    # What restore wrote into the folder is not a control.
    shutil.copy(healthy_folder / "s0.nii.gz", healthy_folder / "s0_anomaly.nii.gz")
    assert [c.name for c in find_controls([healthy_folder])] == ["s0", "s1", "s2"]
    with pytest.raises(InputError, match="restore output"):
        find_controls([healthy_folder / "s0_anomaly.nii.gz"])
    with pytest.raises(InputError, match="percentile"):
        calibrate_on_controls([healthy_folder / "s0.nii.gz"], method="anoddpm", percentile=0.5)


def test_cli_calibrates_lists_and_restores_with_the_site_model(
    healthy_folder, tiny_model_dir, user_models, tmp_path, capsys
):
    args = ["calibrate", str(healthy_folder), "--method", "anoddpm", "--model"]
    args += [str(tiny_model_dir), "--out", "tiny-site", "--device", "cpu", "--steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "control" in out and "new_mL" in out and "old_mL" in out and "all 3" in out
    assert "new anoddpm threshold" in out and "old threshold 0.2" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("use it with: napari-uad restore") and "--model tiny-site" in last
    threshold = load_config(user_models / "tiny-site").calibration["threshold"]

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-site" in listing and "site calibration of tiny" in listing

    restore = ["restore", str(healthy_folder / "s1.nii.gz"), "--method", "anoddpm"]
    restore += ["--model", "tiny-site", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main(restore) == 0
    record = json.loads((tmp_path / "r" / "s1.json").read_text())
    assert record["parameters"]["threshold"] == pytest.approx(threshold)
    assert record["model"] == "tiny-site"

    assert main(args) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["MISSING"], "control scan not found"),
        (["EMPTY"], "no NIfTI scans"),
        (["--percentile", "100"], "percentile must be at least 50 and below 100"),
        (["--percentile", "0.5"], "percentile must be at least 50"),
        (["--brain-mask", "auto"], "one brain mask per control"),
        (["--out", "bad name"], "invalid model name"),
    ],
)
def test_cli_bad_input_is_one_line(
    healthy_folder, tiny_model_dir, user_models, tmp_path, capsys, extra, message
):
    (tmp_path / "empty").mkdir()
    controls = [str(healthy_folder)]
    if extra[0] == "MISSING":
        controls, extra = [str(tmp_path / "nope.nii.gz")], []
    elif extra[0] == "EMPTY":
        controls, extra = [str(tmp_path / "empty")], []
    args = ["calibrate", *controls, "--method", "anoddpm", "--model", str(tiny_model_dir)]
    args += ["--out", "tiny-site", "--device", "cpu", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-uad: error:") and "\n" not in err and message in err, err
    assert not user_models.exists()


# --------------------------------------------------------------------------- the widget
@pytest.fixture
def widget_models(user_models, tiny_model_dir):
    shutil.copytree(tiny_model_dir, user_models / "tiny")
    return user_models


def _widget(make_napari_viewer):
    from napari_uad.widgets.detect import DetectWidget

    widget = DetectWidget(make_napari_viewer())
    widget.set_params(model="tiny", device="cpu", steps=2)
    return widget


def _patch_dialogs(monkeypatch, paths, name):
    from napari_uad.widgets import detect

    monkeypatch.setattr(
        detect.QFileDialog, "getOpenFileNames", lambda *a, **k: ([str(p) for p in paths], "")
    )
    asked = []

    def get_text(parent, title, label, *args, text="", **kwargs):
        asked.append(text)
        return (name if name is not None else text), True

    monkeypatch.setattr(detect.QInputDialog, "getText", get_text)
    return asked


@pytest.mark.gui
def test_widget_calibrates_saves_and_selects_the_site_model(
    make_napari_viewer, widget_models, healthy_folder, monkeypatch, qtbot
):
    from napari_uad.widgets.detect import State

    widget = _widget(make_napari_viewer)
    asked = _patch_dialogs(monkeypatch, sorted(healthy_folder.glob("s?.nii.gz")), None)
    updates = []
    widget.calibrate_dialog()
    assert asked == ["tiny-site"] and widget.state is State.RUNNING
    assert not widget.run_button.isEnabled() and not widget.calibrate_button.isEnabled()
    widget.worker.yielded.connect(updates.append)
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget.worker is None, timeout=5_000)
    assert widget.state is State.DONE, widget.status_label.text()
    config = load_config(widget_models / "tiny-site")
    threshold = config.calibration["threshold"]
    status = widget.status_label.text()
    assert f"threshold {threshold:.4g} (was 0.2)" in status and "'tiny-site'" in status
    assert widget.model_combo.currentText() == "tiny-site"
    assert "from 3 site controls" in widget.model_label.text()
    assert widget.steps_spin.value() == 2
    assert updates and widget.run_button.isEnabled()


@pytest.mark.gui
def test_widget_cancel_saves_no_model(
    make_napari_viewer, widget_models, healthy_folder, monkeypatch, qtbot
):
    from qtpy.QtCore import Qt

    from napari_uad.widgets.detect import State

    widget = _widget(make_napari_viewer)
    widget.set_params(steps=400, noise_level=400)
    _patch_dialogs(monkeypatch, sorted(healthy_folder.glob("s?.nii.gz")), "cancelled-site")
    emitted = []
    widget.calibrate_dialog()
    widget.worker.yielded.connect(emitted.append, Qt.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: len(emitted) >= 3, timeout=30_000)
    with qtbot.waitSignal(widget.worker.finished, timeout=10_000):
        widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=5_000)
    assert widget.state is State.STOPPED and "no model saved" in widget.status_label.text()
    assert sorted(p.name for p in widget_models.iterdir()) == ["tiny"]


@pytest.mark.gui
def test_widget_reports_bad_controls_without_starting(
    make_napari_viewer, widget_models, tmp_path, monkeypatch
):
    from napari_uad.widgets import detect

    errors = []
    monkeypatch.setattr(detect, "show_error", errors.append)
    widget = _widget(make_napari_viewer)
    _patch_dialogs(monkeypatch, [tmp_path / "s0_mask.nii.gz"], "x")
    (tmp_path / "s0_mask.nii.gz").write_bytes(b"")
    widget.calibrate_dialog()
    assert widget.worker is None and widget.state is detect.State.IDLE
    assert len(errors) == 1 and "brain mask, not a scan" in errors[0]


@pytest.mark.gui
def test_widget_asks_before_replacing_a_model(
    make_napari_viewer, widget_models, healthy_folder, monkeypatch
):
    from napari_uad.widgets import detect

    shutil.copytree(widget_models / "tiny", widget_models / "tiny-site")
    asked = []

    def question(*args, **kwargs):
        asked.append(args[2])
        return detect.QMessageBox.StandardButton.No

    monkeypatch.setattr(detect.QMessageBox, "question", question)
    widget = _widget(make_napari_viewer)
    _patch_dialogs(monkeypatch, sorted(healthy_folder.glob("s?.nii.gz")), None)
    widget.calibrate_dialog()
    assert len(asked) == 1 and "'tiny-site' exists" in asked[0]
    assert widget.worker is None and widget.state is detect.State.IDLE

import json

import pytest

from napari_uad.cli import main
from napari_uad.figures import overview_figure
from napari_uad.io import read_mask, read_scan
from napari_uad.pipeline import detect


@pytest.fixture(scope="module")
def detection(tiny_model_dir, phantom_scan_files):
    scan = read_scan(phantom_scan_files["scan"])
    return scan, detect(scan, model=tiny_model_dir, device="cpu", threshold=0.1)


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_overview_figure_formats(detection, phantom_scan_files, tmp_path, suffix):
    scan, result = detection
    truth = read_mask(phantom_scan_files["truth"], like=scan)
    path = overview_figure(scan, result, tmp_path / f"fig{suffix}", truth=truth)
    assert path.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == [f"fig{suffix}"]


def test_overview_figure_rejects_unknown_format(detection, tmp_path):
    scan, result = detection
    with pytest.raises(ValueError, match="png"):
        overview_figure(scan, result, tmp_path / "fig.bmp")


def test_demo_without_display_writes_outputs_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--no-gui", "--out", str(out), "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "sample.json",
        "sample_anomaly.nii.gz",
        "sample_healthy.nii.gz",
        "sample_mask.nii.gz",
        "sample_overview.png",
    ]
    record = json.loads((out / "sample.json").read_text())
    # The demo finds the sample's tumour: disyre at the healthy sample's threshold gave AUROC
    # 0.948 and Dice 0.497 at that threshold (bars a little under).
    assert record["method"] == "disyre"
    assert record["parameters"]["threshold_source"] == "given"
    assert "healthy sample" in record["threshold_rule"]
    assert record["parameters"]["threshold"] < record["model_calibrated_threshold"]
    assert record["metrics_vs_truth"]["auroc"] > 0.92
    assert record["metrics_vs_truth"]["dice_at_threshold"] > 0.4
    assert record["lesions"]["count"] >= 1
    printed = capsys.readouterr().out
    assert "voxel AUROC" in printed and "demo: disyre" in printed

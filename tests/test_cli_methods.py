"""Every method from the command line: restore, --samples, --param, and compare."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main
from napari_uad.methods import METHOD_NAMES


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_restore_runs_every_method_on_the_input_grid(
    method, tiny_models, phantom_scan_files, tmp_path
):
    out = tmp_path / "out"
    code = main(
        [
            "restore",
            str(phantom_scan_files["scan"]),
            "--method",
            method,
            "--model",
            str(tiny_models[method]),
            "--brain-mask",
            str(phantom_scan_files["mask"]),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    source = nib.load(phantom_scan_files["scan"])
    brain = nib.load(phantom_scan_files["mask"]).get_fdata() > 0
    anomaly = nib.load(out / "scan_anomaly.nii.gz")
    assert anomaly.shape == source.shape
    np.testing.assert_allclose(anomaly.affine, source.affine)
    data = anomaly.get_fdata()
    assert (data[~brain] == 0).all() and data[brain].max() > 0
    record = json.loads((out / "scan.json").read_text())
    assert record["method"] == method and record["nfe_per_slice"] >= 1
    assert not (out / "scan_uncertainty.nii.gz").exists()


def test_samples_write_an_uncertainty_map(tiny_models, phantom_scan_files, tmp_path):
    out = tmp_path / "out"
    args = [
        "restore",
        str(phantom_scan_files["scan"]),
        "--method",
        "thor",
        "--model",
        str(tiny_models["thor"]),
        "--brain-mask",
        str(phantom_scan_files["mask"]),
        "--samples",
        "3",
        "--param",
        "harmonise_at=[100]",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    uncertainty = nib.load(out / "scan_uncertainty.nii.gz")
    source = nib.load(phantom_scan_files["scan"])
    assert uncertainty.shape == source.shape
    np.testing.assert_allclose(uncertainty.affine, source.affine)
    brain = nib.load(phantom_scan_files["mask"]).get_fdata() > 0
    values = uncertainty.get_fdata()
    assert values[brain].max() > 0 and (values[~brain] == 0).all()
    record = json.loads((out / "scan.json").read_text())
    assert record["parameters"]["samples"] == 3
    assert record["parameters"]["harmonise_at"] == [100]
    assert record["nfe_per_slice"] == 3 * 6
    assert "uncertainty" in record["outputs"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "nonsense=3"], "no parameter"),
        (["--param", "novalue"], "KEY=VALUE"),
        (["--samples", "0"], "--samples"),
    ],
)
def test_bad_method_options_are_one_line_errors(
    extra, message, tiny_models, phantom_scan_files, tmp_path, capsys
):
    args = ["restore", str(phantom_scan_files["scan"]), "--method", "disyre"]
    args += ["--model", str(tiny_models["disyre"]), "--out", str(tmp_path / "o"), *extra]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "o" / "scan_anomaly.nii.gz").exists()


def test_compare_writes_one_figure_maps_and_a_metrics_table(
    tiny_models, phantom_scan_files, tmp_path, capsys
):
    out = tmp_path / "cmp"
    methods = ["anoddpm", "disyre", "madad"]
    args = ["compare", str(phantom_scan_files["scan"]), "--methods", ",".join(methods)]
    for method in methods:
        args += ["--model", f"{method}={tiny_models[method]}"]
    args += ["--truth", str(phantom_scan_files["truth"])]
    args += ["--brain-mask", str(phantom_scan_files["mask"]), "--out", str(out)]
    args += ["--param", "disyre.severities=[0.5,0.25]"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "auroc" in printed and all(m in printed for m in methods)
    figure = out / "scan_compare.png"
    assert figure.stat().st_size > 20_000
    from matplotlib.image import imread

    pixels = imread(figure)
    assert pixels.shape[1] > 4 * 300  # the scan, then a column per method
    with open(out / "scan_compare.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == methods
    for row in rows:
        assert 0.5 < float(row["auroc"]) <= 1 and 0 <= float(row["best_dice"]) <= 1
        assert int(row["nfe_per_slice"]) >= 1
    details = json.loads((out / "scan_compare.json").read_text())
    assert details[1]["provenance"]["parameters"]["severities"] == [0.5, 0.25]
    source = nib.load(phantom_scan_files["scan"])
    for method in methods:
        assert nib.load(out / f"scan_{method}_anomaly.nii.gz").shape == source.shape
    # A second run does not replace the results without --overwrite.
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_compare_refuses_unknown_methods_and_models_for_other_methods(
    phantom_scan_files, tmp_path, capsys
):
    scan = str(phantom_scan_files["scan"])
    assert main(["compare", scan, "--methods", "anoddpm,nope", "--out", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    args = ["compare", scan, "--methods", "anoddpm", "--model", "thor=x", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "METHOD=MODEL" in capsys.readouterr().err


def test_a_method_without_an_installed_model_says_how_to_get_one(
    phantom_scan_files, tmp_path, monkeypatch, capsys
):
    from napari_uad.models import registry

    monkeypatch.setenv("NAPARI_UAD_MODELS", str(tmp_path / "empty"))
    monkeypatch.setattr(registry, "PACKAGE_MODELS", tmp_path / "none shipped")
    args = ["restore", str(phantom_scan_files["scan"]), "--method", "madad"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "no madad model is installed" in error and "--method madad" in error


def test_compare_with_an_empty_truth_stops_before_running(phantom_scan_files, tmp_path, capsys):
    import nibabel as nib

    empty = tmp_path / "empty_truth.nii.gz"
    source = nib.load(phantom_scan_files["truth"])
    nib.save(nib.Nifti1Image(np.zeros(source.shape, np.uint8), source.affine), empty)
    args = ["compare", str(phantom_scan_files["scan"]), "--methods", "anoddpm"]
    args += ["--truth", str(empty), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "no lesion voxel inside the brain" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

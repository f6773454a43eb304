"""``napari-uad train``: a folder of healthy scans in, a usable model out."""

from __future__ import annotations

import json

import pytest

from napari_uad.cli import main
from napari_uad.models.checkpoint import load_config

TINY = ["--grid", "32", "--channels", "8", "--batch-size", "4", "--checkpoint-every", "5"]


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(folder))
    return folder


def test_train_a_named_model_then_use_it(
    healthy_folder, models_dir, phantom_scan_files, tmp_path, capsys
):
    code = main(
        [
            "train",
            str(healthy_folder),
            "--out",
            "my-ddpm",
            "--steps",
            "8",
            "--option",
            "max_timestep=300",
            *TINY,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "3 scans used (3 with a brain mask, 0 estimated)" in out
    assert "saved" in out and "healthy threshold" in out
    config = load_config(models_dir / "my-ddpm")
    assert config.method == "anoddpm" and config.grid == 32
    assert config.training["options"]["max_timestep"] == 300
    assert config.calibration["threshold"] > 0
    assert main(["models"]) == 0
    assert "my-ddpm" in capsys.readouterr().out
    code = main(
        [
            "restore",
            str(phantom_scan_files["scan"]),
            "--method",
            "anoddpm",
            "--model",
            "my-ddpm",
            "--steps",
            "2",
            "--noise-level",
            "50",
            "--out",
            str(tmp_path / "restored"),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "restored" / "scan.json").read_text())
    assert (
        report["model"] == "my-ddpm"
        and report["parameters"]["threshold_source"] == "model calibration"
    )


def test_resume_extends_a_run_and_refuses_to_clobber_it(healthy_folder, tmp_path, capsys):
    out = tmp_path / "runs" / "dis"
    args = ["train", str(healthy_folder), "--method", "disyre", "--out", str(out), *TINY]
    assert main([*args, "--steps", "4"]) == 0
    assert main([*args, "--steps", "6"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["train", str(healthy_folder), "--out", str(out), "--resume", "--steps", "6"]) == 0
    captured = capsys.readouterr().out
    assert "training disyre model 'dis' on cpu: step 4 of 6" in captured
    assert load_config(out).training["steps"] == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "bad name!"], "invalid model name"),
        (["--out", "ok", "--option", "nonsense"], "KEY=VALUE"),
        (["--out", "ok", "--option", "bogus=1"], "unknown ddpm options"),
        (["--out", "ok", "--method", "madad", "--noise", "simplex"], "ddpm trainer only"),
    ],
)
def test_bad_train_arguments_give_one_line(healthy_folder, models_dir, capsys, extra, message):
    assert main(["train", str(healthy_folder), *TINY, "--steps", "2", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_or_empty_folder(tmp_path, models_dir, capsys):
    assert main(["train", str(tmp_path / "nope"), "--out", "x"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--out", "x"]) == 2
    assert "no usable scan" in capsys.readouterr().err


def test_an_addm_model_detects_with_method_addm(
    healthy_folder, models_dir, phantom_scan_files, tmp_path, capsys
):
    assert (
        main(
            [
                "train",
                str(healthy_folder),
                "--method",
                "addm",
                "--out",
                "adv",
                "--steps",
                "4",
                *TINY,
            ]
        )
        == 0
    )
    assert load_config(models_dir / "adv").components["discriminator"]["kind"] == "discriminator"
    args = ["restore", str(phantom_scan_files["scan"]), "--method", "addm", "--steps", "2"]
    assert main([*args, "--model", "adv", "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "scan.json").read_text())
    assert report["method"] == "addm" and report["model"] == "adv"
    assert main([*args, "--out", str(tmp_path / "r2")]) == 0  # the shipped addm model
    assert json.loads((tmp_path / "r2" / "scan.json").read_text())["model"] == "addm"


def test_init_reads_the_data_on_the_initial_models_grid(healthy_folder, tmp_path):
    base = tmp_path / "base"
    assert main(["train", str(healthy_folder), "--out", str(base), "--steps", "2", *TINY]) == 0
    tuned = tmp_path / "tuned"
    # No --grid: the data must be prepared on the 32 grid of the model it starts from.
    args = ["train", str(healthy_folder), "--out", str(tuned), "--steps", "2", "--batch-size", "4"]
    assert main([*args, "--init", str(base)]) == 0
    assert load_config(tuned).grid == 32

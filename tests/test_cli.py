import json

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main


def _restore(args, tiny_model_dir, out):
    return main(
        [
            "restore",
            *args,
            "--method",
            "anoddpm",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )


def test_restore_writes_four_files_on_the_input_grid(
    tiny_model_dir, phantom_scan_files, tmp_path, capsys
):
    out = tmp_path / "out"
    code = _restore(
        [
            str(phantom_scan_files["scan"]),
            "--brain-mask",
            str(phantom_scan_files["mask"]),
            "--steps",
            "3",
            "--seed",
            "4",
        ],
        tiny_model_dir,
        out,
    )
    assert code == 0
    source = nib.load(phantom_scan_files["scan"])
    for suffix, dtype in (("healthy", np.float32), ("anomaly", np.float32), ("mask", np.uint8)):
        image = nib.load(out / f"scan_{suffix}.nii.gz")
        assert image.shape == source.shape
        np.testing.assert_allclose(image.affine, source.affine)
        assert image.get_data_dtype() == dtype
    record = json.loads((out / "scan.json").read_text())
    assert record["method"] == "anoddpm"
    assert record["model"] == "tiny"
    assert len(record["model_sha256"]) == 64
    assert record["parameters"]["steps"] == 3 and record["parameters"]["seed"] == 4
    assert record["nfe_per_slice"] == 3
    assert record["device"] == "cpu"
    assert "restore_s" in record["timings"]
    assert record["napari_uad_version"]
    assert "lesion(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "napari-uad_log.tsv",
        "napari-uad_summary.tsv",
        "scan.json",
        "scan_anomaly.nii.gz",
        "scan_brain_mask.nii.gz",
        "scan_healthy.nii.gz",
        "scan_lesions.tsv",
        "scan_mask.nii.gz",
    ]
    # the brain that was scored is written beside the maps: here the given mask
    brain = nib.load(out / "scan_brain_mask.nii.gz")
    assert brain.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(
        np.asarray(brain.dataobj) > 0, nib.load(phantom_scan_files["mask"]).get_fdata() > 0.5
    )

    # Existing outputs are kept unless --overwrite.
    assert _restore([str(phantom_scan_files["scan"])], tiny_model_dir, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        _restore(
            [str(phantom_scan_files["scan"]), "--overwrite", "--threshold", "0.05"],
            tiny_model_dir,
            out,
        )
        == 0
    )
    mask = nib.load(out / "scan_mask.nii.gz").get_fdata()
    assert mask.any()

    # evaluate reads the maps back and reports metrics.
    code = main(
        [
            "evaluate",
            str(out / "scan_anomaly.nii.gz"),
            "--truth",
            str(phantom_scan_files["truth"]),
            "--brain-mask",
            str(phantom_scan_files["mask"]),
            "--json",
            str(tmp_path / "metrics.json"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "auroc" in printed and "dice_at_threshold" in printed
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert rows[0]["auroc"] > 0.5
    assert rows[0]["dice_at_threshold"] is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.nii.gz"], "missing.nii.gz"),
        (["{scan}", "--threshold", "high"], "threshold"),
        (["{scan}", "--noise-level", "5000"], "noise_level"),
        (["{scan}", "--brain-mask", "{scan}", "--brain-mask", "{scan}"], "brain-mask"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(
    args, message, tiny_model_dir, phantom_scan_files, tmp_path, capsys
):
    args = [a.format(scan=phantom_scan_files["scan"]) for a in args]
    assert _restore(args, tiny_model_dir, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-uad: error:")
    assert message in err
    assert len(err.splitlines()) == 1


def test_unknown_model_and_corrupt_input(phantom_scan_files, tmp_path, capsys):
    code = main(
        [
            "restore",
            str(phantom_scan_files["scan"]),
            "--method",
            "anoddpm",
            "--model",
            "no-such-model",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "no model named" in capsys.readouterr().err
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(phantom_scan_files["scan"].read_bytes()[:200])
    code = main(["restore", str(broken), "--method", "anoddpm", "--out", str(tmp_path / "o")])
    assert code == 2
    assert not (tmp_path / "o" / "broken.json").exists()


def test_models_lists_user_models(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(tiny_model_dir.parent))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "user" in out and "anoddpm" in out


def test_console_script_is_installed():
    import shutil
    import subprocess

    exe = shutil.which("napari-uad")
    if exe is None:
        pytest.skip("package not installed (running from a source tree)")
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("napari-uad ")


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, napari_uad, napari_uad.cli; "
        "print('torch' in sys.modules, 'napari' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("extra", [[], ["--noise", "simplex", "--steps", "2"]])
def test_restore_the_sample_with_the_shipped_models(extra, tmp_path):
    """The README's example: the shipped default models on the shipped sample scan."""
    from napari_uad.data.samples import sample_path

    sample = sample_path("lesion")
    out = tmp_path / "out"
    args = ["restore", str(sample), "--method", "anoddpm", "--device", "cpu", "--out", str(out)]
    assert main(args + extra) == 0
    source = nib.load(sample)
    for suffix in ("healthy", "anomaly", "mask"):
        image = nib.load(out / f"lesion_t1_{suffix}.nii.gz")
        assert image.shape == source.shape
        np.testing.assert_allclose(image.affine, source.affine)
    record = json.loads((out / "lesion_t1.json").read_text())
    assert record["model"] == ("anoddpm-simplex" if extra else "anoddpm-gaussian")
    assert record["parameters"]["threshold_source"] == "model calibration"
    assert record["slices_processed"] == 24

"""Models: only safetensors + JSON are loaded; wrong or corrupt checkpoints give one clear line.

Issue 8, part 3. Each broken checkpoint is passed to ``napari-uad restore --model`` so the test
sees the user's message (one line, exit code 2, nothing written), and model names are checked
against path traversal.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_uad.cli import main
from napari_uad.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_uad.models.registry import model_search_path, resolve_model
from napari_uad.models.unet import UNet, UNetConfig
from napari_uad.phantoms import make_brain

from .conftest import tiny_config


class _Boom:
    """Unpickling this would run code: the loader must never get that far."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle was executed')",))


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    image, _ = make_brain((36, 40, 3), seed=8)
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(image * 500, np.eye(4)), path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    """A valid checkpoint folder (random weights) to break in different ways."""
    config = tiny_config(name="victim")
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "victim", UNet(config.unet), config)


def _restore_with(model, scan_file, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(
        ["restore", str(scan_file), "--method", "anoddpm", "--model", str(model)]
        + ["--device", "cpu", "--steps", "1", "--out", str(out)]
    )
    err = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if not line.startswith("napari-uad: warning:")
    ]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("napari-uad: error: "), err
    assert not out.exists() or not any(out.iterdir())
    return err[0]


def test_pickle_files_are_never_unpickled(tmp_path, scan_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("model.pt", "weights.ckpt", "pytorch_model.bin", "model.pth"):
        (tmp_path / name).write_bytes(pickle.dumps(_Boom()))
        for given in (name, f"./{name}", tmp_path / name):
            assert "pickle" in _restore_with(given, scan_file, tmp_path, capsys)
    # A folder with a config but only pickle weights.
    folder = tmp_path / "converted-badly"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    assert "pickle" in _restore_with(folder, scan_file, tmp_path, capsys)
    # A pickle renamed to model.safetensors is not a safetensors file.
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Boom()))
    assert "not a valid safetensors" in _restore_with(folder, scan_file, tmp_path, capsys)


def _corrupt(folder, how):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if how == "empty":
        weights.write_bytes(b"")
    elif how == "truncated":
        weights.write_bytes(data[: len(data) // 3])
    elif how == "header_length_too_big":
        weights.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    elif how == "header_not_json":
        (length,) = struct.unpack("<Q", data[:8])
        weights.write_bytes(data[:8] + b"{" * length + data[8 + length :])
    elif how == "random_bytes":
        weights.write_bytes(np.random.default_rng(0).bytes(len(data)))


@pytest.mark.parametrize(
    "how", ["empty", "truncated", "header_length_too_big", "header_not_json", "random_bytes"]
)
def test_corrupt_weights(how, checkpoint, scan_file, tmp_path, capsys):
    _corrupt(checkpoint, how)
    assert "not a valid safetensors" in _restore_with(checkpoint, scan_file, tmp_path, capsys)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["unet"].update(base_channels=16), "do not match"),
        (lambda c: c["unet"].update(channel_mults=[1, 4]), "do not match"),
        (lambda c: c.update(grid=33), "multiple"),
        (lambda c: c.update(grid="big"), "config.json"),
        (lambda c: c["unet"].update(base_channels=None), "config.json"),
        (lambda c: c.update(unet=[]), "config.json"),
        (lambda c: c.clear(), "name"),
    ],
)
def test_config_that_does_not_fit_the_weights(
    edit, message, checkpoint, scan_file, tmp_path, capsys
):
    data = json.loads((checkpoint / "config.json").read_text())
    edit(data)
    (checkpoint / "config.json").write_text(json.dumps(data))
    assert message in _restore_with(checkpoint, scan_file, tmp_path, capsys)


def test_config_json_that_is_not_json(checkpoint, scan_file, tmp_path, capsys):
    (checkpoint / "config.json").write_bytes(b"\xff\xfe not json")
    assert "cannot read" in _restore_with(checkpoint, scan_file, tmp_path, capsys)


def test_weights_with_wrong_shapes_or_nan(checkpoint, scan_file, tmp_path, capsys):
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.ndim == 4)
    bad = dict(tensors)
    bad[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 2)
    save_file(bad, str(checkpoint / "model.safetensors"))
    assert "has shape" in _restore_with(checkpoint, scan_file, tmp_path, capsys)
    bad[key] = torch.full_like(tensors[key], float("nan"))
    save_file(bad, str(checkpoint / "model.safetensors"))
    assert "NaN" in _restore_with(checkpoint, scan_file, tmp_path, capsys)


def test_wrong_channel_count(tmp_path, scan_file, capsys):
    """A consistent checkpoint for 3-channel images cannot run on 1-channel slices."""
    unet = UNetConfig(
        in_channels=3,
        out_channels=3,
        base_channels=8,
        channel_mults=(1, 2),
        groups=4,
        attention_levels=(False, False),
    )
    config = tiny_config(name="rgb", unet=unet)
    folder = save_checkpoint(tmp_path / "rgb", UNet(unet), config)
    load_checkpoint(folder)  # the files themselves are fine
    message = _restore_with(folder, scan_file, tmp_path, capsys)
    assert "3-channel" in message and "anoddpm" in message


def test_model_names_cannot_leave_the_models_folders(tmp_path, monkeypatch, checkpoint):
    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(models))
    monkeypatch.chdir(tmp_path / "victim")  # a checkpoint right here, outside the models folder
    save_checkpoint(models / "mine", *load_checkpoint(checkpoint))
    assert resolve_model("mine") == models / "mine"
    for name in ["...", ".hidden", "..\\victim", "%2e%2e", "~", "~root", "a b", "mine\x00"]:
        with pytest.raises(CheckpointError, match="invalid model name"):
            resolve_model(name)
    # "." and ".." are existing folders, so they are paths (relative to the working folder).
    assert resolve_model(".") == Path(".")
    # Explicit paths (with a separator) are allowed, that is the NAME|PATH contract.
    assert resolve_model(str(checkpoint)) == checkpoint
    assert resolve_model("../victim").resolve() == checkpoint.resolve()
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model(str(models / ".." / "absent"))
    assert all(p.is_absolute() for p in model_search_path())


def test_a_bad_user_model_does_not_hide_the_others(tmp_path, monkeypatch, checkpoint, capsys):
    """``napari-uad models`` skips a broken folder in the user models folder."""
    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(models))
    shutil.copytree(checkpoint, models / "good")
    shutil.copytree(checkpoint, models / "broken")
    (models / "broken" / "config.json").write_text("{")
    (models / "stray.txt").write_text("not a model")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "broken" not in out and "stray" not in out

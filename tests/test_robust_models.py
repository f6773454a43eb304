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
from napari_uad.data.phantoms import make_brain
from napari_uad.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_uad.models.registry import model_search_path, resolve_model
from napari_uad.models.unet import UNet, UNetConfig

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
    # Warnings, and the progress bar of a run that fails part-way, may come before the error.
    err = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if not line.startswith(("napari-uad: warning:", "scan (anoddpm): "))
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
    # "." and ".." are paths (relative to the working folder).
    assert resolve_model(".") == Path(".")
    # Explicit paths (with a separator) are allowed, that is the NAME|PATH contract.
    assert resolve_model(str(checkpoint)) == checkpoint
    assert resolve_model("../victim").resolve() == checkpoint.resolve()
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model(str(models / ".." / "absent"))
    assert all(p.is_absolute() for p in model_search_path())


def test_a_folder_here_named_like_a_model_is_not_that_model(tmp_path, monkeypatch, checkpoint):
    """`restore --out disyre` then `--method disyre`: the output folder is not the model."""
    from napari_uad.methods import default_model_name

    monkeypatch.setenv("NAPARI_UAD_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    shipped = default_model_name("disyre")
    save_checkpoint(tmp_path / shipped, *load_checkpoint(checkpoint))  # a folder here, same name
    assert resolve_model(shipped).resolve() != (tmp_path / shipped).resolve()
    assert resolve_model(f"./{shipped}").resolve() == (tmp_path / shipped).resolve()
    save_checkpoint(tmp_path / "only-here", *load_checkpoint(checkpoint))
    with pytest.raises(CheckpointError, match=r"give it as a path: \./only-here"):
        resolve_model("only-here")


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


@pytest.mark.parametrize("how", ["huge_floats", "huge_integers"])
def test_weights_that_compute_nan_are_refused(how, checkpoint, scan_file, tmp_path, capsys):
    """Finite weights that overflow give NaN maps: one line, not "0 lesion(s)" and exit 0."""
    from safetensors.torch import load_file

    from napari_uad.methods import get_method_class

    tensors = load_file(str(checkpoint / "model.safetensors"))
    if how == "huge_floats":
        bad = {k: torch.full_like(v, 1e30) for k, v in tensors.items()}
    else:  # integer tensors, accepted as weights, that overflow in float32
        bad = {k: torch.full(v.shape, 2**62, dtype=torch.int64) for k, v in tensors.items()}
    save_file(bad, str(checkpoint / "model.safetensors"))
    message = _restore_with(checkpoint, scan_file, tmp_path, capsys)
    assert "computes non-finite values" in message and "'victim'" in message
    # The same through the Python API (the napari widgets' path).
    method = get_method_class("anoddpm").from_checkpoint(checkpoint)
    images = np.full((2, 32, 32), 0.5, dtype=np.float32)
    with pytest.raises(CheckpointError, match="non-finite"):
        method.restore(images, np.ones(images.shape, bool), steps=1)


def _nested(folder):
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: c["unet"].update(base_channels=1_000_000), "unet.base_channels"),
        (lambda c: c["unet"].update(base_channels=1e6), "unet.base_channels"),
        (lambda c: c["unet"].update(base_channels=7, groups=1), "must be even"),
        (lambda c: c["diffusion"].update(num_train_timesteps=10**12), "num_train_timesteps"),
        (lambda c: c["unet"].update(groups=0), "unet.groups"),
        (lambda c: c["unet"].update(groups=3), "must divide"),
        (lambda c: c.update(grid=1_000_000), "grid"),
        (lambda c: c["unet"].update(num_res_blocks=1_000_000), "num_res_blocks"),
        (
            lambda c: c["unet"].update(channel_mults=[1] * 10**5, attention_levels=[0] * 10**5),
            "channel_mults",
        ),
        (lambda c: c["unet"].update(channel_mults=[1, -2]), "channel_mults[1]"),
        (lambda c: c["unet"].update(attention_levels=[True]), "attention_levels"),
        (lambda c: c["unet"].update(dropout=float("nan")), "dropout"),
        (
            lambda c: c["unet"].update(base_channels=1024, channel_mults=[8, 8]),
            "M parameters, above the limit of 500 M",
        ),
        (lambda c: c["diffusion"].update(beta_schedule="quadratic"), "beta_schedule"),
        (lambda c: c["diffusion"]["simplex"].update(octaves=10**9), "simplex.octaves"),
        (lambda c: c["calibration"].update(threshold=float("nan")), "calibration.threshold"),
        (lambda c: c["preprocessing"].update(lower_percentile=99.5), "lower_percentile"),
        (
            lambda c: c["components"].update(
                vae={"kind": "vae", "config": {"base_channels": 10**6}}
            ),
            "components.vae.base_channels",
        ),
        (
            lambda c: c["components"].update(
                d={"kind": "discriminator", "config": {"num_layers": 10**6}}
            ),
            "components.d.num_layers",
        ),
        (lambda c: c["training"].update(deep=json.loads("[" * 200 + "]" * 200)), "levels deep"),
        (_nested, "nested too deeply"),
    ],
)
def test_config_values_out_of_bounds_are_refused_at_once(
    edit, field, checkpoint, scan_file, tmp_path, capsys
):
    """Sizes and counts in config.json are bounded before anything is built (they used to give
    multi-GB allocations, ZeroDivisionError, RecursionError or hangs)."""
    import time

    if edit is _nested:
        edit(checkpoint)
    else:
        data = json.loads((checkpoint / "config.json").read_text())
        edit(data)
        (checkpoint / "config.json").write_text(json.dumps(data))
    start = time.monotonic()
    message = _restore_with(checkpoint, scan_file, tmp_path, capsys)
    assert time.monotonic() - start < 10
    assert field in message and "config.json" in message, message


def _break_models(models, checkpoint):
    """A user models folder with one good model and a broken folder of each kind."""
    shutil.copytree(checkpoint, models / "good")
    for name in ("bad-json", "no-weights", "no-config", "bad-groups", "deep", "huge"):
        shutil.copytree(checkpoint, models / name)
    (models / "bad-json" / "config.json").write_text("{")
    (models / "no-weights" / "model.safetensors").unlink()
    (models / "no-config" / "config.json").unlink()
    config = json.loads((checkpoint / "config.json").read_text())
    config["unet"]["groups"] = 0
    (models / "bad-groups" / "config.json").write_text(json.dumps(config))
    _nested(models / "deep")
    config["unet"].update(groups=4, num_res_blocks=10**6)
    (models / "huge" / "config.json").write_text(json.dumps(config))


def test_broken_user_models_are_listed_as_broken_and_skipped(
    tmp_path, monkeypatch, checkpoint, scan_file, capsys
):
    """Invalid configs, missing files and nesting in the user models folder break neither
    ``napari-uad models`` nor name look-ups (groups 0 and nesting used to give tracebacks)."""
    from napari_uad.models.registry import list_models

    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(models))
    _break_models(models, checkpoint)
    names = [info.name for info in list_models()]
    assert "good" in names and not {"bad-json", "no-weights", "deep", "huge"} & set(names)
    broken = {info.name: info.error for info in list_models(include_broken=True) if info.error}
    assert set(broken) == {"bad-json", "no-weights", "no-config", "bad-groups", "deep", "huge"}
    assert "model.safetensors is missing" in broken["no-weights"]
    assert "unet.groups" in broken["bad-groups"] and "nested" in broken["deep"]
    assert all("\n" not in error for error in broken.values())
    assert main(["models"]) == 0
    assert "good" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="no model named 'unknown'.*good"):
        resolve_model("unknown")
    message = _restore_with("unknown", scan_file, tmp_path, capsys)
    assert "no model named 'unknown'" in message
    assert "unet.groups" in _restore_with("bad-groups", scan_file, tmp_path, capsys)


def test_a_broken_user_model_hides_the_shipped_one_of_its_name(tmp_path, monkeypatch, checkpoint):
    """Like resolve_model: a broken user copy of a shipped model is what a name finds."""
    from napari_uad.models.registry import list_models

    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(models))
    shutil.copytree(checkpoint, models / "anoddpm-gaussian")
    (models / "anoddpm-gaussian" / "config.json").write_text("{")
    assert "anoddpm-gaussian" not in [info.name for info in list_models()]
    assert resolve_model("anoddpm-gaussian") == models / "anoddpm-gaussian"


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_saved_weights_and_training_state_honour_the_umask(umask, tmp_path):
    """safetensors writes 0600 files; models and training states follow the umask, as
    config.json does, so a shared model can be read by colleagues."""
    import os

    from napari_uad.training.state import STATE_NAME, save_state

    config = tiny_config(name="shared")
    previous = os.umask(umask)
    try:
        folder = save_checkpoint(tmp_path / "shared", UNet(config.unet), config)
        save_state(folder / STATE_NAME, {"x": torch.zeros(3)}, {"step": 1})
    finally:
        os.umask(previous)
    for name in ("config.json", "model.safetensors", STATE_NAME):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask, name

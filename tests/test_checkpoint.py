import json
import pickle

import pytest
import torch

from napari_uad.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_uad.models.config import ModelConfig
from napari_uad.models.registry import list_models, resolve_model
from napari_uad.models.unet import UNet, UNetConfig

from .conftest import tiny_config


def _saved(tmp_path, **kwargs):
    config = tiny_config()
    torch.manual_seed(0)
    model = UNet(config.unet)
    folder = save_checkpoint(tmp_path / "m", model, config, **kwargs)
    return folder, model, config


def test_round_trip_gives_identical_outputs(tmp_path):
    folder, model, config = _saved(tmp_path)
    loaded, loaded_config = load_checkpoint(folder)
    assert loaded_config == config
    x = torch.randn(2, 1, 32, 32)
    t = torch.tensor([3, 500])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model.eval()(x, t))
    assert not list(folder.glob(".*"))  # no temporary files left


def test_half_storage_loads_as_float32(tmp_path):
    folder, model, _ = _saved(tmp_path, half=True)
    loaded, _ = load_checkpoint(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(x, torch.tensor([10])), model.eval()(x, torch.tensor([10])), atol=1e-2, rtol=1e-2
        )


def test_unet_config_json_round_trip():
    config = ModelConfig(name="x", unet=UNetConfig(base_channels=16, channel_mults=(1, 2, 4, 8)))
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weights": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_corrupt_weights_are_rejected(tmp_path):
    folder, _, _ = _saved(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(folder)


def test_config_that_does_not_match_weights_is_rejected(tmp_path):
    folder, _, config = _saved(tmp_path)
    data = json.loads((folder / "config.json").read_text())
    data["unet"]["base_channels"] = 16
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(surprise=1), "unknown keys"),
        (lambda d: d.pop("name"), "name"),
        (lambda d: d.update(grid=33), "multiple"),
        (lambda d: d["unet"].update(layers=3), "unknown UNet"),
        (lambda d: d.update(format_version=99), "format_version"),
    ],
)
def test_bad_configs_are_rejected(tmp_path, edit, message):
    folder, _, _ = _saved(tmp_path)
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_not_json_config(tmp_path):
    folder, _, _ = _saved(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(folder)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "nothing")


def test_registry_finds_user_models_and_blocks_traversal(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(tmp_path / "models"))
    config = tiny_config(name="mine")
    save_checkpoint(tmp_path / "models" / "mine", UNet(config.unet), config)
    assert resolve_model("mine") == tmp_path / "models" / "mine"
    assert "mine" in [m.name for m in list_models()]
    assert [m.name for m in list_models(method="madad")] == ["madad"]  # the shipped one
    for bad in ("..", ".hidden", "a b", "x" * 200):
        with pytest.raises(CheckpointError):
            resolve_model(bad)
    with pytest.raises(CheckpointError, match="no model named"):
        resolve_model("absent")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model(str(tmp_path / "models" / ".." / "elsewhere"))

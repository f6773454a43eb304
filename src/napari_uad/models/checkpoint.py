"""Checkpoint folders: ``config.json`` + ``model.safetensors`` (weights only, never pickle)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..io.atomic import _umask, atomic_write, atomic_write_text
from .config import ModelConfig
from .discriminator import DiscriminatorConfig, PatchDiscriminator
from .unet import UNet
from .vae import VAE, VAEConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
#: Largest ``config.json`` read (the shipped ones are about 3 kB).
MAX_CONFIG_BYTES = 16 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why in one line."""


_COMPONENT_KINDS = {
    "vae": (VAE, VAEConfig),
    "discriminator": (PatchDiscriminator, DiscriminatorConfig),
}


def save_checkpoint(
    folder,
    model: UNet,
    config: ModelConfig,
    *,
    half: bool = False,
    components: dict[str, nn.Module] | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and components) into ``folder`` atomically.

    Parameters
    ----------
    folder : path
        Created if needed; existing files of the same names are replaced.
    model : UNet
    config : ModelConfig
        Its ``components`` must describe every entry of ``components``.
    half : bool
        Store the weights as float16 (half the size; loaded back as float32).
    components : dict of str to nn.Module, optional
        Further networks, each saved as ``<name>.safetensors``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (components or {}).items():
        if name not in config.components or not _NAME.match(name):
            raise ValueError(f"component {name!r} is not described in config.components")
        _write_weights(folder / f"{name}.safetensors", module, half=half)
    _write_weights(folder / WEIGHTS_NAME, model, half=half)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    return folder


def save_tensors(folder, tensors: dict[str, torch.Tensor], config: ModelConfig) -> Path:
    """Write ``config.json`` and a ``model.safetensors`` of plain named tensors (no network),
    atomically: the form of models whose parameters are tables, such as an ensemble's.

    Parameters
    ----------
    folder : path
        Created if needed; existing files of the same names are replaced.
    tensors : dict of str to tensor
    config : ModelConfig
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    atomic_write(folder / WEIGHTS_NAME, lambda temp: _write_safetensors(temp, plain))
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    return folder


def _write_weights(path: Path, module: nn.Module, *, half: bool) -> None:
    tensors = {
        key: (value.half() if half and value.is_floating_point() else value)
        .detach()
        .cpu()
        .contiguous()
        for key, value in module.state_dict().items()
    }
    atomic_write(path, lambda temp: _write_safetensors(temp, tensors))


def _write_safetensors(path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """``safetensors.torch.save_file``, leaving the file readable as the umask allows.

    safetensors creates its files with mode 0600; this gives them ``0666 & ~umask`` (0644
    under the usual umask 022), like every other file written, so a shared model folder can be
    read by others.

    Parameters
    ----------
    path : path
    tensors : dict of str to tensor
        Contiguous CPU tensors.
    metadata : dict of str to str, optional
    """
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def load_config(folder) -> ModelConfig:
    """Read and validate a checkpoint's ``config.json``.

    Raises
    ------
    CheckpointError
        One line, when the file cannot be read, is not JSON, or holds a value of the wrong
        type or out of range (see :meth:`ModelConfig.from_dict`).
    """
    folder = _checkpoint_folder(folder)
    path = folder / CONFIG_NAME
    try:
        size = path.stat().st_size
        if size <= MAX_CONFIG_BYTES:
            data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    except RecursionError:
        raise CheckpointError(
            f"cannot read {path}: lists or objects nested too deeply; replace the file"
        ) from None
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{path} is {size / 2**20:,.0f} MiB, above the {MAX_CONFIG_BYTES // 2**20} MiB a "
            "model config may have; replace the file"
        )
    try:
        return ModelConfig.from_dict(data)
    except ValueError as error:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {error}") from None
    except (TypeError, AttributeError, KeyError) as error:  # a value of the wrong type
        raise CheckpointError(
            f"{folder / CONFIG_NAME} is malformed ({type(error).__name__}: {error})"
        ) from None


def load_checkpoint(folder, *, device="cpu") -> tuple[UNet, ModelConfig]:
    """Load a model from a checkpoint folder, checking the weights against the config.

    Returns
    -------
    model : UNet in eval mode, float32, on ``device``
    config : ModelConfig
    """
    folder = _checkpoint_folder(folder)
    config = load_config(folder)
    model = UNet(config.unet)
    _load_weights(model, folder / WEIGHTS_NAME, folder)
    return model.eval().to(device), config


def load_component(folder, name: str, *, config: ModelConfig | None = None, device="cpu"):
    """Load a further network (``config.components[name]``) saved beside a model.

    Returns
    -------
    nn.Module in eval mode, float32, on ``device``
    """
    folder = _checkpoint_folder(folder)
    config = config or load_config(folder)
    entry = config.components.get(name)
    if not isinstance(entry, dict) or entry.get("kind") not in _COMPONENT_KINDS:
        raise CheckpointError(f"{folder / CONFIG_NAME} describes no component {name!r}")
    build, config_class = _COMPONENT_KINDS[entry["kind"]]
    try:
        module = build(config_class.from_dict(entry.get("config", {}), where=f"components.{name}"))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {error}") from None
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{folder}: {path.name} is missing")
    _load_weights(module, path, folder)
    return module.eval().to(device)


def weights_sha256(folder) -> str:
    """SHA-256 hex digest of a model folder's ``model.safetensors`` (provenance, refit checks)."""
    return hashlib.sha256((Path(folder) / WEIGHTS_NAME).read_bytes()).hexdigest()


def read_tensors(path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a one-line ``CheckpointError`` when it is unreadable."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a valid safetensors file: {error}") from None


def _load_weights(module: nn.Module, path: Path, folder: Path) -> None:
    tensors = read_tensors(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not match {folder / CONFIG_NAME} "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"weights in {path} do not match {folder / CONFIG_NAME}: {key} has shape "
                f"{tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"weights in {path} contain NaN or Inf ({key})")
    module.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    )


def _checkpoint_folder(folder) -> Path:
    folder = Path(folder)
    if folder.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{folder.name}: pickle checkpoints are not loaded (they can run code); "
            "use a folder with config.json and model.safetensors"
        )
    if folder.is_file():
        if folder.name in (CONFIG_NAME, WEIGHTS_NAME):
            folder = folder.parent
        else:
            raise CheckpointError(
                f"{folder}: a model is a folder with config.json and model.safetensors"
            )
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in _PICKLE_SUFFIXES)
        if pickles and not (folder / WEIGHTS_NAME).is_file():
            raise CheckpointError(
                f"{folder}: only pickle weights ({pickles[0]}) found, and pickle files are not "
                "loaded (they can run code); convert them to model.safetensors"
            )
        raise CheckpointError(f"{folder}: no config.json and model.safetensors found there")
    return folder

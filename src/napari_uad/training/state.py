"""Resumable training state in one safetensors file (tensors) with JSON metadata (the rest).

No pickle: optimiser states are flattened into named tensors plus JSON-able scalars, and the
random generator states are stored as uint8 tensors. The file is written to a temporary name
and renamed into place, so a run killed mid-write leaves the previous state intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..io.atomic import _umask, atomic_write
from ..models.checkpoint import CheckpointError

STATE_NAME = "training_state.safetensors"
STATE_VERSION = 1


def flatten_optimiser(name: str, optimiser: torch.optim.Optimizer, tensors: dict) -> dict:
    """Put an optimiser's tensors into ``tensors``; return its JSON-able remainder."""
    state = optimiser.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimiser(
    name: str, optimiser: torch.optim.Optimizer, tensors: dict, stored: dict
) -> None:
    """Inverse of :func:`flatten_optimiser`."""
    per_param: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split(".", 1)
            per_param.setdefault(int(index), {})[field] = value
    for index, entry in stored.get("scalars", {}).items():
        per_param.setdefault(int(index), {}).update(entry)
    optimiser.load_state_dict({"state": per_param, "param_groups": stored["param_groups"]})


def save_state(path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write tensors and JSON metadata to ``path`` atomically."""
    payload = {"napari_uad_state": json.dumps({"version": STATE_VERSION, **metadata})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def write(temp):
        save_file(tensors, temp, metadata=payload)
        os.chmod(temp, 0o666 & ~_umask())  # safetensors creates 0600 files

    return atomic_write(Path(path), write)


def load_state(path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_state`.

    Raises
    ------
    CheckpointError
        When the file is missing, corrupt or from another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state to resume at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {})["napari_uad_state"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} is not a valid training state: {error}") from None
    if metadata.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"{path}: training state version {metadata.get('version')} is not supported"
        )
    return tensors, metadata


def generator_state(generator: torch.Generator) -> torch.Tensor:
    return generator.get_state().clone()


def module_tensors(prefix: str, module: torch.nn.Module, tensors: dict) -> None:
    for key, value in module.state_dict().items():
        tensors[f"{prefix}.{key}"] = value


def load_module_tensors(prefix: str, module: torch.nn.Module, tensors: dict) -> None:
    start = prefix + "."
    own = {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}
    try:
        module.load_state_dict(own)
    except RuntimeError as error:
        raise CheckpointError(
            f"training state does not match the network {prefix!r}: {str(error).splitlines()[0]}"
        ) from None

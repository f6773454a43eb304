"""Find models by name (user models folder, then the package's shipped weights) or by path."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import _PICKLE_SUFFIXES, CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_config

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PACKAGE_MODELS = Path(__file__).resolve().parent.parent / "weights"


def user_models_dir() -> Path:
    """The user's models folder: ``$NAPARI_UAD_MODELS``, else ``~/.local/share/napari-uad/models``
    (``$XDG_DATA_HOME`` respected)."""
    if os.environ.get("NAPARI_UAD_MODELS"):
        return Path(os.environ["NAPARI_UAD_MODELS"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "napari-uad" / "models"


def model_search_path() -> list[Path]:
    """Folders searched for models by name, first match wins."""
    return [user_models_dir(), PACKAGE_MODELS]


@dataclass(frozen=True)
class ModelInfo:
    """A model found on disk."""

    name: str
    method: str
    path: Path
    source: str
    grid: int
    noise: str
    size_mb: float


def resolve_model(name_or_path) -> Path:
    """The checkpoint folder for a model name or path.

    A value containing a path separator or pointing to an existing folder is a path; anything
    else is a name looked up in :func:`model_search_path`. Names cannot leave those folders.

    Raises
    ------
    CheckpointError
        When nothing is found, with the names that exist.
    """
    value = str(name_or_path)
    is_path = os.sep in value or "/" in value
    candidate = Path(value).expanduser() if is_path else Path(value)
    if candidate.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{candidate.name}: pickle checkpoints are not loaded (they can run code); "
            "use a folder with config.json and model.safetensors"
        )
    if is_path or candidate.is_dir():
        if not candidate.exists():
            raise CheckpointError(f"model path {candidate} does not exist")
        if candidate.is_dir() and not (candidate / CONFIG_NAME).is_file():
            raise CheckpointError(f"{candidate}: no config.json and model.safetensors found there")
        return candidate
    if not _NAME.match(value):
        raise CheckpointError(f"invalid model name {value!r}: use letters, digits, '.', '_', '-'")
    for folder in model_search_path():
        path = folder / value
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            return path
    names = ", ".join(info.name for info in list_models()) or "none installed"
    raise CheckpointError(f"no model named {value!r} (available: {names})")


def model_output_folder(name_or_path) -> Path:
    """Where a new model is saved (``napari-uad train --out``, the Train widget).

    A bare name goes into :func:`user_models_dir`, where :func:`resolve_model` finds it; a value
    with a path separator, or starting with ``.``, is that folder.

    Raises
    ------
    ValueError
        For an empty value or a name that is not a valid model name.
    """
    value = str(name_or_path).strip()
    if not value:
        raise ValueError("give the model an output name")
    if "/" in value or "\\" in value or os.sep in value or value.startswith("."):
        return Path(value).expanduser()
    if not _NAME.match(value):
        raise ValueError(f"invalid model name {value!r}: use letters, digits, '.', '_', '-'")
    return user_models_dir() / value


def list_models(method: str | None = None) -> list[ModelInfo]:
    """Installed models (user folder first), optionally only those of one method."""
    found: dict[str, ModelInfo] = {}
    for folder, source in zip(model_search_path(), ("user", "package"), strict=True):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name in found or not (path / CONFIG_NAME).is_file():
                continue
            try:
                config = load_config(path)
            except CheckpointError:
                continue
            if method is not None and config.method != method:
                continue
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
            found[path.name] = ModelInfo(
                name=path.name,
                method=config.method,
                path=path,
                source=source,
                grid=config.grid,
                noise=config.diffusion.noise,
                size_mb=round(size, 2),
            )
    return list(found.values())


def default_model_name(method: str, *, noise: str | None = None) -> str:
    """Name of the shipped model for a method (and noise type, for the DDPM-based methods).

    Without a noise type ``anoddpm`` uses the Gaussian model, the better of the two shipped
    ones on the benchmark (docs/benchmarks.md); ``autoddpm`` and ``thor`` run on the same
    DDPMs.
    """
    if method == "anoddpm":
        return f"anoddpm-{noise or 'gaussian'}"
    from ..methods import get_method_class

    try:
        shipped = get_method_class(method).default_model
    except ValueError:
        shipped = None
    if shipped == "anoddpm-gaussian" and noise == "simplex":
        return "anoddpm-simplex"
    return shipped or method

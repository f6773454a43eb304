"""Find models by name (user models folder, then the package's shipped weights) or by path."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """A model found on disk.

    ``error`` is None for a usable model; for a broken folder (listed only with
    ``list_models(include_broken=True)``) it says what is wrong, in one line, and ``method``
    and ``noise`` are empty, ``grid`` is 0.
    """

    name: str
    method: str
    path: Path
    source: str
    grid: int
    noise: str
    size_mb: float
    error: str | None = None
    #: Where the model came from when it was derived from another (``training["origin"]``,
    #: e.g. "site calibration of disyre (...)"), else "".
    origin: str = ""
    #: The :class:`~napari_uad.models.config.ModelConfig` read when the model was listed
    #: (None for a broken folder); :func:`model_config` reads it from disk when absent.
    config: Any = field(default=None, compare=False, repr=False)


def model_config(info: ModelInfo):
    """A listed model's config: the one read by :func:`list_models`, else read from disk."""
    return info.config if info.config is not None else load_config(info.path)


def resolve_model(name_or_path) -> Path:
    """The checkpoint folder for a model name or path.

    A value containing a path separator (``./my-model``, ``~/models/x``), or ``.`` or ``..``, is
    a path; anything
    else is a name looked up in :func:`model_search_path` only, so a folder in the working
    directory that happens to be named like a model (an output folder ``disyre/``) is never
    taken for it. Names cannot leave those folders.

    Raises
    ------
    CheckpointError
        When nothing is found, with the names that exist.
    """
    value = str(name_or_path)
    is_path = os.sep in value or "/" in value or value in (".", "..")
    candidate = Path(value).expanduser() if is_path else Path(value)
    if candidate.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{candidate.name}: pickle checkpoints are not loaded (they can run code); "
            "use a folder with config.json and model.safetensors"
        )
    if is_path:
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
    here = ""
    if (Path(value) / CONFIG_NAME).is_file():
        here = f"; for the model folder {value!r} here, give it as a path: ./{value}"
    raise CheckpointError(f"no model named {value!r} (available: {names}){here}")


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


def list_models(method: str | None = None, *, include_broken: bool = False) -> list[ModelInfo]:
    """Installed models (user folder first), optionally only those of one method.

    A folder that holds ``config.json`` or ``model.safetensors`` but cannot be used (a config
    that is not valid JSON or out of range, missing weights, unreadable files) never stops the
    listing: it is skipped, or listed with its ``error`` when ``include_broken`` is True. A
    broken folder with both files hides a model of the same name further down the search path,
    as it does for :func:`resolve_model`.

    Parameters
    ----------
    method : str, optional
        Only models of this method family (broken ones are listed whatever their method).
    include_broken : bool
        Also list the broken folders, with ``error`` set.

    Returns
    -------
    list of ModelInfo
    """
    taken: set[str] = set()  # names resolve_model finds earlier in the search path
    good: list[ModelInfo] = []
    broken: list[ModelInfo] = []
    for folder, source in zip(model_search_path(), ("user", "package"), strict=True):
        try:
            paths = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError:
            continue
        for path in paths:
            if path.name in taken or path.name.startswith(".") or not _is_model_folder(path):
                continue
            try:
                info = _model_info(path, source)
            except Exception as error:  # noqa: BLE001 - one bad folder must not hide the rest
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                broken.append(
                    ModelInfo(
                        name=path.name,
                        method="",
                        path=path,
                        source=source,
                        grid=0,
                        noise="",
                        size_mb=0.0,
                        error=message or type(error).__name__,
                    )
                )
                if _has_both_files(path):
                    taken.add(path.name)
                continue
            taken.add(path.name)
            if method is None or info.method == method:
                good.append(info)
    return good + broken if include_broken else good


def _is_model_folder(path: Path) -> bool:
    try:
        return path.is_dir() and ((path / CONFIG_NAME).exists() or (path / WEIGHTS_NAME).exists())
    except OSError:
        return False


def _has_both_files(path: Path) -> bool:
    try:
        return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()
    except OSError:
        return False


def _model_info(path: Path, source: str) -> ModelInfo:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
    config = load_config(path)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
    return ModelInfo(
        name=path.name,
        method=config.method,
        path=path,
        source=source,
        grid=config.grid,
        noise=config.diffusion.noise,
        size_mb=round(size, 2),
        origin=str((config.training or {}).get("origin") or ""),
        config=config,
    )

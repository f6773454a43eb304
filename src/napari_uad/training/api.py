"""Start, fine-tune or resume a training run: what ``napari-uad train`` and the Train widget call.

>>> from napari_uad.training.api import create_trainer
>>> trainer = create_trainer("healthy_scans/", method="ddpm", out="my-model", steps=2000)
>>> result = trainer.run(progress=print)   # doctest: +SKIP

or, for a GUI thread worker, iterate ``trainer.iter_run(should_stop)``: it yields a
:class:`~napari_uad.training.loop.TrainUpdate` per step (loss, ETA, preview images).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..io import InputError
from ..models.checkpoint import CheckpointError, load_checkpoint, load_component
from ..models.registry import resolve_model
from . import TRAINER_NAMES
from .dataset import HealthySlices, load_healthy_folder
from .loop import Trainer, TrainSettings, resume_state
from .state import STATE_NAME

__all__ = ["TRAINER_NAMES", "create_trainer", "get_trainer_class"]


def get_trainer_class(name: str) -> type[Trainer]:
    """The trainer of a model family (``ddpm``, ``addm``, ``disyre``, ``madad``)."""
    if name == "ddpm":
        from .ddpm import DDPMTrainer

        return DDPMTrainer
    if name == "addm":
        from .addm import ADDMTrainer

        return ADDMTrainer
    if name == "disyre":
        from .disyre import DISYRETrainer

        return DISYRETrainer
    if name == "madad":
        from .madad import MADADTrainer

        return MADADTrainer
    raise ValueError(f"unknown trainer {name!r}: use one of {', '.join(TRAINER_NAMES)}")


def create_trainer(
    data,
    *,
    method: str | None = "ddpm",
    out,
    steps: int | None = None,
    noise: str | None = None,
    init=None,
    resume: bool = False,
    overwrite: bool = False,
    grid: int = 128,
    base_channels: int = 16,
    device: str = "auto",
    options: dict[str, Any] | None = None,
    cache_dir=None,
    **settings,
) -> Trainer:
    """A ready trainer for a new, fine-tuning or resumed run.

    Parameters
    ----------
    data : path or HealthySlices
        Folder of healthy scans (see :mod:`napari_uad.training.dataset`), read on the grid of
        the model being trained (new, fine-tuned or resumed), or prepared slices.
    method : {'ddpm', 'addm', 'disyre', 'madad'}, optional
        Model family; None when resuming takes the stored one.
    out : path
        Model folder to write (its name is the model's name).
    steps : int, optional
        Total steps; when resuming, a larger value extends the run.
    noise : {'gaussian', 'simplex'}, optional
        DDPM noise type (``ddpm`` only; default Gaussian).
    init : str or path, optional
        Model name or folder to fine-tune from (architecture and weights are taken from it).
    resume : bool
        Continue the run stored in ``out`` (bit-for-bit on CPU).
    overwrite : bool
        Start afresh even if ``out`` holds a run.
    grid, base_channels : int
        Model grid and UNet width for a new model.
    device : str
    options : dict, optional
        Family-specific recipe options (e.g. ``max_timestep``, ``vae_steps``, ``patch_size``).
    cache_dir : path, optional
        Cache of the prepared slices when ``data`` is a folder.
    **settings
        :class:`~napari_uad.training.loop.TrainSettings` fields (batch_size, learning_rate, ...).

    Raises
    ------
    InputError, CheckpointError, ValueError
        With a one-line message for anything unusable.
    """
    out = Path(out)
    state_path = out / STATE_NAME
    if resume:
        ignored = sorted(set(settings) | ({"options"} if options else set()))
        if ignored:
            import warnings

            warnings.warn(
                f"resuming with the run's stored settings; ignoring {', '.join(ignored)}",
                stacklevel=2,
            )
        return _resume(data, out, method=method, steps=steps, device=device, cache_dir=cache_dir)
    if state_path.is_file() and not overwrite:
        raise InputError(
            f"{out} already holds a training run: resume it (--resume) or start afresh "
            "(--overwrite)"
        )
    if method not in TRAINER_NAMES:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(TRAINER_NAMES)}")
    if noise is not None and method != "ddpm" and noise != "gaussian":
        raise ValueError(f"--noise {noise} applies to the ddpm trainer only")
    if steps is not None:
        settings["steps"] = steps
    train_settings = TrainSettings(**settings)  # bad settings fail before any file is read
    trainer_class = get_trainer_class(method)
    networks = None
    if init is not None:
        config, networks = _initial_networks(init, trainer_class)
        config.name = out.name
        config.calibration = {}
        config.training = {"initialised_from": str(init), **_card_of(config.training)}
        grid = config.grid
    else:
        kwargs = {"grid": grid, "base_channels": base_channels}
        if noise is not None:
            kwargs["noise"] = noise
        config = trainer_class.default_config(out.name, **kwargs)
    data = _load_data(data, grid, cache_dir)
    return trainer_class(
        config,
        data,
        train_settings,
        out=out,
        device=device,
        init=networks,
        **(options or {}),
    )


def _resume(data, out: Path, *, method, steps, device, cache_dir) -> Trainer:
    from ..models.config import ModelConfig

    tensors, metadata = resume_state(out)
    family = metadata["family"]
    if method is not None and method != family:
        raise InputError(f"{out} holds a {family} run, not {method}")
    config = ModelConfig.from_dict(metadata["config"])
    settings = dict(metadata["settings"])
    if steps is not None:
        if steps < metadata["step"]:
            raise InputError(f"the run in {out} is already at step {metadata['step']} > {steps}")
        settings["steps"] = steps
    data = _load_data(data, config.grid, cache_dir)
    if len(data) != metadata["data"].get("slices", len(data)):
        import warnings

        warnings.warn(
            f"the data changed since the run started ({metadata['data'].get('slices')} slices, "
            f"now {len(data)}): resuming, but not bit-for-bit",
            stacklevel=2,
        )
    trainer = get_trainer_class(family)(
        config,
        data,
        TrainSettings(**settings),
        out=out,
        device=device,
        **metadata["options"],
    )
    trainer.load_state_tensors(tensors, metadata)
    return trainer


def _load_data(data, grid: int, cache_dir=None) -> HealthySlices:
    if isinstance(data, HealthySlices):
        if data.grid != grid:
            raise InputError(f"the slices are on a {data.grid} grid, the model uses {grid}")
        return data
    return load_healthy_folder(data, grid=grid, cache_dir=cache_dir)


def _initial_networks(init, trainer_class):
    folder = resolve_model(init)
    model, config = load_checkpoint(folder)
    if config.method not in (trainer_class.method, *trainer_class.INIT_FROM):
        allowed = " or ".join((trainer_class.method, *trainer_class.INIT_FROM))
        raise CheckpointError(
            f"model {init} is {_a(config.method)} model; a {trainer_class.family} run needs "
            f"{_a(allowed)} model to start from"
        )
    if config.method != trainer_class.method:
        # Another family's network (an ADDM generator starting from a DDPM): it takes this
        # family's method and defaults; the diffusion settings come with the weights.
        fresh = trainer_class.default_config(config.name, grid=config.grid)
        config.method = trainer_class.method
        config.defaults = fresh.defaults
    networks = {"model": model}
    for name in config.components:
        networks[name] = load_component(folder, name, config=config)
    return config, networks


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _card_of(training: dict) -> dict:
    keep = ("trainer", "steps", "seconds", "data")
    return {f"previous_{k}": training[k] for k in keep if k in training}


def settings_fields() -> list[str]:
    """Names of the :class:`TrainSettings` fields (for forms and argument parsers)."""
    return [f.name for f in dataclasses.fields(TrainSettings)]

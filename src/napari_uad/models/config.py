"""The model configuration stored as ``config.json`` in every checkpoint folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import bounds
from .discriminator import DiscriminatorConfig
from .unet import UNetConfig
from .vae import VAEConfig

FORMAT_VERSION = 1
BETA_SCHEDULES = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
#: Configuration classes of the further networks a checkpoint may hold, by ``kind``.
COMPONENT_CONFIGS = {"vae": VAEConfig, "discriminator": DiscriminatorConfig}


@dataclass
class DiffusionConfig:
    """How the model was trained to denoise: schedule, prediction target and noise type."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    noise: str = "gaussian"
    simplex: dict = field(
        default_factory=lambda: {"octaves": 6, "persistence": 0.8, "frequency": 4.0}
    )

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "diffusion") -> DiffusionConfig:
        """Build from parsed JSON, checking every value.

        Raises
        ------
        ValueError
            Naming the first setting of the wrong type or out of range (2 to 100,000 training
            timesteps, a known schedule and prediction type, 1 to 16 simplex octaves).
        """
        bounds.known_settings(where, data, cls, "diffusion")
        config = cls(**data)
        bounds.integer(f"{where}.num_train_timesteps", config.num_train_timesteps, 2, 100_000)
        bounds.choice(f"{where}.beta_schedule", config.beta_schedule, BETA_SCHEDULES)
        bounds.choice(f"{where}.prediction_type", config.prediction_type, PREDICTION_TYPES)
        bounds.text(f"{where}.noise", config.noise, max_length=64)
        simplex = bounds.mapping(f"{where}.simplex", config.simplex)
        unknown = set(simplex) - {"octaves", "persistence", "frequency"}
        if unknown:
            raise ValueError(f"unknown {where}.simplex settings: {sorted(unknown)}")
        if "octaves" in simplex:
            bounds.integer(f"{where}.simplex.octaves", simplex["octaves"], 1, 16)
        if "persistence" in simplex:
            bounds.number(f"{where}.simplex.persistence", simplex["persistence"], 0, 4)
        if "frequency" in simplex:
            bounds.number(f"{where}.simplex.frequency", simplex["frequency"], 1e-3, 1024)
        return config


@dataclass
class ModelConfig:
    """Everything needed to rebuild and use a model, as plain JSON-able data.

    Parameters
    ----------
    name : str
        Model name shown to users (``napari-uad models``).
    method : str
        The method family it serves (``anoddpm``, ``addm``, ...).
    grid : int
        Side of the square model grid in pixels.
    unet : UNetConfig
    diffusion : DiffusionConfig
    preprocessing : dict
        Intensity normalisation used in training (percentiles) and, optionally, the slice rule
        ``min_brain_fraction`` (0.35 when absent; see :mod:`napari_uad.checks`).
    defaults : dict
        Default inference parameters for this model (noise level, steps, smoothing).
    calibration : dict
        Healthy thresholds, e.g. ``{"threshold": 0.31, "percentile": 99.5}``.
    training : dict
        Summary of data, steps, time and recipe (the model card).
    components : dict
        Further networks stored beside ``model.safetensors``, by name: ``{"vae": {"kind":
        "vae", "config": {...}}}`` is saved as ``vae.safetensors`` (MAD-AD's autoencoder, ADDM's
        discriminator).
    """

    name: str
    method: str = "anoddpm"
    grid: int = 128
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # min_brain_fraction: the slice rule of training (napari_uad.checks.TRAINED_MIN_BRAIN_FRACTION),
    # which detection applies too; a literal here keeps the config free of scipy imports.
    preprocessing: dict = field(
        default_factory=lambda: {
            "lower_percentile": 1.0,
            "upper_percentile": 99.0,
            "min_brain_fraction": 0.35,
        }
    )
    defaults: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    components: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["unet"] = self.unet.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from parsed JSON, checking every value before anything is built.

        Raises
        ------
        ValueError
            On anything unexpected, naming the setting and the allowed values: unknown keys,
            wrong types, nesting deeper than 32 levels, a grid outside 8..1024 or not a
            multiple of the networks' downsampling, networks above 500 M parameters.
        """
        if not isinstance(data, dict):
            raise ValueError("config.json must hold a JSON object")
        bounds.check_depth(data)
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ValueError(f"config.json format_version {bounds.short(version)} is not supported")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"config.json has unknown keys: {sorted(unknown)}")
        if "name" not in data:
            raise ValueError("config.json lacks the model 'name'")
        bounds.text("name", data["name"])
        if "method" in data:
            bounds.text("method", data["method"], max_length=64)
        if "grid" in data:
            bounds.integer("grid", data["grid"], 8, 1024)
        for key in ("preprocessing", "defaults", "calibration", "training", "components"):
            if key in data:
                bounds.mapping(key, data[key])
        _check_preprocessing(data.get("preprocessing", {}))
        _check_calibration(data.get("calibration", {}))
        data["unet"] = UNetConfig.from_dict(data.get("unet", {}))
        data["diffusion"] = DiffusionConfig.from_dict(data.get("diffusion", {}))
        try:
            config = cls(**data)
        except TypeError as error:
            raise ValueError(f"config.json is malformed: {error}") from None
        if config.grid % config.unet.downsampling_factor:
            raise ValueError(
                f"grid {config.grid} is not a multiple of {config.unet.downsampling_factor}"
            )
        for name, entry in config.components.items():
            _check_component(str(name), entry, config)
        return config


def _check_preprocessing(preprocessing: dict) -> None:
    lower = preprocessing.get("lower_percentile", 1.0)
    upper = preprocessing.get("upper_percentile", 99.0)
    bounds.number("preprocessing.lower_percentile", lower, 0, 100)
    bounds.number("preprocessing.upper_percentile", upper, 0, 100)
    if "min_brain_fraction" in preprocessing:  # the training's slice rule (napari_uad.checks)
        bounds.number("preprocessing.min_brain_fraction", preprocessing["min_brain_fraction"], 0, 1)
    if lower >= upper:
        raise ValueError(
            f"preprocessing.lower_percentile ({lower}) must be below upper_percentile ({upper})"
        )


def _check_calibration(calibration: dict) -> None:
    entries = {"calibration": calibration}
    methods = calibration.get("methods", {})
    bounds.mapping("calibration.methods", methods)
    entries.update({f"calibration.methods.{k}": v for k, v in methods.items()})
    for where, entry in entries.items():
        bounds.mapping(where, entry)
        if entry.get("threshold") is not None:
            bounds.number(f"{where}.threshold", entry["threshold"], -1e30, 1e30)


def _check_component(name: str, entry: Any, config: ModelConfig) -> None:
    where = f"components.{name}"
    bounds.mapping(where, entry)
    kind = bounds.choice(f"{where}.kind", entry.get("kind"), tuple(COMPONENT_CONFIGS))
    component = COMPONENT_CONFIGS[kind].from_dict(entry.get("config", {}), where=where)
    if "scale" in entry:
        bounds.number(f"{where}.scale", entry["scale"], 1e-6, 1e6)
    if kind == "vae":
        # The UNet runs on the autoencoder's latent grid.
        factor = component.downsampling_factor * config.unet.downsampling_factor
        if config.grid % factor:
            raise ValueError(
                f"grid {config.grid} is not a multiple of {factor} ({where} and unet downsampling)"
            )

"""The model configuration stored as ``config.json`` in every checkpoint folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .unet import UNetConfig

FORMAT_VERSION = 1


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
        Intensity normalisation used in training (percentiles).
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
    preprocessing: dict = field(
        default_factory=lambda: {"lower_percentile": 1.0, "upper_percentile": 99.0}
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
        """Build from parsed JSON, raising ``ValueError`` on anything unexpected."""
        if not isinstance(data, dict):
            raise ValueError("config.json must hold a JSON object")
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"config.json format_version {version} is not supported")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"config.json has unknown keys: {sorted(unknown)}")
        if "name" not in data:
            raise ValueError("config.json lacks the model 'name'")
        try:
            data["unet"] = UNetConfig.from_dict(data.get("unet", {}))
            data["diffusion"] = DiffusionConfig(**data.get("diffusion", {}))
            config = cls(**data)
        except TypeError as error:
            raise ValueError(f"config.json is malformed: {error}") from None
        if config.grid % config.unet.downsampling_factor:
            raise ValueError(
                f"grid {config.grid} is not a multiple of {config.unet.downsampling_factor}"
            )
        return config

"""Checks on the values read from a model's ``config.json``, made before anything is built.

A checkpoint folder may come from anywhere, so every value is checked for its type and a sane
range; each check raises ``ValueError`` naming the field and the allowed values (the loader
turns it into a one-line :class:`~napari_uad.models.checkpoint.CheckpointError`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: Most parameters one network of a checkpoint may have (the shipped ones have about 3 M).
MAX_PARAMETERS = 500_000_000
#: Deepest nesting of lists and objects accepted in ``config.json`` (the shipped ones use 4).
MAX_DEPTH = 32


def short(value: Any) -> str:
    """``repr(value)``, cut to 40 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def mapping(where: str, value: Any) -> dict:
    """``value`` itself when it is a dict (a JSON object)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {short(value)}")
    return value


def known_settings(where: str, data: Any, config_class, label: str) -> dict:
    """``data`` when it is a JSON object whose keys are all fields of ``config_class``.

    ``label`` names the settings in the error (``"UNet"``: "unknown UNet settings: [...]").
    """
    mapping(where, data)
    unknown = set(data) - set(config_class.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {label} settings: {sorted(unknown)}")
    return data


def integer(where: str, value: Any, low: int, high: int) -> int:
    """``value`` when it is an integer (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where} must be an integer from {low} to {high}, got {short(value)}")
    return value


def number(where: str, value: Any, low: float, high: float, *, below_high: bool = False) -> float:
    """``value`` as a float when it is a finite number in ``[low, high]`` (``[low, high)``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if below_high else value <= high)
    if not ok:
        interval = f"[{low:g}, {high:g}{')' if below_high else ']'}"
        raise ValueError(f"{where} must be a number in {interval}, got {short(value)}")
    return float(value)


def text(where: str, value: Any, *, max_length: int = 200) -> str:
    """``value`` when it is a non-empty string of at most ``max_length`` characters."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise ValueError(
            f"{where} must be a text of 1 to {max_length} characters, got {short(value)}"
        )
    return value


def choice(where: str, value: Any, options: tuple[str, ...]) -> str:
    """``value`` when it is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{where} must be one of {', '.join(options)}, got {short(value)}")
    return value


def integers(where: str, value: Any, low: int, high: int, *, max_length: int) -> tuple[int, ...]:
    """``value`` as a tuple when it is a list of 1 to ``max_length`` integers in the range."""
    if not isinstance(value, (list, tuple)) or not 0 < len(value) <= max_length:
        raise ValueError(
            f"{where} must be a list of 1 to {max_length} integers, got {short(value)}"
        )
    return tuple(integer(f"{where}[{i}]", v, low, high) for i, v in enumerate(value))


def flags(where: str, value: Any, length: int) -> tuple[bool, ...]:
    """``value`` as a tuple when it is a list of ``length`` booleans."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or not all(isinstance(v, bool) for v in value)
    ):
        raise ValueError(
            f"{where} must be a list of {length} true/false values, got {short(value)}"
        )
    return tuple(value)


def check_depth(data: Any, *, limit: int = MAX_DEPTH) -> None:
    """Raise ``ValueError`` when lists and objects in ``data`` nest deeper than ``limit``."""
    # Iterative, so that the check itself cannot hit the recursion limit.
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > limit:
            raise ValueError(f"config.json nests lists and objects more than {limit} levels deep")
        pending.extend((child, depth + 1) for child in children)


def check_parameters(where: str, build: Callable[[], nn.Module]) -> int:
    """Number of parameters of ``build()``, refused above :data:`MAX_PARAMETERS`.

    The network is built on the ``meta`` device, which allocates no memory for its tensors.
    """
    with torch.device("meta"):
        count = sum(p.numel() for p in build().parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"{where} describes a network of {count / 1e6:,.0f} M parameters, above the limit "
            f"of {MAX_PARAMETERS / 1e6:,.0f} M: make its widths, levels or blocks smaller"
        )
    return count

"""Anomaly detection methods, each behind the :class:`~napari_uad.methods.base.Method` interface.

Heavy imports (torch) happen when a method class is requested, not on import of this package.
"""

from __future__ import annotations

import importlib

#: Method name -> (module of this package, class name); the one list of methods.
_CLASSES = {
    "anoddpm": ("anoddpm", "AnoDDPM"),
    "addm": ("addm", "ADDM"),
    "autoddpm": ("autoddpm", "AutoDDPM"),
    "disyre": ("disyre", "DISYRE"),
    "ensemble": ("ensemble", "Ensemble"),
    "madad": ("madad", "MADAD"),
    "thor": ("thor", "THOR"),
}
METHOD_NAMES = tuple(_CLASSES)


def get_method_class(name: str):
    """The Method subclass registered under ``name``."""
    if name not in _CLASSES:
        raise ValueError(
            f"unknown method {name!r}: available methods are {', '.join(METHOD_NAMES)}"
        )
    module, attribute = _CLASSES[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


def default_model_name(method: str, *, noise: str | None = None) -> str:
    """Name of the shipped model for a method (and noise type, for the DDPM-based methods).

    Without a noise type ``anoddpm`` uses the Gaussian model, the better of the two shipped
    ones on the benchmark (docs/benchmarks.md); ``autoddpm`` and ``thor`` run on the same
    DDPMs.
    """
    if method == "anoddpm":
        return f"anoddpm-{noise or 'gaussian'}"
    try:
        shipped = get_method_class(method).default_model
    except ValueError:
        shipped = None
    if shipped == "anoddpm-gaussian" and noise == "simplex":
        return "anoddpm-simplex"
    return shipped or method

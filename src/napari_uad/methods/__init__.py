"""Anomaly detection methods, each behind the :class:`~napari_uad.methods.base.Method` interface.

Heavy imports (torch) happen when a method class is requested, not on import of this package.
"""

from __future__ import annotations

import importlib

METHOD_NAMES = ("anoddpm", "addm", "autoddpm", "disyre", "madad", "thor")

_CLASSES = {
    "anoddpm": ("anoddpm", "AnoDDPM"),
    "addm": ("addm", "ADDM"),
    "autoddpm": ("autoddpm", "AutoDDPM"),
    "disyre": ("disyre", "DISYRE"),
    "madad": ("madad", "MADAD"),
    "thor": ("thor", "THOR"),
}


def get_method_class(name: str):
    """The Method subclass registered under ``name``."""
    if name not in _CLASSES:
        raise ValueError(
            f"unknown method {name!r}: available methods are {', '.join(METHOD_NAMES)}"
        )
    module, attribute = _CLASSES[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)

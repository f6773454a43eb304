"""Anomaly detection methods, each behind the :class:`~napari_uad.methods.base.Method` interface.

Heavy imports (torch) happen when a method class is requested, not on import of this package.
"""

from __future__ import annotations

METHOD_NAMES = ("anoddpm", "addm")


def get_method_class(name: str):
    """The Method subclass registered under ``name``."""
    if name == "anoddpm":
        from .anoddpm import AnoDDPM

        return AnoDDPM
    if name == "addm":
        from .addm import ADDM

        return ADDM
    raise ValueError(f"unknown method {name!r}: available methods are {', '.join(METHOD_NAMES)}")

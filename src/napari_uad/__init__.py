"""napari-uad: unsupervised anomaly detection in brain MRI with diffusion models.

Importing this package is cheap: torch and napari are imported only by the modules that
need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-uad")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

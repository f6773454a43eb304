"""Helpers shared by the dock widgets: layers <-> scans, result-layer links, notifications.

Layers opened with napari-uad carry ``metadata["napari_uad"]`` (affine, header, source, shape);
results added by the Detect widget also carry ``links`` to their sibling layers (scan,
pseudo-healthy, anomaly map, lesion mask), which the Threshold and Figure widgets follow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._napari import METADATA_KEY
from ..display import from_display
from ..io import Scan

KEY = METADATA_KEY


def geometry(layer) -> dict | None:
    """The napari-uad geometry dictionary of a layer, or None."""
    info = (layer.metadata or {}).get(KEY)
    return info if isinstance(info, dict) and "affine" in info else None


def placement_of(layer, ndim: int = 3) -> dict:
    """The placement (``scale``, ``translate``, ``affine``) of ``layer``, for a new layer on the
    same grid: ``viewer.add_image(data, **placement_of(scan_layer))``.

    Every result layer added on top of a scan layer takes these, so both have the same
    data-to-world map (napari-uad layers sit in scanner mm, see
    :func:`napari_uad.display.placement`). The last ``ndim`` axes are taken; a layer with
    fewer dimensions gets a leading unit axis.
    """
    scale = [float(v) for v in np.asarray(layer.scale)[-ndim:]]
    translate = [float(v) for v in np.asarray(layer.translate)[-ndim:]]
    matrix = np.asarray(layer.affine.affine_matrix, dtype=np.float64)
    if len(scale) < ndim:  # a 2-D layer shown as a 3-D stack of one slice
        missing = ndim - len(scale)
        scale = [1.0] * missing + scale
        translate = [0.0] * missing + translate
        padded = np.eye(ndim + 1)
        padded[missing:, missing:] = matrix
        matrix = padded
    elif matrix.shape[0] > ndim + 1:  # keep the last ndim axes (and the translation column)
        keep = [*range(matrix.shape[0] - 1 - ndim, matrix.shape[0])]
        matrix = matrix[np.ix_(keep, keep)]
    return {"scale": tuple(scale), "translate": tuple(translate), "affine": matrix}


def current_slice(viewer, layer) -> int:
    """The index along the layer's first (axial) axis of the slice the viewer shows.

    Read through the layer's world-to-data map, so it holds whatever the layer's placement
    (scanner mm, oblique) and clipped to the layer's slices.
    """
    position = layer.world_to_data(viewer.dims.point)
    index = int(round(float(position[-3])))
    return int(np.clip(index, 0, layer.data.shape[-3] - 1))


def display_affine(scale) -> np.ndarray:
    """An RAS affine whose :func:`~napari_uad.display.to_display` view has this (Z, Y, X) scale.

    Used for layers that did not come through the napari-uad reader (no file affine).
    """
    scale = [float(s) for s in scale]
    return np.diag([scale[2], scale[1], scale[0], 1.0])


def scan_from_layer(layer) -> Scan:
    """A :class:`~napari_uad.io.Scan` (file grid, affine, header) from an image layer.

    Raises
    ------
    ValueError
        For RGB, multiscale or non-3-D layers, with a message for the user.
    """
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is an RGB image: choose a grayscale MRI volume")
    if getattr(layer, "multiscale", False):
        raise ValueError(f"layer {layer.name!r} is multiscale: open the scan as a single volume")
    data = np.asarray(layer.data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(
            f"layer {layer.name!r} has {data.ndim} dimensions {data.shape}: choose a 3-D volume "
            "(for a 4-D series, open one volume)"
        )
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ValueError(f"layer {layer.name!r} does not hold real numbers ({data.dtype})")
    info = geometry(layer)
    if info is not None and tuple(info["shape"]) == tuple(from_display_shape(data.shape, info)):
        affine = np.asarray(info["affine"], dtype=np.float64)
        header, source = info.get("header"), info.get("source")
    else:
        affine = display_affine(np.asarray(layer.scale)[-3:])
        header = source = None
    volume = from_display(np.array(data, dtype=np.float32), affine)
    return Scan(data=volume, affine=affine, header=header, source=Path(source) if source else None)


def from_display_shape(shape, info) -> tuple[int, ...]:
    """File-grid shape of a display array of ``shape`` with geometry ``info``."""
    return from_display(np.empty(shape, dtype=bool), np.asarray(info["affine"])).shape


def layer_metadata(scan: Scan, **extra) -> dict:
    """``layer.metadata`` for a volume on ``scan``'s grid (what the napari-uad writers need)."""
    return {
        KEY: {
            "affine": scan.affine,
            "header": scan.header,
            "source": str(scan.source) if scan.source else None,
            "shape": scan.shape,
            **extra,
        }
    }


def linked_layer(viewer, layer, role: str):
    """The sibling layer ``role`` ("scan", "healthy", "anomaly", "mask") of a result layer."""
    info = geometry(layer) or {}
    name = (info.get("links") or {}).get(role)
    if name is not None and name in viewer.layers:
        return viewer.layers[name]
    return None


def is_anomaly_layer(layer) -> bool:
    """Whether a layer is an anomaly map added by the Detect widget."""
    info = geometry(layer) or {}
    return info.get("role") == "anomaly"


def show_error(message: str) -> None:
    """A napari error notification (never raises, never blocks)."""
    from napari.utils.notifications import show_error as _show_error

    _show_error(message)


def show_info(message: str) -> None:
    """A napari information notification."""
    from napari.utils.notifications import show_info as _show_info

    _show_info(message)


def show_warnings(notes) -> None:
    """A napari warning notification per note."""
    from napari.utils.notifications import show_warning

    for note in notes:
        show_warning(note)


def layer_info(layer) -> dict:
    """A layer's ``metadata["napari_uad"]`` (empty when it has none)."""
    return (getattr(layer, "metadata", None) or {}).get(KEY) or {}


def error_line(error: BaseException) -> str:
    """One line for the user; errors other than bad input are named by their type."""
    from ..io import InputError

    text = str(error).strip().splitlines()
    if isinstance(error, InputError) and text:
        return text[0]
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def error_text(error: BaseException) -> str:
    """One line for the user: the message, without a traceback."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

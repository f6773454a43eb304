"""Storing a case's result layers (NIfTI on the scan's grid, properties in JSON)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.errors import InputError
from ..io.scan import Scan
from .names import LAYERS_FILE


@dataclass
class StoredLayer:
    """A layer's content as plain data, independent of napari.

    Attributes
    ----------
    name : str
    kind : {'image', 'labels'}
    data : (Z, Y, X) ndarray
        Display array (see :func:`napari_uad.display.to_display`).
    properties : dict
        JSON-compatible display properties (``colormap`` name, ``contrast_limits``, ``opacity``,
        ``blending``, ``visible``, ...), passed back to ``viewer.add_<kind>``.
    metadata : dict
        JSON-compatible part of ``metadata["napari_uad"]`` (role, provenance, threshold, ...).
    """

    name: str
    kind: str
    data: np.ndarray
    properties: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def case_folder(results: str | os.PathLike, case_id: str) -> Path:
    """The folder that holds one case's stored results."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id).strip("._") or "case"
    return Path(results) / safe


def save_case_layers(folder: str | os.PathLike, layers: list[StoredLayer], *, like: Scan) -> Path:
    """Store layers as NIfTI files on the scan's grid plus a ``layers.json`` index.

    Files of layers no longer present are removed; the index is written last and atomically, so
    an interrupted save leaves the previous index readable.

    Parameters
    ----------
    folder : str or path-like
        The case's results folder (see :func:`case_folder`); created if needed.
    layers : list of StoredLayer
        Display arrays with the scan's display shape.
    like : Scan
        The case's scan (grid, affine, header).

    Returns
    -------
    Path
        The index file.
    """
    from ..display import from_display
    from ..io import write_nifti
    from ..io.atomic import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index, used = [], set()
    for layer in layers:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", layer.name).strip("._") or "layer"
        file = f"{base}.nii.gz"
        while file in used:
            base += "_"
            file = f"{base}.nii.gz"
        used.add(file)
        volume = from_display(np.asarray(layer.data), like.affine)
        if layer.kind == "labels":
            dtype = np.uint8 if volume.max(initial=0) < 256 else np.int32
        else:
            dtype = np.float32
        write_nifti(folder / file, volume, like=like, dtype=dtype)
        index.append(
            {
                "file": file,
                "name": layer.name,
                "kind": layer.kind,
                "properties": to_jsonable(layer.properties),
                "metadata": to_jsonable(layer.metadata),
            }
        )
    for old in folder.glob("*.nii.gz"):
        if old.name not in used:
            old.unlink(missing_ok=True)
    return atomic_write_text(folder / LAYERS_FILE, json.dumps(index, indent=2) + "\n")


def load_case_layers(folder: str | os.PathLike, *, like: Scan) -> list[StoredLayer]:
    """Read the layers stored by :func:`save_case_layers` (an empty list when there are none).

    Parameters
    ----------
    folder : str or path-like
    like : Scan
        The case's scan; stored files of another shape are skipped.

    Returns
    -------
    list of StoredLayer
    """
    from ..display import to_display
    from ..io import read_scan

    index_file = Path(folder) / LAYERS_FILE
    if not index_file.exists():
        return []
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"Cannot read the stored results {index_file}: {err}") from err
    layers = []
    for entry in index:
        stored = read_scan(Path(folder) / entry["file"])
        if stored.shape != like.shape:
            continue
        data, _ = to_display(stored.data, like.affine)
        if entry.get("kind") == "labels":
            data = np.rint(data).astype(np.int32 if data.max(initial=0) > 255 else np.uint8)
        layers.append(
            StoredLayer(
                name=entry["name"],
                kind=entry.get("kind", "image"),
                data=np.ascontiguousarray(data),
                properties=dict(entry.get("properties") or {}),
                metadata=dict(entry.get("metadata") or {}),
            )
        )
    return layers


def to_jsonable(value: Any) -> Any:
    """A JSON-compatible copy of ``value``; what cannot be stored is dropped.

    numpy scalars and small arrays (up to 10,000 values) become numbers and lists, dataclasses
    dicts, paths strings; nibabel headers, large arrays and other objects are left out.
    """
    if isinstance(value, (str, bool, int, type(None))):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist()) if value.size <= 10_000 else _DROP
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = to_jsonable(item)
            if item is not _DROP:
                out[str(key)] = item
        return out
    if isinstance(value, (list, tuple)):
        items = [to_jsonable(item) for item in value]
        return [item for item in items if item is not _DROP]
    return _DROP


class _Drop:
    def __repr__(self) -> str:
        return "<dropped>"


_DROP = _Drop()

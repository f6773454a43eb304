"""npe2 contributions: NIfTI reader and writers, sample data.

Layers show volumes with :func:`napari_uad.display.to_display` (axial slices first) placed
with the scan's full affine (:func:`napari_uad.display.placement`): napari's world coordinates
are the scanner's (z, y, x) in mm, and the viewer's camera shows them in the radiological
convention (:func:`napari_uad.display.set_radiological_view`). The file's affine and header
travel in ``layer.metadata`` so writers put results back on the original grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .display import apply_view_choice, from_display, placement, to_display
from .io import InputError, Scan, nifti_stem, read_scan, write_nifti

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: The key of ``layer.metadata`` under which napari-uad keeps what it knows of a layer.
METADATA_KEY = "napari_uad"


def get_reader(path):
    """Return a reader for a NIfTI path (or list of paths), else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(str(p).lower().endswith(NIFTI_SUFFIXES) for p in paths):
        return None
    return read_nifti_layers


def get_dicom_reader(path):
    """Return a reader for a DICOM series folder or ``.dcm`` file, else None.

    The check peeks at a few files (no pydicom needed); reading then needs pydicom and says so
    when it is missing.
    """
    from .io.dicom import looks_like_dicom

    if not isinstance(path, (str, Path)) or not looks_like_dicom(path):
        return None
    return read_dicom_layers


def read_dicom_layers(path) -> list[tuple]:
    """Layer data tuple of one DICOM series (a folder, or one file of the series)."""
    from .cases import scan_stem
    from .io.dicom import read_dicom

    scan = read_dicom(path)
    layers = [scan_layer(scan, name=scan_stem(path), kind="image", role="scan")]
    _radiological_current_viewer()
    return layers


def read_nifti_layers(path) -> list[tuple]:
    """Layer data tuples for one or more NIfTI files (masks become labels layers).

    A file that cannot be read is reported in a napari notification (one line saying why) and
    skipped; when none can be read no layer is added and the viewer carries on.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in paths:
        try:
            layers.append(scan_layer(read_scan(p)))
        except InputError as error:
            _notify_error(str(error))
    if layers:
        _radiological_current_viewer()
    return layers or [(None,)]  # [(None,)]: napari's "read, nothing to add"


def _radiological_current_viewer() -> None:
    """Show the current viewer (if any) in the radiological view, unless the user chose the
    neurological one. Never raises: reading must not fail because of the view."""
    try:
        from napari import current_viewer

        viewer = current_viewer()
    except Exception:  # noqa: BLE001
        return
    if viewer is not None:
        apply_view_choice(viewer)


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def scan_layer(
    scan: Scan, *, name: str | None = None, kind: str | None = None, role: str | None = None
) -> tuple:
    """A napari layer data tuple for a scan, labels if it looks like a mask.

    Parameters
    ----------
    scan : Scan
        Volume on its file grid; shown with :func:`napari_uad.display.to_display`, placed in
        the scanner's world with :func:`napari_uad.display.placement`.
    name : str, optional
        Layer name (default: the file name without extension).
    kind : {'image', 'labels'}, optional
        Layer type; guessed from the values when None (few non-negative integers: labels).
    role : str, optional
        Stored as ``metadata["napari_uad"]["role"]`` (e.g. ``"scan"``, ``"brain_mask"``,
        ``"truth"``) so widgets find layers by what they hold, not by name.

    Returns
    -------
    tuple
        ``(data, kwargs, layer_type)`` for ``viewer.add_<layer_type>(data, **kwargs)``;
        ``kwargs`` holds ``scale`` (voxel sizes in mm) and ``affine`` (the rest of the scan's
        affine), so napari's world coordinates are the scanner's (z, y, x) in mm.
    """
    data, _ = to_display(scan.data, scan.affine)
    values = np.unique(data[:: max(1, data.size // 200_000)])
    is_mask = kind == "labels" or (
        kind is None
        and values.size <= 16
        and np.all(values == np.round(values))
        and values.min() >= 0
    )
    name = name or (nifti_stem(scan.source) if scan.source else "scan")
    meta = {
        "name": name,
        **placement(scan.affine, scan.data.shape),
        "metadata": {
            METADATA_KEY: {
                "affine": scan.affine,
                "header": scan.header,
                "source": str(scan.source) if scan.source else None,
                "shape": scan.shape,
            }
        },
    }
    if role is not None:
        meta["metadata"][METADATA_KEY]["role"] = role
    if is_mask:
        return data.astype(np.uint8), meta, "labels"
    low, high = np.percentile(data[data > 0], [0.5, 99.5]) if (data > 0).any() else (0, 1)
    meta.update(colormap="gray", contrast_limits=(float(low), float(max(high, low + 1e-6))))
    return data, meta, "image"


def _write_layer(path: str, data, meta: dict, dtype) -> list[str]:
    info = (meta.get("metadata") or {}).get(METADATA_KEY)
    if info is None:
        raise ValueError(
            "this layer has no NIfTI geometry (it was not opened with napari-uad); "
            "open the scan with napari-uad first"
        )
    like = Scan(
        data=np.zeros(info["shape"], dtype=np.float32),
        affine=info["affine"],
        header=info.get("header"),
        source=Path(info["source"]) if info.get("source") else None,
    )
    volume = from_display(np.asarray(data), info["affine"])
    return [str(write_nifti(path, volume, like=like, dtype=dtype))]


def write_image(path: str, data, meta: dict) -> list[str]:
    """Save an image layer opened with napari-uad as NIfTI on its original grid."""
    return _write_layer(path, data, meta, np.float32)


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Save a labels layer as a uint8/int16 NIfTI on its original grid."""
    dtype = np.uint8 if np.asarray(data).max(initial=0) < 256 else np.int16
    return _write_layer(path, data, meta, dtype)


#: Ground truth is drawn as a cyan outline, detected lesions filled in magenta: the two never
#: share a colour, and neither is a colour of the hot heatmap.
TRUTH_COLOUR = "#00e5ff"
LESION_COLOUR = "#ff3df5"


def single_colour_style(colour: str) -> dict:
    """``{"colormap": ...}`` drawing every non-zero label of a labels layer in ``colour``
    (empty on a napari without direct label colormaps: its default colours stay)."""
    try:
        from napari.utils.colormaps import DirectLabelColormap

        return {"colormap": DirectLabelColormap(color_dict={None: colour, 0: "transparent"})}
    except (ImportError, TypeError, ValueError):
        return {}


def truth_style() -> dict:
    """Keyword arguments of ``viewer.add_labels`` for a ground-truth mask, drawn in cyan (call
    :func:`outline_labels` on the layer to draw it as an outline)."""
    return {"opacity": 0.9, **single_colour_style(TRUTH_COLOUR)}


def outline_labels(layer, width: int = 1) -> None:
    """Draw a labels layer as outlines of ``width`` pixels, so what lies under it shows."""
    layer.contour = width


def _sample(name: str, label: str) -> list[tuple]:
    from .data.samples import sample_path

    layers = [scan_layer(read_scan(sample_path(name)), name=label)]
    if name == "lesion":
        truth = scan_layer(
            read_scan(sample_path("lesion_truth")), name="lesion truth", kind="labels"
        )
        truth[1].update(truth_style())
        layers.append(truth)
    _radiological_current_viewer()
    return layers


def sample_lesion() -> list[tuple]:
    """T1 slab (MNI152) with synthetic lesions, and its truth mask."""
    return _sample("lesion", "T1 with lesions")


def sample_healthy() -> list[tuple]:
    """Healthy T1 slab (MNI152)."""
    return _sample("healthy", "healthy T1")

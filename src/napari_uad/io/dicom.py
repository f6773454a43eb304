"""Reading a DICOM series (a folder of single-frame slices) into a :class:`Scan`.

Needs the optional ``pydicom`` package (``pip install 'napari-uad[dicom]'``). Only uncompressed
pixel data is read without further packages; compressed transfer syntaxes need the decoders
pydicom names in its error (pylibjpeg, gdcm), and the message says so.

Geometry
--------
DICOM positions are in the patient's LPS frame (x to the patient's left, y posterior, z
superior). For slice ``k`` with ``ImagePositionPatient`` p_k, row direction cosine r (the
direction of increasing column index), column direction cosine c (increasing row index) and
``PixelSpacing`` (dr, dc) (between rows, between columns), the centre of pixel (row j, column i)
lies at ``p_k + i * dc * r + j * dr * c``. The volume is stored as (X, Y, Z) = (column, row,
slice) with slices sorted along the normal r x c, so its LPS affine has the columns
``dc * r``, ``dr * c``, ``(p_last - p_first) / (n - 1)`` and ``p_first``; flipping the signs of
the first two rows gives the RAS affine NIfTI uses.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import InputError
from .limits import check_size
from .scan import Scan

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MAX_FILES = 5000


def _pydicom():
    try:
        import pydicom
    except ImportError as err:
        raise InputError(
            "Reading DICOM needs pydicom: pip install 'napari-uad[dicom]' (or pip install pydicom)"
        ) from err
    return pydicom


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether a file starts like a DICOM Part 10 file (``DICM`` after a 128-byte preamble).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    bool
        False for folders and unreadable files. Needs no pydicom.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def looks_like_dicom(path: str | os.PathLike, *, max_checked: int = 20) -> bool:
    """Whether a path is a DICOM file or a folder holding DICOM files (cheap; no pydicom).

    Parameters
    ----------
    path : str or path-like
        A file, or a folder whose files (and files one level down) are peeked at.
    max_checked : int
        At most this many files are opened.

    Returns
    -------
    bool
    """
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(path)
    if not path.is_dir():
        return False
    checked = 0
    for candidate in _candidate_files(path):
        if candidate.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(candidate):
            return True
        checked += 1
        if checked >= max_checked:
            break
    return False


def _candidate_files(folder: Path):
    """Files of a folder, then of its subfolders (one level), skipping hidden ones and DICOMDIR."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    subfolders = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
            continue
        if entry.is_file():
            yield entry
        elif entry.is_dir():
            subfolders.append(entry)
    for sub in subfolders:
        try:
            children = sorted(sub.iterdir())
        except OSError:
            continue
        for child in children:
            if child.is_file() and not child.name.startswith("."):
                yield child


def read_dicom(path: str | os.PathLike) -> Scan:
    """Read one DICOM series as a volume with its RAS affine.

    Parameters
    ----------
    path : str or path-like
        A folder holding the slices of one series (files directly in it, or one level down),
        or one file of a series: then the other slices of that series are taken from its
        folder, and other series there are ignored.

    Returns
    -------
    Scan
        ``data`` float32 (X, Y, Z) = (column, row, slice), ``RescaleSlope`` and
        ``RescaleIntercept`` applied; ``affine`` maps voxels to RAS+ mm (see the module
        docstring); ``header`` a NIfTI header holding the stored data type, the voxel sizes and
        the series description; ``source`` the folder (or the given file).

    Raises
    ------
    InputError
        pydicom missing; no DICOM image in the folder; several series in it; slices that differ
        in orientation, size or spacing; missing slices (a gap in the positions); duplicate
        positions; a position, orientation or pixel spacing that is not finite (or a spacing
        <= 0); more voxels than :func:`napari_uad.io.limits.max_voxels` allows (checked from
        the headers, before pixel data is read); truncated files; multi-frame or compressed
        files that cannot be decoded.
    """
    pydicom = _pydicom()
    path = Path(path)
    if not path.exists():
        raise InputError(f"Not found: {path}")
    folder, wanted_series = (path.parent, None) if path.is_file() else (path, None)
    if path.is_file():
        wanted_series = _series_uid(_read_header(pydicom, path, strict=True), path)

    headers = []
    for file in _candidate_files(folder):
        if len(headers) >= _MAX_FILES:
            raise InputError(f"{folder} holds more than {_MAX_FILES} DICOM files: give one series")
        if not _maybe_dicom(file):
            continue
        ds = _read_header(pydicom, file, strict=False)
        if ds is None or not hasattr(ds, "Rows"):  # not an image (report, presentation state)
            continue
        headers.append((file, ds))
    if not headers:
        raise InputError(f"No DICOM images in {folder}: choose the folder of one DICOM series")

    by_series: dict[str, list] = defaultdict(list)
    for file, ds in headers:
        by_series[_series_uid(ds, file)].append((file, ds))
    if wanted_series is not None:
        series = by_series.get(wanted_series)
        if not series:
            raise InputError(f"{path.name} is not a DICOM image (no pixel rows): open an image")
    elif len(by_series) > 1:
        names = ", ".join(
            f"{_describe(items[0][1])} ({len(items)} files)" for items in by_series.values()
        )
        raise InputError(
            f"{folder.name} holds {len(by_series)} DICOM series ({names}): open the folder of "
            "one series, or one file of the series you want"
        )
    else:
        (series,) = by_series.values()

    return _assemble(pydicom, series, source=path, name=folder.name)


def _maybe_dicom(file: Path) -> bool:
    """DICOM by its preamble, its suffix, or a name without suffix (``IM0001``, ``1.2.840...``)."""
    suffix = file.suffix.lower()
    return (
        is_dicom_file(file)
        or suffix in DICOM_SUFFIXES
        or not suffix
        or suffix[1:].isdigit()  # UID-style names: 1.2.840.113619.2.5
    )


def _read_header(pydicom, file: Path, *, strict: bool):
    try:
        return pydicom.dcmread(file, stop_before_pixels=True, force=not strict)
    except Exception as err:  # pydicom raises many kinds of errors for non-DICOM files
        if strict:
            raise InputError(f"Cannot read {file.name}: not a DICOM file ({_reason(err)})") from err
        return None


def _series_uid(ds, file: Path) -> str:
    uid = getattr(ds, "SeriesInstanceUID", None)
    return str(uid) if uid else f"(no series UID: {file.parent})"


def _describe(ds) -> str:
    text = str(getattr(ds, "SeriesDescription", "") or "").strip()
    number = getattr(ds, "SeriesNumber", None)
    if number is not None and text:
        return f"series {number} '{text}'"
    if number is not None:
        return f"series {number}"
    return f"'{text}'" if text else "unnamed series"


def _assemble(pydicom, series: list, *, source: Path, name: str) -> Scan:
    first = series[0][1]
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        raise InputError(
            f"{series[0][0].name} is a multi-frame (enhanced) DICOM: convert it to NIfTI first "
            "(e.g. with dcm2niix)"
        )
    for file, ds in series:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if getattr(ds, tag, None) is None:
                raise InputError(
                    f"{file.name} has no {tag}: cannot place the slice in space; convert the "
                    "series with dcm2niix"
                )
    positions = np.array([_numbers(ds, "ImagePositionPatient", 3, file) for file, ds in series])
    orientation = _orientation(first, series[0][0])
    row_cos, col_cos = orientation[:3], orientation[3:]
    normal = np.cross(row_cos, col_cos)
    spacing = _pixel_spacing(first, series[0][0])  # (between rows, between columns)
    rows, cols = int(first.Rows), int(first.Columns)
    if rows < 1 or cols < 1:
        raise InputError(f"{series[0][0].name} has no pixels (Rows {rows}, Columns {cols})")
    for file, ds in series[1:]:
        if not np.allclose(_orientation(ds, file), orientation, atol=1e-4):
            raise InputError(
                f"{name}: slices have different orientations ({file.name}): give one series"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(
                f"{name}: slices have different sizes ({file.name} is {int(ds.Rows)}x"
                f"{int(ds.Columns)}, others {rows}x{cols}): give one series"
            )
        if not np.allclose(_pixel_spacing(ds, file), spacing, rtol=1e-4):
            raise InputError(f"{name}: slices have different pixel spacings ({file.name})")
    # From the headers alone, before any pixel data is read.
    check_size((cols, rows, len(series)), name)

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    series = [series[k] for k in order]
    positions, along = positions[order], along[order]
    n = len(series)
    if n > 1:
        steps = np.diff(along)
        if np.any(steps < 1e-3):
            k = int(np.argmax(steps < 1e-3))
            raise InputError(
                f"{name}: {series[k][0].name} and {series[k + 1][0].name} are at the same "
                "position (several echoes, time points or series?): give one 3-D series"
            )
        step = float(np.median(steps))
        gaps = np.flatnonzero(np.abs(steps - step) > 0.1 * step + 1e-3)
        if gaps.size:
            k = int(gaps[0])
            missing = max(int(round(steps[k] / step)) - 1, 0)
            detail = f"about {missing} slice(s) missing" if missing else "uneven spacing"
            raise InputError(
                f"{name}: {detail} between {series[k][0].name} and {series[k + 1][0].name} "
                f"({steps[k]:.3g} mm apart, the other slices {step:.3g} mm): the series is "
                "incomplete"
            )
        slice_vector = (positions[-1] - positions[0]) / (n - 1)
    else:
        thickness = _number(
            getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", 1.0)
        )
        slice_vector = normal * (thickness if np.isfinite(thickness) and thickness > 0 else 1.0)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * spacing[1]
    affine_lps[:3, 1] = col_cos * spacing[0]
    affine_lps[:3, 2] = slice_vector
    affine_lps[:3, 3] = positions[0]
    affine = _LPS_TO_RAS @ affine_lps

    volume = np.empty((cols, rows, n), dtype=np.float32)
    stored_dtype = None
    for k, (file, _) in enumerate(series):
        pixels, ds = _read_pixels(pydicom, file)
        if pixels.shape != (rows, cols):
            raise InputError(
                f"{file.name}: pixel data has shape {pixels.shape}, expected ({rows}, {cols})"
            )
        stored_dtype = stored_dtype or pixels.dtype
        slope = _number(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = _number(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        if not (np.isfinite(slope) and np.isfinite(intercept)):
            raise InputError(
                f"{file.name} has an invalid RescaleSlope/RescaleIntercept ({_show(slope)}, "
                f"{_show(intercept)}): expected finite numbers; re-export the series"
            )
        volume[:, :, k] = pixels.T.astype(np.float32) * np.float32(slope) + np.float32(intercept)

    return Scan(
        data=volume,
        affine=affine,
        header=_nifti_header(affine, volume.shape, stored_dtype, first),
        source=source,
    )


def _number(value) -> float:
    """A DICOM number as float; NaN when it is not one (e.g. a malformed DS string)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _show(value) -> str:
    """Values as plain text for a message (``nan``, not ``np.float64(nan)``)."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return str(value)
    return ", ".join(str(v) for v in value)


def _numbers(ds, tag: str, count: int, file: Path) -> np.ndarray:
    """``count`` finite numbers from a DICOM field, or a one-line InputError naming it."""
    value = getattr(ds, tag)
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
    numbers = np.array([_number(v) for v in items], dtype=np.float64)
    if numbers.size != count or not np.isfinite(numbers).all():
        raise InputError(
            f"{file.name} has an invalid {tag} ({_show(value)}): expected {count} finite numbers; "
            "the slice cannot be placed in space (re-export the series, or convert it with "
            "dcm2niix)"
        )
    return numbers


def _orientation(ds, file: Path) -> np.ndarray:
    """Row and column direction cosines, checked to be two perpendicular directions."""
    orientation = _numbers(ds, "ImageOrientationPatient", 6, file)
    row, col = orientation[:3], orientation[3:]
    sizes = np.linalg.norm(row), np.linalg.norm(col)
    if min(sizes) < 1e-3 or abs(row @ col) > 1e-2 * sizes[0] * sizes[1]:
        raise InputError(
            f"{file.name} has an invalid ImageOrientationPatient ({_show(orientation)}): the row "
            "and column directions must be perpendicular unit vectors; re-export the series"
        )
    return np.concatenate([row / sizes[0], col / sizes[1]])


def _pixel_spacing(ds, file: Path) -> np.ndarray:
    spacing = _numbers(ds, "PixelSpacing", 2, file)
    if np.any(spacing <= 0):
        raise InputError(
            f"{file.name} has an invalid PixelSpacing ({_show(spacing)}): pixel sizes must be "
            "positive numbers (mm); re-export the series"
        )
    return spacing


def _read_pixels(pydicom, file: Path):
    try:
        ds = pydicom.dcmread(file)
    except Exception as err:  # pydicom raises many kinds of errors for damaged files
        raise InputError(
            f"Cannot read {file.name}: the file is truncated or corrupt ({_reason(err)}); "
            "re-copy or re-export the series"
        ) from err
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as err:  # decoders raise many kinds of errors
        have, need = _pixel_bytes(ds)
        if _compressed(ds) and (need is None or have is None or have >= need):
            raise InputError(
                f"Cannot read the pixels of {file.name} ({_reason(err)}); compressed DICOM needs "
                "pip install pylibjpeg pylibjpeg-libjpeg (or convert with dcm2niix)"
            ) from err
        size = f"{have} bytes of pixel data, {need} expected" if have is not None else _reason(err)
        raise InputError(
            f"Cannot read the pixels of {file.name}: the file is truncated or corrupt ({size}); "
            "re-copy or re-export the series"
        ) from err
    if pixels.ndim != 2:
        raise InputError(
            f"{file.name} holds pixel data of shape {pixels.shape} (colour or multi-frame): give a "
            "greyscale single-frame series"
        )
    return pixels, ds


def _compressed(ds) -> bool:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(getattr(syntax, "is_compressed", False))


def _pixel_bytes(ds) -> tuple[int | None, int | None]:
    """Bytes of pixel data present, and the number uncompressed data needs (None: unknown)."""
    data = getattr(ds, "PixelData", None)
    have = len(data) if data is not None else None
    try:
        need = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(getattr(ds, "SamplesPerPixel", 1) or 1)
            * int(getattr(ds, "NumberOfFrames", 1) or 1)
            * -(-int(ds.BitsAllocated) // 8)
        )
    except (AttributeError, TypeError, ValueError):
        need = None
    return have, need


def _nifti_header(affine, shape, dtype, ds):
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    if dtype is not None:
        try:
            header.set_data_dtype(dtype)
        except nib.spatialimages.HeaderDataError:
            header.set_data_dtype(np.float32)
    header.set_zooms(tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)))
    header.set_xyzt_units("mm")
    header.set_sform(affine, code="scanner")
    header.set_qform(affine, code="scanner")
    description = " ".join(
        str(v).strip()
        for v in (getattr(ds, "Modality", ""), getattr(ds, "SeriesDescription", ""))
        if v
    )
    header["descrip"] = ("DICOM " + description)[:79].encode("ascii", "replace")
    return header


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text and text[0] else type(err).__name__

"""Reading and writing scans: NIfTI volumes and 2-D image files."""

from __future__ import annotations

import errno
import gzip
import logging
import os
import re
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import __version__
from .atomic import atomic_write
from .errors import InputError
from .limits import check_size
from .scan import Scan

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
_LUMINANCE = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    ValueError,
)


# Rows run anterior -> posterior (-y), columns patient right -> left (-x), 1 mm pixels.
IMAGE_AFFINE = np.array(
    [[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in NIFTI_EXTENSIONS + IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return ""


def nifti_stem(path: str | os.PathLike) -> str:
    """Return the file name without its image extension.

    Parameters
    ----------
    path : str or path-like
        E.g. ``"data/sub-01_T1w.nii.gz"``.

    Returns
    -------
    str
        E.g. ``"sub-01_T1w"``; for other extensions the name without its last suffix.
    """
    path = Path(path)
    ext = _extension(path)
    if ext:
        return path.name[: -len(ext)]
    return path.stem


def read_scan(path: str | os.PathLike) -> Scan:
    """Read a NIfTI volume, a DICOM series or a 2-D image file.

    Parameters
    ----------
    path : str or path-like
        ``.nii`` or ``.nii.gz`` (read with nibabel), a folder holding one DICOM series or a
        ``.dcm`` file of one (read with pydicom, see :func:`napari_uad.io.dicom.read_dicom`),
        or ``.png``, ``.tif``, ``.tiff`` (a 2-D image; RGB is converted to luminance).
        Images are taken to show an axial slice in the radiological convention (anterior
        up, patient's right on the left), which ``IMAGE_AFFINE`` encodes, so they reach the
        models the same way NIfTI slices do.

    Returns
    -------
    Scan
        ``data`` is float32 with shape (X, Y, Z) on the file's grid, scaling applied;
        2-D images have shape (H, W, 1). Non-finite voxels are replaced by 0 (with a warning);
        of a 4-D file only the first volume is kept (with a warning).

    Raises
    ------
    InputError
        The file is missing (or a broken link, or a symbolic link loop), has an unsupported
        extension, is corrupt (for ``.nii.gz``: a gzip CRC or length check fails) or is not an
        image; it has more voxels than :func:`napari_uad.io.limits.max_voxels` allows (checked
        from the header, before decoding); or the DICOM folder is not one complete series.

    Warns
    -----
    UserWarning
        Header problems: nibabel's fixes to a damaged header; sform and qform that disagree
        (the sform is used, as nibabel does); a sform with NaN/Inf values (the qform is used);
        no usable affine at all (voxel sizes only).
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        from .dicom import read_dicom

        return read_dicom(path)
    ext = _extension(path)
    if not ext:
        raise InputError(
            f"Unsupported file type: {path.name}; use .nii, .nii.gz, a DICOM folder, .png, .tif "
            "or .tiff"
        )
    if ext in NIFTI_EXTENSIONS:
        data, affine, header = _read_nifti(path)
    else:
        data, affine, header = _read_image(path), IMAGE_AFFINE.copy(), None
    data = _replace_non_finite(data, path)
    return Scan(data=data, affine=affine, header=header, source=path)


def _check_exists(path: Path) -> None:
    """Raise a one-line InputError for a missing file, a broken link or a symbolic link loop."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(
                f"Cannot read {path}: it leads into a symbolic link loop; fix the link"
            ) from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            if path.is_symlink():
                raise InputError(
                    f"Cannot read {path}: it is a broken symbolic link (to {os.readlink(path)}); "
                    "fix the link"
                ) from None
            raise InputError(f"File not found: {path}") from None
        raise InputError(f"Cannot read {path}: {err.strerror or _reason(err)}") from None


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    if not path.name.lower().endswith(".gz"):
        return _nifti_contents(_load_nifti(path, lambda: nib.load(path, mmap=False)), path)
    # nibabel does not read a .gz file to its end, so its CRC and length are never checked and
    # a damaged file reads as silently wrong voxels. Read through one gzip stream to its end:
    # one pass of decompression, and the same memory as nibabel's own reading.
    try:
        with gzip.open(path, "rb") as stream:
            img = _load_nifti(path, lambda: _nifti_from_gzip(stream, path))
            contents = _nifti_contents(img, path)
            _read_to_end(stream)
    except InputError:
        raise
    except _READ_ERRORS as err:
        raise _read_error(path, err) from err
    return contents


def _nifti_from_gzip(stream, path: Path) -> nib.Nifti1Image:
    start = stream.read(nib.Nifti2Header.sizeof_hdr + 4)
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        if klass.header_class.may_contain_header(start):
            break
    else:
        raise nib.filebasedimages.ImageFileError("no NIfTI-1 or NIfTI-2 header")
    holder = nib.FileHolder(filename=str(path), fileobj=stream)
    return klass.from_file_map({"image": holder}, mmap=False)


def _read_to_end(stream) -> None:
    """Decompress the rest of a gzip stream: Python's gzip checks each member's CRC and length."""
    try:
        while stream.read(1 << 20):
            pass
    except gzip.BadGzipFile as err:
        if not str(err).startswith("Not a gzipped file"):
            raise
        # Bytes after the last complete (and checked) member: gzip -t ignores them too.


def _gzip_damage(err: BaseException) -> str | None:
    """What is wrong with a gzip stream, from the error reading it (None: not a gzip error)."""
    text = str(err)
    if isinstance(err, EOFError):
        return "truncated"
    if isinstance(err, zlib.error):
        return "invalid compressed data"
    if isinstance(err, gzip.BadGzipFile):
        if text.startswith("CRC check failed"):
            return "CRC check failed"
        if "length" in text.lower():
            return "length check failed"
        return text.split(" (")[0].lower()
    return None


def _read_error(path: Path, err: BaseException, what: str = "not a valid NIfTI file"):
    """The InputError for a file that failed to read (gzip damage is named as such)."""
    damage = _gzip_damage(err)
    if damage == "not a gzipped file":
        return InputError(
            f"Cannot read {path.name}: not a valid NIfTI file (not gzip-compressed, although the "
            "name ends in .gz); if it is an uncompressed NIfTI file, rename it to .nii"
        )
    if damage:
        return InputError(
            f"Cannot read {path.name}: the gzip data is damaged ({damage}); re-export or "
            "re-copy the file"
        )
    reason = _reason(err)
    if reason.startswith("Cannot work out file type"):  # nibabel found no header it knows
        reason = "no NIfTI-1 or NIfTI-2 header"
    return InputError(f"Cannot read {path.name}: {what} ({reason})")


_LOG_LOCK = threading.Lock()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage().strip().replace("\n", " ")
        if message and message not in self.messages:
            self.messages.append(message)


@contextmanager
def _captured_log(name: str):
    """Collect what a library logs (nibabel and tifffile print to stderr) instead of printing."""
    logger = logging.getLogger(name)
    handler = _Collect()
    with _LOG_LOCK:
        handlers, propagate = logger.handlers, logger.propagate
        logger.handlers, logger.propagate = [handler], False
        try:
            yield handler.messages
        finally:
            logger.handlers, logger.propagate = handlers, propagate


def _load_nifti(path: Path, load) -> nib.Nifti1Image:
    """``load()`` the header; nibabel's notes on a damaged header become one warning."""
    try:
        with _captured_log("nibabel.global") as notes:
            img = load()
    except _READ_ERRORS as err:
        raise _read_error(path, err) from err
    if notes:
        warnings.warn(
            f"{path.name} has a damaged header, read with nibabel's fixes: {'; '.join(notes)}",
            stacklevel=4,
        )
    return img


def _nifti_contents(img, path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    if not isinstance(img, nib.Nifti1Image):
        raise InputError(f"Cannot read {path.name}: not a NIfTI image")
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if sum(s > 1 for s in shape[:3]) < 2:
        raise InputError(
            f"{path.name} is not an image (shape {tuple(img.shape)}): give a 2-D or 3-D scan"
        )
    if img.get_data_dtype().fields:
        raise InputError(f"{path.name} stores colour (RGB) voxels: give a grayscale scan")
    check_size(shape[:3], path.name)
    try:
        if len(shape) > 3:
            warnings.warn(
                f"{path.name} has shape {tuple(img.shape)}: using only the first volume",
                stacklevel=4,
            )
            index = (slice(None),) * 3 + (0,) * (len(img.shape) - 3)
            data = _as_float32(img.dataobj[index], path)
        else:
            data = _as_float32(img.dataobj, path)
    except InputError:
        raise
    except MemoryError:
        raise InputError(
            f"Not enough memory to read {path.name} (shape {tuple(img.shape)}): free memory, or "
            "crop or downsample the scan"
        ) from None
    except _READ_ERRORS as err:
        raise _read_error(path, err, "the file is corrupt or truncated") from err
    data = data.reshape(shape[:3] + (1,) * (3 - len(shape)))
    return np.ascontiguousarray(data), _choose_affine(img, data.shape, path), img.header.copy()


def _choose_affine(img, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """The voxel-to-world transform, by nibabel's rules, but never an unusable one.

    The sform is used when its code is set, else the qform when its code is set, else the
    voxel sizes (as nibabel does). A sform with NaN/Inf values (or singular) gives way to a valid
    qform; when both are set and disagree, a warning says so.
    """
    header = img.header
    sform = _coded_form(header, "sform")
    qform = _coded_form(header, "qform")
    good_q = qform is not None and _usable_affine(qform)
    if sform is not None and _usable_affine(sform):
        if good_q:
            _warn_if_forms_differ(sform, qform, shape, path)
        return sform
    if good_q:
        if sform is not None:
            problem = "NaN or Inf values" if not np.isfinite(sform).all() else "it is singular"
            warnings.warn(
                f"{path.name} has an invalid sform ({problem}): using its qform instead",
                stacklevel=5,
            )
        return qform
    affine = np.array(img.affine, dtype=np.float64)
    if _usable_affine(affine):
        return affine
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    zooms = np.where(np.isfinite(zooms) & (zooms > 0), zooms, 1.0)
    zooms = np.concatenate([zooms, np.ones(3 - zooms.size)])
    warnings.warn(
        f"{path.name} has an invalid affine: using voxel sizes "
        f"({', '.join(f'{z:g}' for z in zooms)}) mm without orientation",
        stacklevel=5,
    )
    return np.diag(np.append(zooms, 1.0))


def _coded_form(header, which: str) -> np.ndarray | None:
    """The header's sform or qform if its code is set (> 0), else None."""
    if int(header[f"{which}_code"]) <= 0:
        return None
    try:
        with np.errstate(all="ignore"):
            form = header.get_sform() if which == "sform" else header.get_qform()
    except (nib.spatialimages.HeaderDataError, ValueError, np.linalg.LinAlgError):
        return np.full((4, 4), np.nan)
    return np.asarray(form, dtype=np.float64)


def _warn_if_forms_differ(sform, qform, shape, path: Path) -> None:
    s_axes = "".join(nib.aff2axcodes(sform))
    q_axes = "".join(nib.aff2axcodes(qform))
    if s_axes != q_axes:
        warnings.warn(
            f"{path.name}: its sform ({s_axes}) and qform ({q_axes}) disagree in orientation; "
            "using the sform, as nibabel does: check which is right (e.g. left-right) and fix "
            "the header",
            stacklevel=6,
        )
        return
    shift = _max_corner_distance(sform, qform, shape)
    s_axis = sform[:3, :3] / np.linalg.norm(sform[:3, :3], axis=0)
    q_axis = qform[:3, :3] / np.linalg.norm(qform[:3, :3], axis=0)
    angle = float(np.degrees(np.arccos(np.clip((s_axis * q_axis).sum(0), -1, 1))).max())
    if shift > 1.0 or angle > 1.0:
        warnings.warn(
            f"{path.name}: its sform and qform differ by up to {shift:.1f} mm and "
            f"{angle:.1f} degrees; using the sform, as nibabel does: check which is right and "
            "fix the header",
            stacklevel=6,
        )


def _as_float32(values, path: Path) -> np.ndarray:
    """Scaled voxel values as float32; complex values become their magnitude."""
    if np.dtype(values.dtype).kind == "c":
        warnings.warn(f"{path.name} has complex voxels: using their magnitude", stacklevel=5)
        return np.abs(np.asarray(values)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.asarray(values, dtype=np.float32)
    overflow = np.isinf(data)
    if overflow.any():
        wide = np.asarray(values, dtype=np.float64)
        overflow &= np.isfinite(wide)
        if overflow.any():
            largest = float(np.abs(wide[overflow]).max())
            raise InputError(
                f"{path.name} has intensities up to {largest:.3g}, beyond the float32 range "
                "(3.4e38): rescale the scan"
            )
    return data


def _usable_affine(affine: np.ndarray) -> bool:
    """Finite, and not singular: tiny voxels are fine, a collapsed axis is not."""
    if not np.all(np.isfinite(affine)):
        return False
    sizes = np.linalg.svd(affine[:3, :3], compute_uv=False)
    return bool(sizes[0] > 0 and sizes[-1] > 1e-8 * sizes[0])


def _read_image(path: Path) -> np.ndarray:
    """A 2-D image file as float32 (H, W, 1); its size is checked from the header first."""
    if path.suffix.lower() in (".tif", ".tiff"):
        image = _read_tiff(path)
    else:
        _check_image_header(path)
        from PIL import Image
        from skimage import io as skio

        try:
            with warnings.catch_warnings():
                # The size is checked already; Pillow's warning would reach the user raw.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = np.asarray(skio.imread(path))
        except Exception as err:  # imageio raises many kinds of errors
            raise InputError(
                f"Cannot read {path.name}: not a valid image ({_reason(err)})"
            ) from err
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].astype(np.float32) @ _LUMINANCE
    elif image.ndim == 3 and image.shape[-1] == 2:
        image = image[..., 0]
    elif image.ndim != 2:
        raise InputError(
            f"{path.name} has shape {image.shape}: give a 2-D image (stacks: convert to NIfTI)"
        )
    if min(image.shape) < 2:
        raise InputError(f"{path.name} is not an image (shape {image.shape})")
    check_size(image.shape, path.name)
    return np.ascontiguousarray(image, dtype=np.float32)[:, :, None]


def _check_plane(shape: tuple[int, ...], path: Path) -> None:
    """Refuse, before decoding, an image that is a stack or has more pixels than the limit."""
    plane = shape[:2] if len(shape) == 2 or (len(shape) == 3 and shape[-1] <= 4) else ()
    if not plane:
        raise InputError(
            f"{path.name} has shape {shape}: give a 2-D image (stacks: convert to NIfTI)"
        )
    check_size(plane, path.name)


def _read_tiff(path: Path) -> np.ndarray:
    """Read the first series of a TIFF file (as ``skimage.io.imread`` does), size checked first."""
    import tifffile

    try:
        with _captured_log("tifffile") as notes, tifffile.TiffFile(path) as tif:
            shape = tuple(int(n) for n in tif.series[0].shape) if tif.series else ()
            if not shape or min(shape) < 1:
                detail = re.sub(r"^<[^>]*>\s*", "", notes[0]) if notes else "no image in it"
                raise InputError(f"Cannot read {path.name}: not a valid image ({detail})")
            _check_plane(shape, path)
            return np.asarray(tif.asarray())
    except (InputError, MemoryError):
        raise
    except Exception as err:  # tifffile raises many kinds of errors
        raise InputError(f"Cannot read {path.name}: not a valid image ({_reason(err)})") from err


def _check_image_header(path: Path) -> None:
    """Check a PNG's size from its header (Pillow reads it without decoding the pixels)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                frames = int(getattr(image, "n_frames", 1) or 1)
    except Image.DecompressionBombError:
        # Pillow refuses more than 2 * Image.MAX_IMAGE_PIXELS before our limit is applied.
        size = _png_size(path)
        if size is None:
            raise InputError(
                f"{path.name} is too large for the image reader: convert it to NIfTI"
            ) from None
        width, height = size
        check_size((height, width), path.name)
        raise InputError(
            f"{path.name} has {width * height:,} pixels, more than the image reader accepts "
            f"({2 * Image.MAX_IMAGE_PIXELS:,}): convert it to NIfTI"
        ) from None
    except Exception as err:  # Pillow raises many kinds of errors
        raise InputError(f"Cannot read {path.name}: not a valid image ({_reason(err)})") from err
    if frames > 1:
        raise InputError(
            f"{path.name} has {frames} frames: give a 2-D image (stacks: convert to NIfTI)"
        )
    check_size((height, width), path.name)


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if the file does not start like a PNG."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _replace_non_finite(data: np.ndarray, path: Path) -> np.ndarray:
    bad = ~np.isfinite(data)
    count = int(bad.sum())
    if count:
        warnings.warn(f"{path.name}: {count} non-finite voxels replaced by 0", stacklevel=3)
        data[bad] = 0.0
    return data


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text and text[0] else type(err).__name__


def read_mask(path: str | os.PathLike, *, like: Scan) -> np.ndarray:
    """Read a mask (e.g. a brain or lesion mask) on the grid of a scan.

    Parameters
    ----------
    path : str or path-like
        Mask file (any format `read_scan` reads); voxels > 0.5 are inside, the usual threshold
        for a mask resampled with interpolation (its edges hold values between 0 and 1) and for
        a probability map.
    like : Scan
        Scan the mask belongs to.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        Same shape as ``like.data``. A warning is given when the mask's affine places voxels
        more than 1e-3 mm away from the scan's, and when the mask is not binary (values between
        0 and 1 were thresholded at 0.5).

    Raises
    ------
    InputError
        The file cannot be read or its shape differs from the scan's; or the mask has values
        between 0 and 1 but none above 0.5 (a probability map that thresholding would empty).
    """
    mask = read_scan(path)
    if mask.shape != like.shape:
        raise InputError(
            f"Mask {Path(path).name} has shape {mask.shape} but the scan has shape {like.shape}: "
            "give a mask on the scan's voxel grid"
        )
    if mask.header is not None and like.header is not None:
        shift = _max_corner_distance(mask.affine, like.affine, like.shape)
        if shift > 1e-3:
            warnings.warn(
                f"Mask {Path(path).name} has a different affine from the scan (up to {shift:.3g} "
                "mm apart); using it voxel by voxel",
                stacklevel=2,
            )
    inside = mask.data > 0.5
    fractional = (mask.data > 0) & (mask.data < 1)
    if fractional.any():
        largest = float(mask.data.max())
        if not inside.any():
            raise InputError(
                f"Mask {Path(path).name} holds values between 0 and 1 (max {largest:.3g}), none "
                "above 0.5: give a binary mask, or threshold it at the level you want"
            )
        warnings.warn(
            f"Mask {Path(path).name} is not binary (values between 0 and 1, max {largest:.3g}): "
            "using the voxels above 0.5",
            stacklevel=2,
        )
    return inside


def _max_corner_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    hi = np.asarray(shape[:3], dtype=np.float64) - 1
    corners = np.array(np.meshgrid(*[[0.0, h] for h in hi], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.max(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0)))


def write_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    like: Scan,
    dtype=np.float32,
    description: str | None = None,
    intent: str | None = None,
) -> Path:
    """Write an array on a scan's grid as NIfTI, atomically, with the scan's affine and header.

    The output keeps what describes the grid: the affine, the qform and sform codes, the voxel
    sizes and units, and the NIfTI version (NIfTI-2 in, NIfTI-2 out; a 2-D file gives a 2-D
    file). What describes the input's voxel values is not inherited: ``descrip``, ``aux_file``,
    the intent and the header extensions are replaced, scaling is stored as none (slope 1,
    intercept 0), and ``cal_min``/``cal_max`` are set to the range of the written data, so
    viewers (FSLeyes, ITK-SNAP, MRIcroGL) open the file with a sensible display range. A scan
    without a header (a 2-D image file or an array) gets a fresh NIfTI-1 header in mm.

    Parameters
    ----------
    path : str or path-like
        Output ``.nii`` or ``.nii.gz`` file; missing parent folders are created.
    data : ndarray, shape (X, Y, Z)
        Same shape as ``like.data`` ((H, W) is accepted for 2-D scans of shape (H, W, 1)).
    like : Scan
        Scan giving the grid, affine and header. Its ``source`` file is never overwritten.
    dtype : numpy dtype
        Stored data type. Values are stored as-is (no scaling); for integer types they are
        rounded and clipped to the type's range; bool is stored as uint8.
    description : str, optional
        Text for the header's ``descrip`` field, e.g. ``"napari-uad 0.1.0 disyre
        model=disyre"``. NIfTI allows 80 bytes with a terminating NUL: the text is cut to 79
        ASCII characters, line breaks and tabs become spaces and other characters become
        ``?``. Default: ``"napari-uad <version>"``.
    intent : str, optional
        NIfTI intent by nibabel's name, e.g. ``"label"`` (NIFTI_INTENT_LABEL, 1002) for masks
        and label maps or ``"zscore"``; its parameters are stored as 0. Default: none
        (intent code 0), whatever the input's intent.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        Wrong extension or shape, the path is the input file, or the file cannot be written.
    ValueError
        ``intent`` is not a NIfTI intent nibabel knows.
    """
    path = Path(path)
    ext = _extension(path)
    if ext not in NIFTI_EXTENSIONS:
        raise InputError(f"Cannot write {path.name}: the output must end in .nii or .nii.gz")
    data = np.asarray(data)
    if data.ndim == 2 and like.data.ndim == 3 and like.shape[2] == 1:
        data = data[:, :, None]
    if data.shape != like.shape:
        raise InputError(
            f"Cannot write {path.name}: data has shape {data.shape}, the scan has {like.shape}"
        )
    if _same_file(path, like.source):
        raise InputError(f"Refusing to overwrite the input file {path}: choose another output")
    if path.is_dir():
        raise InputError(f"Cannot write {path}: it is a folder")

    intent_code = _intent_code(intent)
    img = _make_image(_cast(data, np.dtype(dtype)), like, _descrip(description), intent_code)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temp: nib.save(img, temp), suffix=f".tmp{ext}")
    except OSError as err:
        raise InputError(f"Cannot write {path}: {_reason(err)}") from err
    return path


def _same_file(path: Path, source: Path | None) -> bool:
    if source is None:
        return False
    try:
        if path.exists() and source.exists():
            return os.path.samefile(path, source)
        return path.resolve() == Path(source).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        return False


def _cast(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
        if data.dtype != np.bool_:
            info = np.iinfo(dtype)
            data = np.clip(np.rint(np.nan_to_num(data)), info.min, info.max)
    return np.ascontiguousarray(data, dtype=dtype)


def _make_image(data: np.ndarray, like: Scan, descrip: bytes, intent_code: int) -> nib.Nifti1Image:
    if like.header is None:
        img = nib.Nifti1Image(data, like.affine, dtype=data.dtype)
        img.header.set_xyzt_units("mm")
    else:
        header = like.header.copy()
        if data.ndim == 3 and data.shape == (*header.get_data_shape(), 1):
            data = data[:, :, 0]  # a 2-D input file gets a 2-D output file
        # Extensions (AFNI attributes, DICOM tags, CIFTI) describe the input, not this output;
        # copy() shares the input's list, so start a new one.
        header = type(header)(header.binaryblock, header.endianness, check=False)
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = image_class(data, like.affine, header=header)
    header = img.header
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    header.set_intent(intent_code)
    header["descrip"] = descrip
    header["aux_file"] = b""
    header["cal_min"], header["cal_max"] = _value_range(data)
    return img


def _intent_code(intent: str | None) -> int:
    """The NIfTI intent code for nibabel's intent name (None: no intent, 0)."""
    if intent is None:
        return 0
    try:
        return int(nib.nifti1.intent_codes.code[intent])
    except KeyError:
        raise ValueError(
            f"Unknown NIfTI intent {intent!r}: use a name nibabel knows, e.g. 'label' or 'zscore'"
        ) from None


# NIfTI-1 and -2 keep 80 bytes for descrip; the NIfTI C library reads and writes at most 79
# characters and a NUL, so a longer text would lose its last character there.
_DESCRIP_CHARS = 79


def _descrip(description: str | None) -> bytes:
    """The header's ``descrip``: printable ASCII, at most 79 bytes (80 with the NUL)."""
    if description is None:
        description = f"napari-uad {__version__}"
    text = re.sub(r"[\t\r\n]", " ", str(description))
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text[:_DESCRIP_CHARS].encode("ascii")


def _value_range(data: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values; (0, 0) when there are none."""
    if data.size == 0:
        return 0.0, 0.0
    lo, hi = data.min(), data.max()
    if np.issubdtype(data.dtype, np.floating) and not (np.isfinite(lo) and np.isfinite(hi)):
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            return 0.0, 0.0
        lo, hi = finite.min(), finite.max()
    return float(lo), float(hi)

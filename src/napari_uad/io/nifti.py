"""Reading and writing scans: NIfTI volumes and 2-D image files."""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

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
        The file is missing, has an unsupported extension, is corrupt or is not an image; or
        the DICOM folder is not one complete series.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"File not found: {path}")
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


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    try:
        img = nib.load(path, mmap=False)
    except _READ_ERRORS as err:
        raise InputError(
            f"Cannot read {path.name}: not a valid NIfTI file ({_reason(err)})"
        ) from err
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
                stacklevel=3,
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
        raise InputError(
            f"Cannot read {path.name}: the file is corrupt or truncated ({_reason(err)})"
        ) from err
    data = data.reshape(shape[:3] + (1,) * (3 - len(shape)))
    affine = np.array(img.affine, dtype=np.float64)
    if not _usable_affine(affine):
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
        zooms = np.where(np.isfinite(zooms) & (zooms > 0), zooms, 1.0)
        zooms = np.concatenate([zooms, np.ones(3 - zooms.size)])
        warnings.warn(
            f"{path.name} has an invalid affine: using voxel sizes {tuple(zooms)} mm without "
            "orientation",
            stacklevel=3,
        )
        affine = np.diag(np.append(zooms, 1.0))
    return np.ascontiguousarray(data), affine, img.header.copy()


def _as_float32(values, path: Path) -> np.ndarray:
    """Scaled voxel values as float32; complex values become their magnitude."""
    if np.dtype(values.dtype).kind == "c":
        warnings.warn(f"{path.name} has complex voxels: using their magnitude", stacklevel=4)
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
    from skimage import io as skio

    try:
        image = np.asarray(skio.imread(path))
    except Exception as err:  # imageio and tifffile raise many kinds of errors
        raise InputError(f"Cannot read {path.name}: not a valid image ({_reason(err)})") from err
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
        Mask file (any format `read_scan` reads); voxels > 0.5 are inside.
    like : Scan
        Scan the mask belongs to.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        Same shape as ``like.data``. A warning is given when the mask's affine places voxels
        more than 1e-3 mm away from the scan's.

    Raises
    ------
    InputError
        The file cannot be read or its shape differs from the scan's.
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
    return mask.data > 0.5


def _max_corner_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    hi = np.asarray(shape[:3], dtype=np.float64) - 1
    corners = np.array(np.meshgrid(*[[0.0, h] for h in hi], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.max(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0)))


def write_nifti(path: str | os.PathLike, data: np.ndarray, *, like: Scan, dtype=np.float32) -> Path:
    """Write an array on a scan's grid as NIfTI, atomically, with the scan's affine and header.

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

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        Wrong extension or shape, the path is the input file, or the file cannot be written.
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

    img = _make_image(_cast(data, np.dtype(dtype)), like)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temp: nib.save(img, temp), suffix=f".tmp{ext}")
    except OSError as err:
        raise InputError(f"Cannot write {path}: {_reason(err)}") from err
    return path


def _same_file(path: Path, source: Path | None) -> bool:
    if source is None:
        return False
    if path.exists() and source.exists():
        return os.path.samefile(path, source)
    return path.resolve() == Path(source).resolve()


def _cast(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
        if data.dtype != np.bool_:
            info = np.iinfo(dtype)
            data = np.clip(np.rint(np.nan_to_num(data)), info.min, info.max)
    return np.ascontiguousarray(data, dtype=dtype)


def _make_image(data: np.ndarray, like: Scan) -> nib.Nifti1Image:
    if like.header is None:
        img = nib.Nifti1Image(data, like.affine)
        img.header.set_data_dtype(data.dtype)
        img.header.set_xyzt_units("mm")
        return img
    header = like.header.copy()
    if data.ndim == 3 and data.shape == (*header.get_data_shape(), 1):
        data = data[:, :, 0]  # a 2-D input file gets a 2-D output file
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(data, like.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    return img

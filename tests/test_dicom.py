"""DICOM series reading: geometry, rescaling, and clear errors (synthetic series, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_uad.io import InputError, read_scan

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows run to the patient's left, columns posterior
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
_c, _s = np.cos(0.3), np.sin(0.3)  # axial, rotated 17 degrees about z, then tilted about x
OBLIQUE = tuple(np.r_[(_c, _s, 0.0), (-_s * np.cos(0.2), _c * np.cos(0.2), np.sin(0.2))])


def write_series(
    folder,
    volume,
    *,
    orientation=AXIAL,
    origin=(-100.0, -120.0, -30.0),
    pixel_spacing=(0.8, 0.9),
    slice_step=2.5,
    slope=1.0,
    intercept=0.0,
    series_uid=None,
    description="T1 MPRAGE",
    skip=(),
    prefix="IM",
):
    """Write ``volume`` (rows, columns, slices) as one DICOM file per slice, shuffled names.

    Slice ``k`` lies at ``origin + k * slice_step * normal`` (LPS, mm). Returns the LPS position
    function ``(row, column, slice) -> mm`` so tests can check where voxels land.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row_cos, col_cos = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_cos, col_cos)
    series_uid = series_uid or generate_uid()
    stored = np.round((volume - intercept) / slope).astype(np.int16)
    rng = np.random.default_rng(0)
    names = rng.permutation(volume.shape[2])
    for k in range(volume.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in np.add(origin, k * slice_step * normal)]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = 1.0  # deliberately not the spacing: positions decide
        ds.Rows, ds.Columns = volume.shape[:2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[:, :, k]).tobytes()
        path = folder / f"{prefix}{names[k]:04d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except TypeError:  # pydicom 2.x
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(path, write_like_original=False)

    def lps(row, column, k):
        return (
            np.asarray(origin)
            + column * pixel_spacing[1] * row_cos
            + row * pixel_spacing[0] * col_cos
            + k * slice_step * normal
        )

    return lps


def marked_volume(shape=(12, 10, 5)):
    volume = np.full(shape, 100.0)
    volume[3, 7, 1] = 900.0  # (row, column, slice)
    return volume


def ras_of(scan):
    x, y, z = np.unravel_index(np.argmax(scan.data), scan.shape)
    return (scan.affine @ [x, y, z, 1.0])[:3]


@pytest.mark.parametrize(
    "orientation", [AXIAL, CORONAL, OBLIQUE], ids=["axial", "coronal", "oblique"]
)
def test_series_geometry_and_rescale(tmp_path, orientation):
    volume = marked_volume()
    lps = write_series(tmp_path / "t1", volume, orientation=orientation, slope=2.0, intercept=-50)
    scan = read_scan(tmp_path / "t1")
    assert scan.shape == (10, 12, 5)  # (columns, rows, slices)
    np.testing.assert_allclose(scan.data[7, 3, 1], 900.0)
    np.testing.assert_allclose(scan.data[0, 0, 0], 100.0)
    assert scan.data.dtype == np.float32
    expected = lps(3, 7, 1) * [-1, -1, 1]  # LPS -> RAS
    np.testing.assert_allclose(ras_of(scan), expected, atol=1e-6)
    np.testing.assert_allclose(sorted(scan.spacing), sorted([0.9, 0.8, 2.5]), atol=1e-6)
    assert scan.header.get_data_dtype() == np.int16
    assert scan.source == tmp_path / "t1"


def test_display_of_dicom_is_radiological(tmp_path):
    from napari_uad.display import to_display

    volume = np.full((16, 16, 4), 10.0)
    volume[:, 0, :] = 500.0  # first column: the patient's right side in an axial series
    write_series(tmp_path / "s", volume)
    scan = read_scan(tmp_path / "s")
    display, scale = to_display(scan.data, scan.affine)
    assert scale == pytest.approx((2.5, 0.8, 0.9))
    # Radiological: the patient's right appears on the screen's left.
    assert display[0, :, 0].mean() == pytest.approx(500.0)


def test_one_file_picks_its_series_from_a_mixed_folder(tmp_path):
    write_series(tmp_path / "mixed", marked_volume(), description="T1", prefix="A")
    write_series(tmp_path / "mixed", np.zeros((8, 8, 3)), description="FLAIR", prefix="B")
    with pytest.raises(InputError, match=r"holds 2 DICOM series .*'T1'.*'FLAIR'"):
        read_scan(tmp_path / "mixed")
    one = next((tmp_path / "mixed").glob("A*.dcm"))
    assert read_scan(one).shape == (10, 12, 5)


def test_missing_slice_is_reported(tmp_path):
    write_series(tmp_path / "gap", marked_volume((8, 8, 6)), skip=(3,))
    with pytest.raises(InputError, match=r"about 1 slice\(s\) missing") as info:
        read_scan(tmp_path / "gap")
    assert "\n" not in str(info.value)


def test_duplicate_positions_are_reported(tmp_path):
    uid = generate_uid()
    write_series(tmp_path / "dup", marked_volume(), series_uid=uid, prefix="E1_")
    write_series(tmp_path / "dup", marked_volume(), series_uid=uid, prefix="E2_")
    with pytest.raises(InputError, match="same position"):
        read_scan(tmp_path / "dup")


def test_non_image_dicom_file(tmp_path):
    write_series(tmp_path / "s", marked_volume())
    report = tmp_path / "s" / "report.dcm"
    ds = pydicom.dcmread(next((tmp_path / "s").glob("*.dcm")), stop_before_pixels=True)
    for keyword in ("Rows", "Columns", "ImagePositionPatient"):
        delattr(ds, keyword)
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(report)
    assert read_scan(tmp_path / "s").shape == (10, 12, 5)  # the report is left out
    with pytest.raises(InputError, match="not a DICOM image"):
        read_scan(report)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "IM0001").write_bytes(b"\x00" * 300)
    with pytest.raises(InputError, match="No DICOM images"):
        read_scan(tmp_path)


def test_subfolder_series_and_single_slice(tmp_path):
    write_series(tmp_path / "study" / "series1", np.full((8, 8, 1), 100.0))
    scan = read_scan(tmp_path / "study")
    assert scan.shape == (8, 8, 1)
    assert scan.spacing[2] == pytest.approx(1.0)  # SliceThickness when there is one slice


def test_napari_reader_accepts_dicom_folder(tmp_path):
    from napari_uad._napari import get_dicom_reader, get_reader

    write_series(tmp_path / "t1", marked_volume())
    assert get_reader(str(tmp_path)) is None  # the NIfTI reader stays file-only
    assert get_dicom_reader(str(tmp_path / "empty_missing")) is None
    reader = get_dicom_reader(str(tmp_path / "t1"))
    ((data, meta, kind),) = reader(str(tmp_path / "t1"))
    assert kind == "image"
    assert data.shape == (5, 12, 10)
    assert meta["name"] == "t1"
    assert meta["metadata"]["napari_uad"]["role"] == "scan"

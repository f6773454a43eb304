import warnings

import nibabel as nib
import numpy as np
import pytest
from skimage import io as skio

from napari_uad.io import InputError, Scan, nifti_stem, read_mask, read_scan, write_nifti
from napari_uad.io.nifti import IMAGE_AFFINE


def _affine():
    affine = np.diag([-1.2, 1.0, 2.5, 1.0])
    affine[:3, 3] = [30.0, -40.0, -12.0]
    return affine


def _save(path, data, affine=None, dtype=None):
    img = nib.Nifti1Image(data, _affine() if affine is None else affine)
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    nib.save(img, path)
    return path


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.normal(100.0, 20.0, size=(20, 24, 6)).astype(np.float32)


def test_read_write_round_trip_keeps_affine_and_header(tmp_path, volume):
    src = _save(tmp_path / "sub-01_T1w.nii.gz", volume)
    scan = read_scan(src)
    assert scan.data.dtype == np.float32
    assert scan.shape == (20, 24, 6)
    assert scan.spacing == pytest.approx((1.2, 1.0, 2.5))
    assert scan.source == src
    np.testing.assert_allclose(scan.data, volume)

    out = write_nifti(tmp_path / "out" / "sub-01_anomaly.nii.gz", scan.data * 2, like=scan)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, scan.affine)
    assert back.get_data_dtype() == np.float32
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 1
    assert back.header.get_xyzt_units() == scan.header.get_xyzt_units()
    np.testing.assert_allclose(np.asarray(back.dataobj), volume * 2)


def test_scaled_int_input_and_uint8_output(tmp_path, volume):
    src = tmp_path / "scaled.nii"
    img = nib.Nifti1Image(np.rint(volume).astype(np.int16), _affine())
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, src)
    scan = read_scan(src)
    np.testing.assert_allclose(scan.data, np.rint(volume) * 0.5 + 10.0)

    mask = scan.data > 60
    out = write_nifti(tmp_path / "mask.nii.gz", mask, like=scan, dtype=np.uint8)
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), mask.astype(np.uint8))
    slope, inter = back.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)


def test_atomic_write_leaves_no_temp_file(tmp_path, volume):
    scan = read_scan(_save(tmp_path / "in.nii.gz", volume))
    out_dir = tmp_path / "out"
    write_nifti(out_dir / "a.nii.gz", scan.data, like=scan)
    write_nifti(out_dir / "a.nii.gz", scan.data + 1, like=scan)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.nii.gz"]
    np.testing.assert_allclose(read_scan(out_dir / "a.nii.gz").data, scan.data + 1)

    with pytest.raises(InputError, match="shape"):
        write_nifti(out_dir / "b.nii.gz", scan.data[:-1], like=scan)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.nii.gz"]


def test_failed_write_removes_temp_file(tmp_path, volume, monkeypatch):
    scan = read_scan(_save(tmp_path / "in.nii.gz", volume))

    def broken_save(img, filename):
        open(filename, "wb").close()
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(InputError, match="disk full"):
        write_nifti(tmp_path / "out.nii.gz", scan.data, like=scan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_refuses_to_overwrite_input(tmp_path, volume):
    src = _save(tmp_path / "in.nii.gz", volume)
    scan = read_scan(src)
    before = src.read_bytes()
    with pytest.raises(InputError, match="overwrite the input"):
        write_nifti(src, scan.data + 1, like=scan)
    with pytest.raises(InputError, match="overwrite the input"):
        write_nifti(tmp_path / "sub" / ".." / "in.nii.gz", scan.data, like=scan)
    assert src.read_bytes() == before


def test_wrong_output_extension(tmp_path, volume):
    scan = read_scan(_save(tmp_path / "in.nii.gz", volume))
    with pytest.raises(InputError, match=r"\.nii"):
        write_nifti(tmp_path / "out.png", scan.data, like=scan)


def test_corrupt_truncated_file(tmp_path, volume):
    src = _save(tmp_path / "full.nii.gz", volume)
    raw = src.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="bad.nii.gz") as info:
        read_scan(bad)
    assert "\n" not in str(info.value)

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti file at all" * 10)
    with pytest.raises(InputError, match="garbage.nii.gz"):
        read_scan(garbage)

    short = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(volume, _affine()), short)
    short.write_bytes(short.read_bytes()[:1000])
    with pytest.raises(InputError, match="short.nii"):
        read_scan(short)


def test_missing_file_and_wrong_extension(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_scan(tmp_path / "nope.nii.gz")
    other = tmp_path / "scan.mha"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="Unsupported"):
        read_scan(other)


def test_4d_takes_first_volume(tmp_path, volume):
    data = np.stack([volume, volume + 1000, volume + 2000], axis=-1)
    src = _save(tmp_path / "dwi.nii.gz", data)
    with pytest.warns(UserWarning, match="first volume"):
        scan = read_scan(src)
    assert scan.shape == volume.shape
    np.testing.assert_allclose(scan.data, volume)


def test_trailing_singleton_dims_are_squeezed(tmp_path, volume):
    src = _save(tmp_path / "single.nii.gz", volume[..., None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan = read_scan(src)
    assert scan.shape == volume.shape


def test_2d_nifti_and_not_an_image(tmp_path, volume):
    scan = read_scan(_save(tmp_path / "slice.nii", volume[:, :, 0]))
    assert scan.shape == (20, 24, 1)
    np.testing.assert_allclose(scan.data[:, :, 0], volume[:, :, 0])
    with pytest.raises(InputError, match="not an image"):
        read_scan(_save(tmp_path / "line.nii.gz", volume[:, 0, 0]))


def test_png_rgb_to_luminance(tmp_path):
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[5:25, 10:30] = [200, 100, 50]
    path = tmp_path / "slice.png"
    skio.imsave(path, rgb, check_contrast=False)
    scan = read_scan(path)
    assert scan.shape == (30, 40, 1)
    assert scan.header is None
    np.testing.assert_array_equal(scan.affine, IMAGE_AFFINE)
    expected = 0.2125 * 200 + 0.7154 * 100 + 0.0721 * 50
    assert scan.data[10, 20, 0] == pytest.approx(expected, rel=1e-5)
    assert scan.data[0, 0, 0] == 0

    out = write_nifti(tmp_path / "slice_anomaly.nii.gz", scan.data[:, :, 0], like=scan)
    back = nib.load(out)
    assert back.shape == (30, 40, 1)
    np.testing.assert_allclose(back.affine, IMAGE_AFFINE)


def test_tiff_grayscale(tmp_path):
    image = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    path = tmp_path / "slice.tif"
    skio.imsave(path, image, check_contrast=False)
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.data[:, :, 0], image.astype(np.float32))


def test_nan_voxels_replaced(tmp_path, volume):
    data = volume.copy()
    data[1, 2, 3] = np.nan
    data[4, 5, 1] = np.inf
    with pytest.warns(UserWarning, match="2 non-finite"):
        scan = read_scan(_save(tmp_path / "nan.nii.gz", data))
    assert np.all(np.isfinite(scan.data))
    assert scan.data[1, 2, 3] == 0 and scan.data[4, 5, 1] == 0


def test_read_mask(tmp_path, volume):
    scan = read_scan(_save(tmp_path / "in.nii.gz", volume))
    mask = volume > 100
    mask_path = _save(tmp_path / "mask.nii.gz", mask.astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_mask(mask_path, like=scan)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, mask)

    shifted = _affine()
    shifted[0, 3] += 0.5
    moved = _save(tmp_path / "moved.nii.gz", mask.astype(np.uint8), affine=shifted)
    with pytest.warns(UserWarning, match="different affine"):
        read_mask(moved, like=scan)

    small = _save(tmp_path / "small.nii.gz", mask[:-2].astype(np.uint8))
    with pytest.raises(InputError, match=r"\(18, 24, 6\).*\(20, 24, 6\)"):
        read_mask(small, like=scan)


def test_nifti_stem():
    assert nifti_stem("data/sub-01_T1w.nii.gz") == "sub-01_T1w"
    assert nifti_stem("a.b.nii") == "a.b"
    assert nifti_stem("x.NII.GZ") == "x"
    assert nifti_stem("slice.png") == "slice"
    assert nifti_stem("slice.tif") == "slice"
    assert nifti_stem("slice.tiff") == "slice"


def test_scan_with_data(volume):
    scan = Scan(data=volume, affine=_affine())
    other = scan.with_data(volume * 0)
    assert other.affine is scan.affine and other.shape == scan.shape
    assert not np.shares_memory(other.data, scan.data)


def test_png_is_displayed_as_drawn(tmp_path):
    """A PNG of an axial slice (radiological view) shows up in napari exactly as drawn."""
    from skimage.io import imsave

    from napari_uad.display import to_display

    picture = np.zeros((20, 30), dtype=np.uint8)
    picture[2:5, 3:6] = 255  # top-left corner
    imsave(tmp_path / "slice.png", picture, check_contrast=False)
    scan = read_scan(tmp_path / "slice.png")
    display, _ = to_display(scan.data, scan.affine)
    np.testing.assert_array_equal(display[0] > 0, picture > 0)

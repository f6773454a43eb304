"""Output NIfTI headers: what viewers and other tools read from a written map or mask."""

import nibabel as nib
import numpy as np
import pytest

from napari_uad import __version__
from napari_uad.io import Scan, read_scan, write_nifti
from napari_uad.io.nifti import IMAGE_AFFINE

MODEL_DESCRIPTION = "napari-uad 0.1.0 disyre model=disyre"


def _affine():
    affine = np.diag([-1.2, 1.0, 2.5, 1.0])
    affine[:3, 3] = [30.0, -40.0, -12.0]
    return affine


def _spm_header(header):
    """What an SPM ImCalc output carries: its own description, a t-map intent, an extension."""
    header["descrip"] = b"spm - algebra"
    header["aux_file"] = b"spm.aux"
    header.set_intent("t test", (10,), name="spmT_0001")
    header["cal_min"], header["cal_max"] = 5.0, 50.0
    header.set_xyzt_units("mm", "sec")
    header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"SPM contrast 1"))


def _save(path, data, image_class=nib.Nifti1Image, sform_code=4, qform_code=1):
    img = image_class(data, _affine())
    img.header.set_sform(img.affine, code=sform_code)
    img.header.set_qform(img.affine, code=qform_code)
    _spm_header(img.header)
    nib.save(img, path)
    return path


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(100.0, 20.0, size=(20, 24, 6)).astype(np.float32)
    return read_scan(_save(tmp_path / "spmT_0001.nii.gz", volume))


def _anomaly(shape):
    rng = np.random.default_rng(1)
    return rng.gamma(2.0, 0.05, size=shape).astype(np.float32)


def _descrip(header) -> bytes:
    return bytes(header["descrip"].item())


def test_mask_and_map_headers(tmp_path, scan):
    assert _descrip(scan.header) == b"spm - algebra"  # the input really carries it
    mask = scan.data > 110
    anomaly = _anomaly(scan.shape)

    mask_file = write_nifti(
        tmp_path / "mask.nii.gz",
        mask,
        like=scan,
        dtype="uint8",
        description=MODEL_DESCRIPTION,
        intent="label",
    )
    map_file = write_nifti(
        tmp_path / "anomaly.nii.gz", anomaly, like=scan, description=MODEL_DESCRIPTION
    )

    for path, data in ((mask_file, mask.astype(np.uint8)), (map_file, anomaly)):
        back = nib.load(path)
        header = back.header
        assert _descrip(header) == MODEL_DESCRIPTION.encode()
        assert bytes(header["aux_file"].item()) == b""
        assert bytes(header["intent_name"].item()) == b""
        assert float(header["intent_p1"]) == 0.0
        assert float(header["cal_min"]) == pytest.approx(float(data.min()))
        assert float(header["cal_max"]) == pytest.approx(float(data.max()))
        np.testing.assert_allclose(back.affine, scan.affine)
        np.testing.assert_allclose(header.get_sform(), scan.header.get_sform())
        assert int(header["sform_code"]) == 4 and int(header["qform_code"]) == 1
        assert header.get_xyzt_units() == ("mm", "sec")
        assert len(header.extensions) == 0  # the input's extension describes the input
        slope, inter = header.get_slope_inter()
        assert slope in (None, 1.0) and inter in (None, 0.0)
        np.testing.assert_array_equal(np.asarray(back.dataobj), data)

    mask_header = nib.load(mask_file).header
    assert int(mask_header["intent_code"]) == 1002  # NIFTI_INTENT_LABEL
    assert mask_header.get_intent()[0] == "label"
    assert (float(mask_header["cal_min"]), float(mask_header["cal_max"])) == (0.0, 1.0)
    assert int(nib.load(map_file).header["intent_code"]) == 0  # not the input's t test

    # the scan, and the file it came from, keep their own header
    assert _descrip(scan.header) == b"spm - algebra"
    assert len(scan.header.extensions) == 1
    assert _descrip(nib.load(scan.source).header) == b"spm - algebra"


def test_default_description_is_the_version(tmp_path, scan):
    back = nib.load(write_nifti(tmp_path / "healthy.nii.gz", scan.data, like=scan))
    assert _descrip(back.header) == f"napari-uad {__version__}".encode()
    assert int(back.header["intent_code"]) == 0


def test_long_or_non_ascii_description_is_cut_safely(tmp_path, scan):
    text = "napari-uad 0.1.0 disyre model=/data/models/é-site/" + "x" * 100 + "\nsecond line"
    back = nib.load(write_nifti(tmp_path / "a.nii.gz", scan.data, like=scan, description=text))
    descrip = _descrip(back.header)
    assert len(descrip) <= 80
    assert len(descrip) == 79  # 79 characters and the NUL, as the NIfTI C library writes them
    descrip.decode("ascii")
    assert descrip.startswith(b"napari-uad 0.1.0 disyre model=/data/models/?-site/xxx")


def test_value_range_skips_non_finite_and_empty(tmp_path, scan):
    anomaly = _anomaly(scan.shape)
    anomaly[0, 0, 0] = np.nan
    anomaly[1, 0, 0] = np.inf
    anomaly[2, 0, 0] = -np.inf
    finite = anomaly[np.isfinite(anomaly)]
    header = nib.load(write_nifti(tmp_path / "nan.nii.gz", anomaly, like=scan)).header
    assert float(header["cal_min"]) == pytest.approx(float(finite.min()))
    assert float(header["cal_max"]) == pytest.approx(float(finite.max()))

    zeros = np.zeros(scan.shape, np.float32)
    header = nib.load(write_nifti(tmp_path / "zero.nii.gz", zeros, like=scan)).header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (0.0, 0.0)

    header = nib.load(
        write_nifti(tmp_path / "allnan.nii.gz", np.full(scan.shape, np.nan), like=scan)
    ).header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (0.0, 0.0)

    labels = np.zeros(scan.shape, np.int16)
    labels[3:6, 4:8, 2] = 7
    labels[0, 0, 0] = -2
    header = nib.load(
        write_nifti(tmp_path / "labels.nii.gz", labels, like=scan, dtype="int16", intent="label")
    ).header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (-2.0, 7.0)


def test_2d_input_file(tmp_path):
    image = np.random.default_rng(2).uniform(0, 500, size=(30, 40)).astype(np.float32)
    scan = read_scan(_save(tmp_path / "slice.nii.gz", image))
    assert scan.shape == (30, 40, 1)
    mask = scan.data[:, :, 0] > 250
    back = nib.load(
        write_nifti(
            tmp_path / "slice_mask.nii.gz",
            mask,
            like=scan,
            dtype="uint8",
            description=MODEL_DESCRIPTION,
            intent="label",
        )
    )
    assert back.shape == (30, 40)  # a 2-D file gives a 2-D file
    assert int(back.header["intent_code"]) == 1002
    assert _descrip(back.header) == MODEL_DESCRIPTION.encode()
    assert (float(back.header["cal_min"]), float(back.header["cal_max"])) == (0.0, 1.0)
    np.testing.assert_allclose(back.affine, scan.affine)
    assert int(back.header["sform_code"]) == 4 and int(back.header["qform_code"]) == 1


def test_nifti2_input(tmp_path):
    volume = _anomaly((12, 10, 4)) * 100
    scan = read_scan(_save(tmp_path / "in.nii", volume, image_class=nib.Nifti2Image))
    out = write_nifti(
        tmp_path / "out.nii", scan.data > 10, like=scan, dtype="uint8", intent="label"
    )
    back = nib.load(out)
    assert isinstance(back, nib.Nifti2Image)
    assert int(back.header["intent_code"]) == 1002
    assert _descrip(back.header) == f"napari-uad {__version__}".encode()
    assert float(back.header["cal_max"]) == 1.0
    np.testing.assert_allclose(back.affine, scan.affine)
    assert int(back.header["sform_code"]) == 4 and int(back.header["qform_code"]) == 1


def test_headerless_scan(tmp_path):
    data = np.random.default_rng(3).uniform(1, 9, size=(16, 20, 1)).astype(np.float32)
    scan = Scan(data, IMAGE_AFFINE)
    back = nib.load(write_nifti(tmp_path / "png_map.nii.gz", data[:, :, 0], like=scan))
    assert back.shape == (16, 20, 1)
    assert back.header.get_xyzt_units()[0] == "mm"
    assert _descrip(back.header) == f"napari-uad {__version__}".encode()
    assert int(back.header["intent_code"]) == 0
    assert float(back.header["cal_min"]) == pytest.approx(float(data.min()))
    assert float(back.header["cal_max"]) == pytest.approx(float(data.max()))
    np.testing.assert_allclose(back.affine, IMAGE_AFFINE)

    mask = nib.load(
        write_nifti(
            tmp_path / "png_mask.nii.gz", data > 5, like=scan, dtype="uint8", intent="label"
        )
    )
    assert int(mask.header["intent_code"]) == 1002


def test_sform_only_and_qform_only_codes_kept(tmp_path, scan):
    for sform_code, qform_code in ((2, 0), (0, 1)):
        path = tmp_path / f"in_{sform_code}{qform_code}.nii.gz"
        source = read_scan(_save(path, scan.data, sform_code=sform_code, qform_code=qform_code))
        back = nib.load(
            write_nifti(tmp_path / f"out_{sform_code}{qform_code}.nii", source.data, like=source)
        )
        assert int(back.header["sform_code"]) == sform_code
        assert int(back.header["qform_code"]) == qform_code
        np.testing.assert_allclose(back.affine, source.affine)


def test_unknown_intent_is_refused(tmp_path, scan):
    with pytest.raises(ValueError, match="Unknown NIfTI intent"):
        write_nifti(tmp_path / "x.nii.gz", scan.data, like=scan, intent="lable")
    assert not (tmp_path / "x.nii.gz").exists()

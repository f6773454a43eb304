"""Bad and unusual inputs: each gives a clear one-line error (exit code 2) or works as documented.

Issue 8, part 1. Errors go through the command line (``main([...])``) so the test sees what a
user sees: one line starting with ``napari-uad: error:``, exit code 2 and no output written.
Inputs that are accepted (2-D, 4-D, NaN, integer types, odd spacings and orientations) are run
through the pipeline with the tiny model and checked on the input's grid.
"""

from __future__ import annotations

import gc
import gzip
import struct
import warnings
import zlib

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main
from napari_uad.data.phantoms import add_lesions, make_brain
from napari_uad.io import InputError, Scan, read_scan, write_nifti
from napari_uad.pipeline import detect


def _phantom(shape=(40, 48, 5), seed=1):
    image, mask = make_brain(shape, seed=seed)
    image, truth = add_lesions(image, mask, kind="tumour", seed=seed + 1)
    return image.astype(np.float32), mask, truth


def _save(path, data, affine=None, **header):
    affine = np.diag([1.2, 1.2, 3.0, 1.0]) if affine is None else affine
    wide = data.dtype.kind in "iu" and data.dtype.itemsize == 8  # nibabel wants it explicit
    img = nib.Nifti1Image(data, affine, dtype=data.dtype if wide else None)
    img.header.set_xyzt_units("mm")
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def _restore(args, model_dir, out, capsys):
    """Run ``napari-uad restore`` with the tiny model; returns (exit code, stderr lines)."""
    capsys.readouterr()
    code = main(
        ["restore", *map(str, args), "--method", "anoddpm", "--model", str(model_dir)]
        + ["--device", "cpu", "--steps", "2", "--out", str(out)]
    )
    return code, capsys.readouterr().err.strip().splitlines()


def _assert_one_line_error(code, err, message, out):
    errors = [line for line in err if not line.startswith("napari-uad: warning:")]
    assert code == 2
    assert len(errors) == 1, err
    assert errors[0].startswith("napari-uad: error: ")
    assert message.lower() in errors[0].lower(), errors[0]
    assert not out.exists() or not any(out.iterdir()), "nothing may be written"


def _bad_inputs(tmp_path):
    """Files a user might pass by mistake, with a word the error must contain."""
    image, mask, _ = _phantom()
    good = _save(tmp_path / "good.nii.gz", image * 900)
    raw = good.read_bytes()
    cases = {}
    cases["missing"] = (tmp_path / "missing.nii.gz", "not found")
    (tmp_path / "scan.mha").write_bytes(b"ObjectType = Image\n")
    cases["extension"] = (tmp_path / "scan.mha", "unsupported file type")
    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (tmp_path / "truncated.nii.gz", "truncated.nii.gz")
    (tmp_path / "garbage.nii").write_bytes(b"\x00garbage" * 100)
    cases["garbage"] = (tmp_path / "garbage.nii", "not a valid nifti")
    (tmp_path / "gzip_of_text.nii.gz").write_bytes(gzip.compress(b"hello" * 100))
    cases["gzip_of_text"] = (tmp_path / "gzip_of_text.nii.gz", "not a valid nifti")
    cases["1d"] = (_save(tmp_path / "line.nii.gz", np.arange(50, dtype=np.float32)), "not an image")
    rgb = np.zeros((8, 9, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    cases["rgb"] = (_save(tmp_path / "rgb.nii", rgb), "grayscale")
    cases["zeros"] = (_save(tmp_path / "zeros.nii.gz", np.zeros_like(image)), "constant")
    cases["constant"] = (_save(tmp_path / "constant.nii.gz", np.full_like(image, 7.0)), "constant")
    big = 10.0 ** np.linspace(0, 300, image.size).reshape(image.shape)
    cases["beyond_float32"] = (_save(tmp_path / "huge_values.nii", big), "float32 range")
    (tmp_path / "folder.nii.gz").mkdir()
    cases["folder"] = (tmp_path / "folder.nii.gz", "folder")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "extension",
        "truncated",
        "garbage",
        "gzip_of_text",
        "1d",
        "rgb",
        "zeros",
        "constant",
        "beyond_float32",
        "folder",
    ],
)
def test_bad_scan_gives_one_line_error(case, tmp_path, tiny_model_dir, capsys):
    path, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code, err = _restore([path], tiny_model_dir, out, capsys)
    _assert_one_line_error(code, err, message, out)


def test_bad_brain_masks(tmp_path, tiny_model_dir, capsys):
    image, mask, _ = _phantom()
    scan = _save(tmp_path / "scan.nii.gz", image * 900)
    other_grid = _save(tmp_path / "small.nii.gz", mask[:-4].astype(np.uint8))
    empty = _save(tmp_path / "empty.nii.gz", np.zeros(mask.shape, np.uint8))
    # 5.5, not an integer: two integer values are refused earlier, as a mask (napari_uad.checks).
    constant_inside = _save(tmp_path / "flat.nii.gz", np.where(mask, 5.5, 0.0).astype(np.float32))
    out = tmp_path / "out"
    for path, brain, message in [
        (scan, other_grid, "voxel grid"),
        (scan, empty, "brain mask is empty"),
        (constant_inside, _save(tmp_path / "mask.nii.gz", mask.astype(np.uint8)), "constant"),
    ]:
        code, err = _restore([path, "--brain-mask", brain], tiny_model_dir, out, capsys)
        _assert_one_line_error(code, err, message, out)


def test_huge_volume_refused_before_reading(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A header that promises 8e9 voxels is refused from the header alone, not by exhausting
    memory; the limit is documented and can be changed with NAPARI_UAD_MAX_VOXELS."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((2000, 2000, 2000))
    huge = tmp_path / "huge.nii"
    huge.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 4096)  # no data behind it
    out = tmp_path / "out"
    code, err = _restore([huge], tiny_model_dir, out, capsys)
    _assert_one_line_error(code, err, "too large", out)
    assert "NAPARI_UAD_MAX_VOXELS" in err[-1]

    image, _, _ = _phantom()
    scan = _save(tmp_path / "scan.nii.gz", image * 900)
    monkeypatch.setenv("NAPARI_UAD_MAX_VOXELS", str(image.size - 1))
    code, err = _restore([scan], tiny_model_dir, out, capsys)
    _assert_one_line_error(code, err, "too large", out)
    # The same check guards arrays that did not come from a file (napari layers).
    with pytest.raises(InputError, match="too large"):
        detect(Scan(image, np.eye(4)), model=tiny_model_dir, device="cpu")
    monkeypatch.setenv("NAPARI_UAD_MAX_VOXELS", "lots")
    code, err = _restore([scan], tiny_model_dir, out, capsys)
    _assert_one_line_error(code, err, "NAPARI_UAD_MAX_VOXELS", out)


def _run(path, model_dir, out, capsys):
    """Run restore, expecting success; returns the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = _restore([path], model_dir, out, capsys)
    assert code == 0, err
    return [str(w.message) for w in caught]


def test_2d_nifti_and_png_are_one_slice(tmp_path, tiny_model_dir, capsys):
    from skimage import io as skio

    image, _, _ = _phantom((48, 48))
    flat = _save(tmp_path / "slice.nii.gz", image * 700)
    out = tmp_path / "out"
    _run(flat, tiny_model_dir, out, capsys)
    anomaly = nib.load(out / "slice_anomaly.nii.gz")
    assert anomaly.shape == (48, 48)  # a 2-D file gets 2-D outputs
    np.testing.assert_allclose(anomaly.affine, nib.load(flat).affine)
    assert np.isfinite(anomaly.get_fdata()).all() and anomaly.get_fdata().max() > 0

    png = tmp_path / "picture.png"
    skio.imsave(png, (image * 255).astype(np.uint8), check_contrast=False)
    _run(png, tiny_model_dir, out, capsys)
    assert nib.load(out / "picture_mask.nii.gz").shape == (48, 48, 1)


def test_4d_uses_the_first_volume_with_a_warning(tmp_path, tiny_model_dir, capsys):
    image, _, _ = _phantom()
    series = np.stack([image * 900, image * 0 + 5, image * 300], axis=-1)
    out = tmp_path / "out"
    err = _run(_save(tmp_path / "dwi.nii.gz", series), tiny_model_dir, out, capsys)
    assert any("first volume" in message for message in err)
    assert nib.load(out / "dwi_anomaly.nii.gz").shape == image.shape
    first = _run(_save(tmp_path / "first.nii.gz", image * 900), tiny_model_dir, out, capsys)
    assert not any("first volume" in message for message in first)
    np.testing.assert_allclose(
        nib.load(out / "dwi_anomaly.nii.gz").get_fdata(),
        nib.load(out / "first_anomaly.nii.gz").get_fdata(),
    )


def test_nan_and_inf_voxels_become_zero_with_a_warning(tmp_path, tiny_model_dir, capsys):
    image, mask, _ = _phantom()
    data = image * 900
    inside = np.argwhere(mask)
    for (i, j, k), value in zip(inside[::97][:6], [np.nan, np.inf, -np.inf] * 2, strict=True):
        data[i, j, k] = value
    out = tmp_path / "out"
    err = _run(_save(tmp_path / "nan.nii.gz", data), tiny_model_dir, out, capsys)
    assert any("6 non-finite voxels replaced by 0" in line for line in err)
    for suffix in ("healthy", "anomaly"):
        assert np.isfinite(nib.load(out / f"nan_{suffix}.nii.gz").get_fdata()).all()
    # Arrays that did not come from a file (a napari layer) are cleaned the same way.
    with pytest.warns(UserWarning, match="6 NaN or Inf voxels"):
        result = detect(Scan(data, np.eye(4)), model=tiny_model_dir, device="cpu", steps=2)
    assert np.isfinite(result.anomaly).all() and np.isfinite(result.healthy).all()


@pytest.fixture(scope="module")
def float_reference(tiny_model_dir):
    image, mask, _ = _phantom()
    affine = np.diag([1.2, 1.2, 3.0, 1.0])
    return detect(Scan(image, affine), model=tiny_model_dir, device="cpu", brain_mask=mask, steps=2)


@pytest.mark.parametrize(
    "dtype, scale, offset",
    [
        (np.uint8, 255, 0),
        (np.int8, 127, -128),
        (np.int16, 32767, -32768),
        (np.uint16, 65535, 0),
        (np.int32, 2**31 - 1, -(2**31)),
        (np.uint32, 2**32 - 1, 0),
        (np.int64, 2**62, -(2**62)),
        (np.uint64, 2**63, 0),
        (np.float32, 3e38, -3e38),
        (np.float64, 1e-30, 0),
    ],
)
def test_integer_types_and_extreme_intensities(
    dtype, scale, offset, tmp_path, tiny_model_dir, float_reference
):
    """Full-range integer types and extreme float ranges: no overflow, same map as float."""
    image, mask, _ = _phantom()
    stored = image * scale + offset * (image > 0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        stored = np.clip(np.rint(stored.astype(np.float64)), info.min, info.max)
    path = _save(tmp_path / "scan.nii", stored.astype(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or cast warnings
        scan = read_scan(path)
        result = detect(scan, model=tiny_model_dir, device="cpu", brain_mask=mask, steps=2)
    reference = float_reference
    assert np.isfinite(result.healthy).all() and np.isfinite(result.anomaly).all()
    # The intensities are normalised inside the brain, so the map is that of the float image
    # (up to the rounding of 8-bit types).
    tolerance = 0.1 if np.dtype(dtype).itemsize == 1 else 1e-3
    assert np.abs(result.anomaly - reference.anomaly).max() < tolerance


@pytest.mark.parametrize(
    "spacing",
    [(0.2, 0.2, 6.0), (1.0, 3.0, 1.0), (4.0, 0.5, 0.5), (1e-5, 1e-5, 1e-5), (500.0, 500.0, 900.0)],
)
def test_anisotropic_and_tiny_voxels(spacing, tmp_path, tiny_model_dir):
    image, mask, truth = _phantom((40, 40, 4))
    affine = np.diag([*spacing, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tiny voxels are not an "invalid affine"
        scan = read_scan(_save(tmp_path / "scan.nii.gz", image * 500, affine))
    assert scan.spacing == pytest.approx(spacing, rel=1e-5)
    result = detect(scan, model=tiny_model_dir, device="cpu", brain_mask=mask, steps=2)
    assert result.anomaly.shape == image.shape and np.isfinite(result.anomaly).all()
    assert result.anomaly[mask].max() > 0 and (result.anomaly[~mask] == 0).all()
    voxel_ml = np.prod(spacing) / 1000.0
    for lesion in result.lesions:
        assert lesion.volume_ml == pytest.approx(lesion.n_voxels * voxel_ml, rel=1e-6)
    out = write_nifti(tmp_path / "anomaly.nii.gz", result.anomaly, like=scan)
    np.testing.assert_allclose(nib.load(out).affine, affine)


def _rotation(axis, degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.mark.parametrize(
    "flips, order, tilt",
    [
        ((0,), (0, 1, 2), 0),  # LAS (radiological storage)
        ((0, 1), (0, 1, 2), 0),  # LPS (DICOM-like)
        ((2,), (1, 0, 2), 0),  # axes swapped, inferior first
        ((), (0, 2, 1), 0),  # stored coronal
        ((1,), (0, 1, 2), 20),  # oblique: tilted 20 degrees, nearest axes are still RAS
    ],
)
def test_flipped_and_oblique_affines_give_the_same_map(
    flips, order, tilt, tmp_path, tiny_model_dir
):
    """The same anatomy stored in another orientation gives the same map, on the file's grid,
    and the outputs carry the file's affine exactly."""
    image, mask, _ = _phantom((40, 44, 5))
    spacing = np.array([1.1, 1.3, 2.5])
    ras_affine = np.diag([*spacing, 1.0])
    reference = detect(
        Scan(image * 600, ras_affine), model=tiny_model_dir, device="cpu", steps=2, eta=1.0
    )

    # Store the RAS array flipped and permuted, with the affine that keeps world positions.
    stored = image * 600
    linear = np.diag(spacing)
    origin = np.zeros(3)
    for axis in flips:
        stored = np.flip(stored, axis)
        origin += linear[:, axis] * (image.shape[axis] - 1)
        linear[:, axis] *= -1
    stored = np.transpose(stored, order)
    linear = _rotation(0, tilt) @ linear[:, list(order)]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, _rotation(0, tilt) @ origin
    path = _save(tmp_path / "stored.nii.gz", np.ascontiguousarray(stored), affine)

    out = tmp_path / "out"
    args = ["restore", str(path), "--method", "anoddpm", "--model", str(tiny_model_dir)]
    assert main([*args, "--device", "cpu", "--steps", "2", "--eta", "1", "--out", str(out)]) == 0
    written = nib.load(out / "stored_anomaly.nii.gz")
    np.testing.assert_allclose(written.affine, nib.load(path).affine, atol=1e-6)
    back = np.asarray(written.dataobj).transpose(np.argsort(order))
    for axis in flips:
        back = np.flip(back, axis)
    np.testing.assert_allclose(back, reference.anomaly, atol=1e-5)


@pytest.mark.gui
def test_corrupt_file_in_napari_gives_a_notification(make_napari_viewer, tmp_path):
    """Dropping a corrupt file on napari: a one-line notification, no layer, viewer usable."""
    from napari.utils.notifications import notification_manager

    image, _, _ = _phantom()
    good = _save(tmp_path / "good.nii.gz", image * 900)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:300])
    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    # What a drop does once napari-uad is the reader for .nii.gz (napari asks which reader to
    # use the first time, as for any file two plugins can read).
    viewer.window._qt_viewer._qt_open([str(bad)], stack=False, plugin="napari-uad")
    assert len(viewer.layers) == 0
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("bad.nii.gz" in m and "\n" not in m for m in messages), messages
    # Two files, one bad: the good one opens.
    viewer.window._qt_viewer._qt_open([str(bad), str(good)], stack=False, plugin="napari-uad")
    assert [layer.name for layer in viewer.layers] == ["good"]
    assert viewer.layers["good"].data.shape == image.shape[::-1]


@pytest.mark.parametrize(
    "truth, brain, message",
    [
        ("empty", None, "no positive voxels"),
        ("full", None, "no negative voxels"),
        ("full", "empty", "mask is empty"),
        ("other_grid", None, "voxel grid"),
    ],
)
def test_evaluate_bad_truth_and_masks(truth, brain, message, tmp_path, capsys):
    rng = np.random.default_rng(0)
    shape = (10, 12, 3)
    files = {
        "map": _save(tmp_path / "map.nii.gz", rng.random(shape).astype(np.float32)),
        "empty": _save(tmp_path / "empty.nii.gz", np.zeros(shape, np.uint8)),
        "full": _save(tmp_path / "full.nii.gz", np.ones(shape, np.uint8)),
        "other_grid": _save(tmp_path / "other.nii.gz", np.ones((10, 12, 4), np.uint8)),
    }
    args = ["evaluate", str(files["map"]), "--truth", str(files[truth])]
    if brain:
        args += ["--brain-mask", str(files[brain])]
    capsys.readouterr()
    code = main([*args, "--json", str(tmp_path / "out" / "metrics.json")])
    _assert_one_line_error(code, capsys.readouterr().err.splitlines(), message, tmp_path / "out")


def _nifti_with_forms(path, sform=None, qform=None, shape=(12, 10, 6)):
    """Write a NIfTI whose header holds exactly these sform/qform (code 1), unmodified."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_xyzt_units("mm")
    header.set_qform(qform, code=1 if qform is not None else 0)
    header.set_sform(sform, code=1 if sform is not None else 0)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    # With affine=None nibabel keeps the header's transforms as they are.
    nib.save(nib.Nifti1Image(data, None, header=header), path)
    return path


def _shifted(dx=0.0, flip=False):
    affine = np.eye(4)
    affine[:3, 3] = [-40.0 + dx, -60.0, -20.0]
    if flip:
        affine[0, 0] = -1.0
    return affine


@pytest.mark.parametrize(
    "qform, message",
    [
        (_shifted(flip=True), "disagree in orientation"),  # qform LAS, sform RAS
        (_shifted(dx=5.0), "differ by up to 5.0 mm"),
    ],
)
def test_qform_and_sform_that_disagree_give_a_warning(qform, message, tmp_path):
    """nibabel's rule decides (sform code > 0 wins), but the user is told they disagree."""
    path = _nifti_with_forms(tmp_path / "forms.nii.gz", sform=_shifted(), qform=qform)
    with pytest.warns(UserWarning, match=message) as caught:
        scan = read_scan(path)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    np.testing.assert_allclose(scan.affine, _shifted())
    # Agreeing forms (within 1 mm) give no warning.
    same = _nifti_with_forms(tmp_path / "same.nii.gz", sform=_shifted(), qform=_shifted(0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_scan(same)


@pytest.mark.parametrize("bad", ["nan", "inf", "singular"])
def test_invalid_sform_falls_back_to_a_valid_qform(bad, tmp_path):
    """A NaN/Inf (or singular) sform no longer throws away a valid qform (outputs were 76 mm
    off, at the voxel-size fallback)."""
    sform = _shifted()
    if bad == "singular":
        sform[:3, 2] = 0.0
    else:
        sform[0, 3] = float(bad)
    path = _nifti_with_forms(tmp_path / "forms.nii", sform=sform, qform=_shifted())
    with pytest.warns(UserWarning, match="invalid sform .*using its qform"):
        scan = read_scan(path)
    np.testing.assert_allclose(scan.affine, _shifted(), atol=1e-6)


def _png_header_only(path, width, height):
    """A PNG whose header says width x height, with almost no pixel data behind it."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_huge_images_are_refused_from_the_header(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A 20000 x 20000 PNG (a few KB on disk) is refused from its header, by the same limit as
    NIfTI, without decoding (it was decoded first, or refused with Pillow's own message)."""
    import skimage.io
    import tifffile
    from skimage import io as skio

    def decode(*args, **kwargs):
        raise AssertionError("decoded")

    big = _png_header_only(tmp_path / "big.png", 20000, 20000)
    out = tmp_path / "out"
    monkeypatch.setattr(skimage.io, "imread", decode)
    code, err = _restore([big], tiny_model_dir, out, capsys)
    _assert_one_line_error(code, err, "big.png is too large: (20000, 20000)", out)
    monkeypatch.undo()

    image = (np.random.default_rng(0).random((30, 40)) * 255).astype(np.uint8)
    skio.imsave(tmp_path / "small.png", image, check_contrast=False)
    skio.imsave(tmp_path / "small.tif", image, check_contrast=False)
    monkeypatch.setenv("NAPARI_UAD_MAX_VOXELS", "1000")
    monkeypatch.setattr(skimage.io, "imread", decode)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", decode)
    for name in ("small.png", "small.tif"):
        with pytest.raises(InputError, match=r"too large: \(30, 40\) is 1,200 voxels"):
            read_scan(tmp_path / name)


def test_huge_dicom_series_is_refused_before_reading_pixels(tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    from napari_uad.io import dicom

    from .test_dicom import write_series

    write_series(tmp_path / "series", np.zeros((20, 30, 6)))

    def read_pixels(*args):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(dicom, "_read_pixels", read_pixels)
    monkeypatch.setenv("NAPARI_UAD_MAX_VOXELS", "3000")
    with pytest.raises(InputError, match=r"series is too large: \(30, 20, 6\) is 3,600 voxels"):
        read_scan(tmp_path / "series")


def _damaged_gzip(tmp_path, damage):
    image, _, _ = _phantom()
    raw = bytearray(gzip.compress(nib.Nifti1Image(image * 900, np.eye(4)).to_bytes()))
    if damage == "flipped_byte":
        raw[len(raw) // 2] ^= 0x01  # inside the deflate data: gzip -t fails
    elif damage == "no_trailer":
        raw = raw[:-8]
    elif damage == "bad_crc":
        raw[-8] ^= 0xFF
    elif damage == "bad_length":
        raw[-1] ^= 0x01
    path = tmp_path / f"{damage}.nii.gz"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("damage", ["flipped_byte", "no_trailer", "bad_crc", "bad_length"])
def test_damaged_gzip_is_reported(damage, tmp_path):
    """nibabel does not read a .gz to its end, so its CRC was never checked: these read silently
    (wrong voxels, or a missing end) before."""
    path = _damaged_gzip(tmp_path, damage)
    with pytest.raises(InputError, match="the gzip data is damaged") as caught:
        read_scan(path)
    message = str(caught.value)
    assert "\n" not in message and message.endswith("re-export or re-copy the file"), message


def test_gzip_name_on_an_uncompressed_file(tmp_path):
    image, _, _ = _phantom()
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(nib.Nifti1Image(image, np.eye(4)).to_bytes())
    with pytest.raises(InputError, match="not gzip-compressed.*rename it to .nii"):
        read_scan(path)


def test_symbolic_link_loop_and_broken_link(tmp_path):
    (tmp_path / "a.nii.gz").symlink_to(tmp_path / "b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to(tmp_path / "a.nii.gz")
    with pytest.raises(InputError, match="symbolic link loop"):
        read_scan(tmp_path / "a.nii.gz")
    (tmp_path / "c.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(InputError, match="broken symbolic link"):
        read_scan(tmp_path / "c.nii.gz")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ImagePositionPatient", [float("nan"), 0.0, 0.0], "invalid ImagePositionPatient"),
        ("ImagePositionPatient", [1.0, 2.0], "invalid ImagePositionPatient"),
        ("PixelSpacing", [0.0, 0.9], "invalid PixelSpacing"),
        ("PixelSpacing", [-0.8, 0.9], "invalid PixelSpacing"),
        ("PixelSpacing", [float("nan"), 0.9], "invalid PixelSpacing"),
        ("ImageOrientationPatient", [0.0] * 6, "invalid ImageOrientationPatient"),
        ("ImageOrientationPatient", [1.0, 0, 0, 1.0, 0, 0], "invalid ImageOrientationPatient"),
    ],
)
def test_dicom_with_invalid_geometry_names_the_field(field, value, message, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from .test_dicom import write_series

    folder = tmp_path / "series"
    write_series(folder, np.ones((8, 9, 4)))
    target = sorted(folder.iterdir())[1]
    ds = pydicom.dcmread(target)
    setattr(ds, field, value)
    ds.save_as(target)
    with pytest.raises(InputError, match=f"{target.name} has an {message}") as caught:
        read_scan(folder)
    assert "\n" not in str(caught.value)


def test_truncated_dicom_is_called_truncated_not_compressed(tmp_path):
    pytest.importorskip("pydicom")
    from .test_dicom import write_series

    folder = tmp_path / "series"
    write_series(folder, np.ones((8, 9, 4)))
    target = sorted(folder.iterdir())[2]
    target.write_bytes(target.read_bytes()[:-40])
    with pytest.raises(InputError, match="truncated or corrupt") as caught:
        read_scan(folder)
    assert "pylibjpeg" not in str(caught.value)


@pytest.mark.parametrize("value", ["inf", "1e400", "abc", "-5", "0", "nan", "2.5"])
def test_bad_max_voxels_setting_is_one_line(value, tmp_path, monkeypatch):
    path = _save(tmp_path / "scan.nii.gz", np.ones((8, 8, 4), np.float32))
    monkeypatch.setenv("NAPARI_UAD_MAX_VOXELS", value)
    with pytest.raises(InputError, match="NAPARI_UAD_MAX_VOXELS must be a positive integer"):
        read_scan(path)
    monkeypatch.setenv("NAPARI_UAD_MAX_VOXELS", "1e9")  # a whole number in any notation
    read_scan(path)


def test_nibabel_header_notes_become_one_warning(tmp_path, capfd):
    """nibabel prints its header fixes ("sform_code 300 not valid; setting to 0") to stderr
    itself; they now come as one warning naming the file."""
    path = _save(tmp_path / "scan.nii", np.ones((8, 8, 4), np.float32))
    raw = bytearray(path.read_bytes())
    raw[254:256] = np.int16(300).tobytes()  # sform_code
    path.write_bytes(bytes(raw))
    capfd.readouterr()
    with pytest.warns(UserWarning, match="scan.nii has a damaged header.*sform_code 300"):
        read_scan(path)
    assert capfd.readouterr().err == ""


def test_unreadable_image_leaves_no_open_file(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"not a png" * 50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(InputError, match="Cannot read garbage.png: not a valid image"):
            read_scan(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_probability_mask_is_not_called_empty(tmp_path, capsys):
    """A probability map given as a mask: said so (it was "empty"); a mask with fractional
    edges (resampled) is thresholded at 0.5 with a warning."""
    from napari_uad.io import read_mask

    shape = (10, 12, 3)
    like = read_scan(_save(tmp_path / "map.nii.gz", np.ones(shape, np.float32)))
    prob = _save(tmp_path / "prob.nii.gz", np.where(np.arange(360).reshape(shape) % 3, 0.3, 0.0))
    args = ["evaluate", str(tmp_path / "map.nii.gz"), "--truth", str(prob)]
    capsys.readouterr()
    code = main([*args, "--json", str(tmp_path / "out" / "metrics.json")])
    err = capsys.readouterr().err.splitlines()
    _assert_one_line_error(code, err, "holds values between 0 and 1 (max 0.3)", tmp_path / "out")

    edges = np.zeros(shape, np.float32)
    edges[2:8, 3:9] = 1.0
    edges[1, 3:9] = 0.6
    edges[8, 3:9] = 0.2
    with pytest.warns(UserWarning, match="not binary .*using the voxels above 0.5"):
        mask = read_mask(_save(tmp_path / "edges.nii.gz", edges), like=like)
    np.testing.assert_array_equal(mask, edges > 0.5)


def test_invalid_affine_warning_shows_plain_numbers(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((8, 8, 4))
    header.set_zooms((1.2, 1.2, 3.0))
    header.set_sform(np.zeros((4, 4)), code=1)
    nib.save(
        nib.Nifti1Image(np.ones((8, 8, 4), np.float32), None, header=header), tmp_path / "z.nii"
    )
    with pytest.warns(UserWarning, match="invalid affine") as caught:
        read_scan(tmp_path / "z.nii")
    message = str(caught[0].message)
    assert "np." not in message and "(1.2, 1.2, 3) mm" in message, message

"""Bad and unusual inputs: each gives a clear one-line error (exit code 2) or works as documented.

Issue 8, part 1. Errors go through the command line (``main([...])``) so the test sees what a
user sees: one line starting with ``napari-uad: error:``, exit code 2 and no output written.
Inputs that are accepted (2-D, 4-D, NaN, integer types, odd spacings and orientations) are run
through the pipeline with the tiny model and checked on the input's grid.
"""

from __future__ import annotations

import gzip
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main
from napari_uad.io import InputError, Scan, read_scan, write_nifti
from napari_uad.phantoms import add_lesions, make_brain
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
    constant_inside = _save(tmp_path / "flat.nii.gz", np.where(mask, 5.0, 0.0).astype(np.float32))
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

"""Property-based tests (hypothesis) over affines, shapes, dtypes and intensity ranges.

Issue 8, part 6: the preprocessing round trip, the NIfTI reader and writer, damaged files and
model names. Example counts are bounded (the module runs in well under 30 s); failures print
a reproducible example.
"""

from __future__ import annotations

import gzip
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from napari_uad.io import InputError, Scan, read_scan, write_nifti
from napari_uad.models.checkpoint import CheckpointError
from napari_uad.models.registry import model_search_path, resolve_model
from napari_uad.preprocess import canonical_affine, from_canonical, prepare_volume, to_canonical

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXTURES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _rotation(angles):
    out = np.eye(3)
    for axis, degrees in enumerate(angles):
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


@st.composite
def affines(draw, *, shear=False):
    """Voxel-to-world affines: any axis order and flips, anisotropic or tiny voxels, oblique."""
    order = draw(st.permutations([0, 1, 2]))
    flips = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    sizes = draw(
        st.lists(
            st.floats(1e-3, 50.0, allow_nan=False, allow_infinity=False), min_size=3, max_size=3
        )
    )
    angles = draw(st.lists(st.floats(-30.0, 30.0), min_size=3, max_size=3))
    linear = np.eye(3)[:, list(order)] * np.array(flips) * np.array(sizes)
    linear = _rotation(angles) @ linear
    if shear:
        linear = linear @ (np.eye(3) + np.triu(np.full((3, 3), draw(st.floats(-0.2, 0.2))), 1))
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = draw(st.lists(st.floats(-200.0, 200.0), min_size=3, max_size=3))
    return affine


shapes3 = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6))


@FAST
@given(shape=shapes3, affine=affines(), extra=st.integers(0, 2))
def test_canonical_round_trip_is_exact_and_keeps_world_positions(shape, affine, extra):
    data = np.arange(np.prod(shape) * (extra + 1), dtype=np.int64).reshape(
        shape + ((extra + 1,) if extra else ())
    )
    ras, orientation = to_canonical(data, affine)
    np.testing.assert_array_equal(from_canonical(ras, orientation), data)
    # Every RAS voxel sits where its source voxel sat in the world.
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    moved, _ = to_canonical(index, affine)
    ras_affine = canonical_affine(affine, shape)
    ras_index = np.stack(np.meshgrid(*map(np.arange, moved.shape[:3]), indexing="ij"), axis=-1)
    world_from_ras = ras_index @ ras_affine[:3, :3].T + ras_affine[:3, 3]
    world_from_source = moved @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(
        world_from_ras, world_from_source, atol=1e-6 * (1 + abs(affine).max())
    )


DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64]


@FIXTURES
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(2, 8), st.integers(2, 8), st.integers(1, 5)),
    affine=affines(shear=True),
    exponent=st.integers(-30, 30),
    seed=st.integers(0, 2**16),
    compressed=st.booleans(),
)
def test_nifti_round_trip(dtype, shape, affine, exponent, seed, compressed, tmp_path):
    """A user's file of any dtype, range and geometry reads as float32 with its values, and
    outputs written on its grid carry its affine exactly."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    else:
        values = (rng.standard_normal(shape) * 10.0**exponent).astype(dtype)
    suffix = ".nii.gz" if compressed else ".nii"
    path = tmp_path / f"in{suffix}"
    img = nib.Nifti1Image(values, affine)
    img.header.set_data_dtype(dtype)
    nib.save(img, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan = read_scan(path)
    assert scan.data.dtype == np.float32
    expected = np.asarray(values, dtype=np.float64).astype(np.float32).reshape(scan.shape)
    np.testing.assert_array_equal(scan.data, expected)
    out = write_nifti(tmp_path / f"out{suffix}", scan.data, like=scan)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, nib.load(path).affine, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.dataobj).reshape(scan.shape), scan.data)


@st.composite
def volumes(draw):
    shape = draw(st.tuples(st.integers(3, 20), st.integers(3, 20), st.integers(1, 5)))
    kind = draw(st.sampled_from(["blob", "noise", "constant", "sparse", "zeros"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int16]))
    exponents = st.integers(0, 3) if dtype == np.int16 else st.integers(-20, 30)
    scale = 10.0 ** draw(exponents)
    if kind == "blob":
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
        radius = draw(st.floats(0.2, 1.5))
        data = (np.sqrt((grid[:2] ** 2).sum(0)) < radius) * (1 + rng.random(shape))
    elif kind == "noise":
        data = rng.standard_normal(shape)
    elif kind == "constant":
        data = np.full(shape, 3.0)
    elif kind == "sparse":
        data = (rng.random(shape) > 0.97) * rng.random(shape)
    else:
        data = np.zeros(shape)
    data = (data * scale).astype(dtype)
    if draw(st.booleans()) and data.dtype.kind == "f":
        data.flat[rng.integers(0, data.size, 3)] = [np.nan, np.inf, -np.inf]
    return data


@FAST
@given(data=volumes(), affine=affines(), with_mask=st.booleans())
def test_prepare_volume_round_trip(data, affine, with_mask):
    """Any volume either gives a clear InputError or model slices in [0, 1] that map back onto
    the input grid (same shape, finite, in [0, 1])."""
    finite = np.where(np.isfinite(data), data, 0)
    mask = (finite > 0) if with_mask else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_volume(Scan(data, affine), brain_mask=mask, grid=16)
    except InputError as error:
        assert "\n" not in str(error)
        event("refused with InputError")
        return
    event("prepared")
    slices = prepared.model_slices
    assert slices.shape[1:] == (16, 16) and slices.dtype == np.float32
    assert np.isfinite(slices).all() and slices.min() >= 0 and slices.max() <= 1
    back = prepared.to_input_grid(slices)
    assert back.shape == data.shape and back.dtype == np.float32
    assert np.isfinite(back).all() and back.min() >= 0 and back.max() <= 1 + 1e-6
    brain = prepared.to_input_grid(prepared.mask_model)
    assert brain.dtype == np.bool_ and brain.shape == data.shape
    np.testing.assert_array_equal(prepared.brain_mask_input.shape, data.shape)
    if mask is not None:
        np.testing.assert_array_equal(prepared.brain_mask_input, mask)


def _valid_file(tmp_path, compressed):
    rng = np.random.default_rng(0)
    data = (rng.random((6, 7, 3)) * 100).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.5, 1.0, 3.0, 1.0]))
    img.header.set_slope_inter(0.5, 2.0)
    path = tmp_path / ("ok.nii.gz" if compressed else "ok.nii")
    nib.save(img, path)
    raw = path.read_bytes()
    return gzip.decompress(raw) if compressed else raw


@FIXTURES
@given(
    compressed=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 700)),
)
def test_damaged_files_give_input_error_or_a_clean_scan(compressed, edits, cut, tmp_path):
    """Random byte changes in the header or data, and truncation: the reader either returns a
    float32 scan without NaN or Inf, or raises InputError (never another exception)."""
    raw = bytearray(_valid_file(tmp_path, compressed))
    for position, value in edits:
        raw[position % len(raw)] = value
    if cut is not None:
        raw = raw[: cut % len(raw)]
    path = tmp_path / ("damaged.nii.gz" if compressed else "damaged.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))
    old = os.environ.get("NAPARI_UAD_MAX_VOXELS")
    os.environ["NAPARI_UAD_MAX_VOXELS"] = str(10**6)  # a damaged size field is not read
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scan = read_scan(path)
    except InputError as error:
        assert "\n" not in str(error)
        event("refused with InputError")
        return
    finally:
        if old is None:
            os.environ.pop("NAPARI_UAD_MAX_VOXELS")
        else:
            os.environ["NAPARI_UAD_MAX_VOXELS"] = old
    event("read")
    assert scan.data.dtype == np.float32 and np.isfinite(scan.data).all()
    assert scan.data.ndim == 3 and np.isfinite(scan.affine).all()


@FIXTURES
@given(name=st.text(min_size=1, max_size=20))
def test_model_names_stay_in_the_models_folders(name, tmp_path, monkeypatch):
    """A model name (no path separator) resolves inside a models folder or is refused."""
    assume("/" not in name and os.sep not in name and "\x00" not in name)
    assume(name not in (".", ".."))  # "." and ".." are paths
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    try:
        path = resolve_model(name)
    except CheckpointError as error:
        assert "\n" not in str(error)
        return
    folders = [f.resolve() for f in model_search_path()]
    assert path.resolve().parent in folders


def test_examples_are_bounded():
    """Keep the module fast: the settings above cap every property."""
    assert FAST.max_examples <= 100 and FIXTURES.max_examples <= 60


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from napari_uad.io import InputError, Scan
from napari_uad.preprocess import (
    PreparedVolume,
    canonical_affine,
    estimate_brain_mask,
    from_canonical,
    from_model_grid,
    normalise_intensity,
    prepare_volume,
    slice_geometry,
    slices_with_brain,
    to_canonical,
    to_model_grid,
)

SHAPE = (40, 48, 12)


def _ellipsoid(shape=SHAPE, radii=(0.8, 0.75, 0.8), centre=(0.5, 0.5, 0.5)):
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    r2 = sum(((g - c) / (r / 2)) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return r2 <= 1.0


def _smooth(shape=SHAPE):
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return 1.0 + 0.5 * np.sin(x / 7.0) * np.cos(y / 9.0) + 0.02 * z


def _rotation_z(degrees):
    a = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return rot


AFFINES = {
    "RAS": np.diag([1.0, 1.0, 3.0, 1.0]),
    "LAS": np.diag([-1.0, 1.0, 3.0, 1.0]),
    "LPS": np.diag([-1.2, -0.9, 3.0, 1.0]),
    "permuted": np.array([[0, 0, 3.0, 0], [-1.0, 0, 0, 0], [0, 1.1, 0, 0], [0, 0, 0, 1]]),
    "oblique": _rotation_z(20) @ np.diag([-1.0, 1.0, 3.0, 1.0]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_canonical_round_trip(name):
    affine = AFFINES[name]
    data = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    ras, orientation = to_canonical(data, affine)
    np.testing.assert_array_equal(from_canonical(ras, orientation), data)

    ras_affine = canonical_affine(affine, data.shape)
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    voxel = np.array([3, 5, 7, 1.0])
    world = affine @ voxel
    ras_voxel = np.rint(np.linalg.solve(ras_affine, world)).astype(int)
    assert ras[tuple(ras_voxel[:3])] == data[3, 5, 7]


def test_canonical_las_flips_first_axis():
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    ras, _ = to_canonical(data, AFFINES["LAS"])
    np.testing.assert_array_equal(ras, data[::-1])
    assert ras.flags.c_contiguous


def test_estimate_brain_mask_blob_with_hole_and_speck():
    blob = _ellipsoid()
    hole = _ellipsoid(radii=(0.2, 0.2, 0.4))
    volume = np.where(blob, 100.0, 0.0).astype(np.float32)
    volume[hole] = 0.0
    volume[1:3, 1:3, 1:3] = 80.0
    mask = estimate_brain_mask(volume)
    np.testing.assert_array_equal(mask, blob)


def test_estimate_brain_mask_noisy_background():
    rng = np.random.default_rng(2)
    blob = _ellipsoid()
    clean = np.where(blob, 100.0, 0.0)
    noisy = np.abs(clean + rng.normal(0, 5.0, SHAPE) + 1j * rng.normal(0, 5.0, SHAPE))
    mask = estimate_brain_mask(noisy.astype(np.float32))
    assert np.mean(mask != blob) < 0.01


def test_estimate_brain_mask_bad_input():
    with pytest.raises(InputError, match="constant"):
        estimate_brain_mask(np.zeros(SHAPE, dtype=np.float32))
    with pytest.raises(InputError, match="constant"):
        estimate_brain_mask(np.full(SHAPE, 7.0, dtype=np.float32))
    with pytest.raises(InputError, match="threshold"):
        estimate_brain_mask(_ellipsoid().astype(np.float32), threshold=5.0)


def test_normalise_intensity_percentiles():
    values = np.arange(1, 101, dtype=np.float32)
    volume = np.zeros((10, 10, 2), dtype=np.float32)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[:, :, 0] = True
    volume[:, :, 0] = values.reshape(10, 10)
    volume[:, :, 1] = 1000.0
    out = normalise_intensity(volume, mask, lower_percentile=10, upper_percentile=90)
    lo, hi = np.percentile(values, [10, 90])
    assert out.dtype == np.float32
    expected = np.clip((volume[:, :, 0] - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out[:, :, 0], expected, rtol=1e-5, atol=1e-6)
    assert out[:, :, 1].max() == 0
    assert out.min() == 0 and out.max() == 1


def test_normalise_intensity_errors():
    volume = np.ones(SHAPE, dtype=np.float32)
    with pytest.raises(InputError, match="empty"):
        normalise_intensity(volume, np.zeros(SHAPE, dtype=bool))
    with pytest.raises(InputError, match="constant"):
        normalise_intensity(volume, np.ones(SHAPE, dtype=bool))
    with pytest.raises(InputError, match="Percentiles"):
        normalise_intensity(
            volume, np.ones(SHAPE, dtype=bool), lower_percentile=50, upper_percentile=40
        )


@pytest.mark.parametrize(
    ("shape", "spacing", "grid"),
    [
        ((41, 37, 5), (1.0, 1.0), 32),
        ((40, 48, 3), (0.8, 1.7), 32),
        ((17, 23, 2), (1.0, 1.0), 64),
        ((131, 97, 2), (0.5, 0.7), 16),
    ],
)
def test_geometry_round_trip_restores_shapes(shape, spacing, grid):
    mask = _ellipsoid(shape, radii=(0.6, 0.7, 2.0))
    geometry = slice_geometry(mask, spacing, grid=grid)
    assert geometry.size[0] * spacing[0] == pytest.approx(geometry.size[1] * spacing[1])
    volume = _smooth(shape) * mask
    model = to_model_grid(volume, geometry)
    assert model.shape == (shape[2], grid, grid) and model.dtype == np.float32
    back = from_model_grid(model, geometry, shape_xy=shape[:2])
    assert back.shape == shape and back.dtype == np.float32
    mask_model = to_model_grid(mask, geometry, indices=[1, 0])
    assert mask_model.shape == (2, grid, grid) and mask_model.dtype == bool
    mask_back = from_model_grid(mask_model, geometry)
    assert mask_back.shape == shape[:2] + (2,) and mask_back.dtype == bool


def test_geometry_box_larger_than_image_and_tiny_box():
    mask = np.ones((9, 7, 1), dtype=bool)
    geometry = slice_geometry(mask, (1.0, 1.0), grid=64)
    assert geometry.origin[0] < -0.5 and geometry.origin[1] < -0.5
    model = to_model_grid(mask.astype(np.float32), geometry)
    assert model[0, 0, 0] == 0 and model[0, 32, 32] == 1
    assert from_model_grid(model, geometry).shape == (9, 7, 1)

    tiny = np.zeros((30, 30, 1), dtype=bool)
    tiny[12, 20] = True
    geometry = slice_geometry(tiny, (1.0, 1.0), grid=16)
    model = to_model_grid(tiny, geometry)
    assert model.sum() > 100
    np.testing.assert_array_equal(from_model_grid(model, geometry)[:, :, 0], tiny[:, :, 0])


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.3)])
def test_geometry_smooth_image_round_trip(spacing):
    mask = _ellipsoid((61, 53, 3), radii=(0.8, 0.8, 2.0))
    volume = _smooth((61, 53, 3)) * mask
    geometry = slice_geometry(mask, spacing, grid=128)
    back = from_model_grid(to_model_grid(volume, geometry), geometry)
    interior = np.zeros_like(mask)
    for k in range(mask.shape[2]):
        interior[:, :, k] = binary_erosion(mask[:, :, k], iterations=2)
    error = np.abs(back - volume)[interior]
    assert error.max() < 0.02
    assert np.all(back[~mask] < 0.5 * volume.max())


def test_geometry_centred_and_square_in_mm():
    mask = np.zeros((60, 60, 4), dtype=bool)
    mask[10:30, 20:50, 1:3] = True
    geometry = slice_geometry(mask, (2.0, 1.0), grid=32, margin=0.0)
    assert geometry.side_mm == pytest.approx(40.0)
    assert geometry.size == pytest.approx((20.0, 40.0))
    assert geometry.origin == pytest.approx((9.5, 14.5))
    model = to_model_grid(mask, geometry)
    assert not model[0].any()
    np.testing.assert_array_equal(model[1].sum(axis=0), [0] * 4 + [32] * 24 + [0] * 4)


def test_slices_with_brain():
    mask = np.zeros((10, 10, 6), dtype=bool)
    mask[:, :, 1] = True
    mask[0, 0, 2] = True
    mask[:5, :, 3] = True
    np.testing.assert_array_equal(slices_with_brain(mask), [1, 3])
    np.testing.assert_array_equal(slices_with_brain(mask, min_fraction=0.0), [1, 2, 3])
    with pytest.raises(InputError, match="empty"):
        slices_with_brain(np.zeros_like(mask))


def _las_scan():
    brain = _ellipsoid()
    data = (_smooth() * 100.0 * brain).astype(np.float32)
    affine = np.diag([-1.0, 1.2, 3.0, 1.0])
    affine[:3, 3] = [20.0, -30.0, -15.0]
    return Scan(data=data, affine=affine), brain


def test_prepare_volume_round_trip_las():
    scan, brain = _las_scan()
    prepared = prepare_volume(scan, grid=64)
    assert isinstance(prepared, PreparedVolume)
    n = prepared.slice_indices.size
    assert prepared.model_slices.shape == (n, 64, 64)
    assert prepared.mask_model.shape == (n, 64, 64) and prepared.mask_model.dtype == bool
    assert 0 <= prepared.model_slices.min() and prepared.model_slices.max() <= 1
    np.testing.assert_array_equal(prepared.brain_mask_input, brain)
    assert prepared.spacing_ras == pytest.approx((1.0, 1.2, 3.0))

    back = prepared.to_input_grid(prepared.model_slices)
    assert back.shape == scan.shape and back.dtype == np.float32
    normalised_input = from_canonical(prepared.normalised, prepared.orientation)
    interior = np.zeros_like(brain)
    interior[:, :, 2:-2] = binary_erosion(brain, iterations=2)[:, :, 2:-2]
    assert np.abs(back - normalised_input)[interior].max() < 0.05

    mask_back = prepared.to_input_grid(prepared.mask_model)
    assert mask_back.dtype == bool
    assert np.mean(mask_back != brain) < 0.01
    with pytest.raises(InputError, match="model slices"):
        prepared.to_input_grid(prepared.model_slices[:-1])


def test_prepare_volume_given_mask_and_2d():
    scan, brain = _las_scan()
    prepared = prepare_volume(scan, brain_mask=brain, grid=32)
    np.testing.assert_array_equal(prepared.brain_mask_input, brain)
    with pytest.raises(InputError, match="shape"):
        prepare_volume(scan, brain_mask=brain[:-1])
    with pytest.raises(InputError, match="empty"):
        prepare_volume(scan, brain_mask=np.zeros_like(brain))

    image = Scan(data=scan.data[:, :, 6:7].copy(), affine=np.eye(4))
    prepared = prepare_volume(image, grid=32)
    assert prepared.model_slices.shape == (1, 32, 32)
    channels = prepared.model_slices[:, None]
    assert prepared.to_input_grid(channels).shape == image.shape

import numpy as np
import pytest
from scipy import ndimage

from napari_uad.data import phantoms


def test_make_brain_is_deterministic_and_seeded():
    image, mask = phantoms.make_brain((64, 64), seed=5)
    again, mask_again = phantoms.make_brain((64, 64), seed=5)
    other, _ = phantoms.make_brain((64, 64), seed=6)
    assert np.array_equal(image, again) and np.array_equal(mask, mask_again)
    assert not np.allclose(image, other)
    from_generator, _ = phantoms.make_brain((64, 64), seed=np.random.default_rng(5))
    assert from_generator.shape == (64, 64)


@pytest.mark.parametrize("seed", range(3))
def test_make_brain_looks_like_a_skull_stripped_t1(seed):
    image, mask = phantoms.make_brain((64, 64), seed=seed)
    assert image.dtype == np.float32 and mask.dtype == bool
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert (image[~mask] == 0).all()
    assert 0.3 < mask.mean() < 0.7
    assert ndimage.label(mask)[1] == 1
    inside = image[mask]
    assert np.percentile(inside, 75) > 0.7
    assert np.percentile(inside, 3) < 0.4
    assert not mask[0].any() and not mask[-1].any()


def test_make_brain_3d_slices_vary_smoothly():
    volume, mask = phantoms.make_brain((48, 48, 12), seed=2)
    assert volume.shape == (48, 48, 12) and mask.shape == (48, 48, 12)
    areas = mask.sum(axis=(0, 1))
    assert (areas > 0).all()
    assert areas[0] < areas[6] and areas[-1] < areas[6]
    assert np.abs(np.diff(areas)).max() < 0.15 * areas.max()
    assert (volume[~mask] == 0).all() and volume.max() <= 1.0


def test_make_brain_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        phantoms.make_brain((64,))
    with pytest.raises(ValueError, match="too small"):
        phantoms.make_brain((8, 8))
    with pytest.raises(ValueError, match="2-D"):
        phantoms.make_brain((32, 32, 4), level=0.1)


@pytest.mark.parametrize("kind", phantoms.LESION_KINDS)
def test_each_lesion_kind_gives_truth_inside_the_brain(kind):
    image, mask = phantoms.make_brain((64, 64), seed=1)
    before = image.copy()
    lesioned, truth = phantoms.add_lesions(image, mask, kind=kind, seed=3)
    assert np.array_equal(image, before)
    assert lesioned.dtype == np.float32 and truth.dtype == bool
    assert truth.any()
    assert not (truth & ~mask).any()
    assert lesioned.min() >= 0.0 and lesioned.max() <= 1.0
    assert np.array_equal(lesioned[~mask], image[~mask])
    assert np.abs(lesioned - image)[truth].mean() > 0.05
    again, truth_again = phantoms.add_lesions(image, mask, kind=kind, seed=3)
    assert np.array_equal(again, lesioned) and np.array_equal(truth, truth_again)


def test_lesion_contrast_direction():
    image, mask = phantoms.make_brain((64, 64), seed=4)
    bright, lesion = phantoms.add_lesions(image, mask, kind="bright", count=3, seed=0, size=5)
    assert bright[lesion].mean() > image[lesion].mean()
    # MS plaques look as they do on T1: darker than the white matter they replace.
    plaques, ms = phantoms.add_lesions(image, mask, kind="ms", count=4, seed=0, size=6)
    assert plaques[ms].mean() < image[ms].mean() - 0.05
    dark, stroke = phantoms.add_lesions(image, mask, kind="stroke", seed=0)
    assert dark[stroke].mean() < image[stroke].mean()


def test_ms_lesions_are_separate_and_small():
    image, mask = phantoms.make_brain((64, 64), seed=0)
    _, truth = phantoms.add_lesions(image, mask, kind="ms", count=4, seed=1, size=6)
    labels, n = ndimage.label(truth, structure=np.ones((3, 3)))
    assert n == 4
    assert np.bincount(labels.ravel())[1:].max() <= 40


def test_ms_plaques_by_default_are_many_and_partly_periventricular():
    volume, mask = phantoms.make_brain((96, 96, 12), seed=2)
    _, truth = phantoms.add_lesions(volume, mask, kind="ms", seed=5)
    labels, n = ndimage.label(truth)
    assert 6 <= n <= 12
    # Ventricles: the dark voxels deep inside the brain.
    depth = ndimage.distance_transform_edt(mask)
    ventricles = (volume < 0.3) & mask & (depth > 8)
    near = ndimage.binary_dilation(ventricles, iterations=5)
    touching = {int(v) for v in np.unique(labels[near & truth]) if v}
    assert 1 <= len(touching) < n


def test_bright_lesion_by_default_is_one_of_4_to_9_voxels_radius():
    volume, mask = phantoms.make_brain((96, 96, 24), seed=2)
    _, truth = phantoms.add_lesions(volume, mask, kind="bright", seed=3)
    labels, n = ndimage.label(truth)
    assert n == 1
    extent = max(np.ptp(np.nonzero(truth)[axis]) + 1 for axis in range(2))
    assert 6 <= extent <= 28


def test_mass_effect_pushes_the_tissue_around_a_tumour_and_keeps_its_truth():
    volume, mask = phantoms.make_brain((80, 80, 10), seed=6)
    centre = (40, 40, 5)
    plain, truth = phantoms.add_lesions(volume, mask, kind="tumour", seed=2, size=18, center=centre)
    pushed, same = phantoms.add_lesions(
        volume, mask, kind="tumour", seed=2, size=18, center=centre, mass_effect=0.4
    )
    assert np.array_equal(truth, same)
    changed = np.abs(pushed - plain) > 0.02
    assert (changed & ~truth & mask).sum() > 50
    offsets = zip(np.indices(volume.shape), centre, strict=True)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in offsets))
    assert not (changed & (distance > 3.2 * 9 + 1)).any()
    assert np.array_equal(pushed[~mask], volume[~mask])
    with pytest.raises(ValueError, match="mass_effect"):
        phantoms.add_lesions(volume, mask, kind="tumour", mass_effect=0.9)


def test_add_lesions_in_3d_with_center():
    volume, mask = phantoms.make_brain((40, 40, 10), seed=3)
    lesioned, truth = phantoms.add_lesions(
        volume, mask, kind="tumour", count=1, seed=0, size=10, center=(20, 20, 5)
    )
    assert truth[20, 20, 5]
    assert truth.any(axis=(0, 1)).sum() >= 5
    assert not (truth & ~mask).any()
    _, stroke = phantoms.add_lesions(volume, mask, kind="stroke", seed=1)
    assert stroke.any() and not (stroke & ~mask).any()


def test_add_lesions_on_other_intensity_ranges():
    image, mask = phantoms.make_brain((48, 48), seed=9)
    scaled = (image * 1000).astype(np.int16)
    lesioned, truth = phantoms.add_lesions(scaled, mask, kind="tumour", seed=2)
    assert lesioned.dtype == np.float32 and truth.any()
    assert lesioned[truth].mean() > 300


def test_add_lesions_errors():
    image, mask = phantoms.make_brain((32, 32), seed=0)
    with pytest.raises(ValueError, match="unknown lesion kind"):
        phantoms.add_lesions(image, mask, kind="cyst")
    with pytest.raises(ValueError, match="shape"):
        phantoms.add_lesions(image, mask[:16])
    with pytest.raises(ValueError, match="count=1"):
        phantoms.add_lesions(image, mask, count=2, center=(16, 16))
    with pytest.raises(ValueError, match="brain_mask"):
        phantoms.add_lesions(image, np.zeros_like(mask))


def test_make_dataset():
    data = phantoms.make_dataset(4, size=48, seed=1, lesion_kinds=["tumour", "ms", None])
    assert data["images"].shape == (4, 48, 48) and data["images"].dtype == np.float32
    assert data["masks"].shape == data["truths"].shape == data["healthy"].shape == (4, 48, 48)
    assert list(data["kinds"]) == ["tumour", "ms", "", "tumour"]
    assert data["truths"][[0, 1, 3]].any(axis=(1, 2)).all()
    assert not data["truths"][2].any()
    assert np.array_equal(data["images"][2], data["healthy"][2])
    fewer = phantoms.make_dataset(2, size=48, seed=1, lesion_kinds=["tumour", "ms", None])
    assert np.array_equal(fewer["images"], data["images"][:2])
    healthy = phantoms.make_dataset(2, size=32, seed=0)
    assert set(healthy) == {"images", "masks"}
    assert not np.array_equal(healthy["images"][0], healthy["images"][1])
    with pytest.raises(ValueError, match="unknown lesion kind"):
        phantoms.make_dataset(1, lesion_kinds=["flu"])

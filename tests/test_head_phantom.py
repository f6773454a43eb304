import numpy as np
import pytest
from scipy import ndimage

from napari_uad.data import head_phantom as hp
from napari_uad.data.phantoms import make_brain

SPACING = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def brain():
    return make_brain((48, 56, 40), seed=1)


@pytest.fixture(scope="module")
def head(brain):
    return hp.make_head(*brain, spacing=SPACING, seed=0)


@pytest.fixture(scope="module")
def fine_head(brain):
    """The same brain at 1 mm, where 1.5 mm skull tables are resolved."""
    return hp.make_head(*brain, spacing=(1.0, 1.0, 1.0), seed=0)


def _centre_index(head):
    return np.round(np.linalg.solve(head.affine, [0.0, 0.0, 0.0, 1.0])[:3]).astype(int)


def _runs(values):
    return [int(v) for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_shapes_dtypes_offset_and_affine(brain, head):
    image, mask = brain
    assert head.offset == (9, 9, 20)
    assert head.image.shape == (48 + 18, 56 + 18, 40 + 20 + 9)
    assert head.image.dtype == np.float32
    assert head.brain_mask.dtype == bool and head.labels.dtype == np.uint8
    assert head.brain_mask.shape == head.labels.shape == head.image.shape
    inner = tuple(slice(o, o + n) for o, n in zip(head.offset, mask.shape, strict=True))
    assert np.array_equal(head.brain_mask[inner], mask)
    assert head.brain_mask.sum() == mask.sum()
    assert head.affine.shape == (4, 4)
    assert np.allclose(head.affine[:3, :3], np.diag(SPACING))
    assert np.allclose(head.affine[3], [0, 0, 0, 1])
    centre = np.array(ndimage.center_of_mass(head.brain_mask))
    assert np.allclose(head.affine @ [*centre, 1.0], [0, 0, 0, 1], atol=1e-6)
    assert head.spacing == SPACING


def test_anisotropic_spacing_and_sizes_in_mm(brain):
    head = hp.make_head(*brain, spacing=(2.0, 2.5, 4.0), neck_mm=40.0, margin_mm=10.0)
    assert head.offset == (5, 4, 10)
    assert head.image.shape == (48 + 10, 56 + 8, 40 + 10 + 3)
    assert np.allclose(np.diag(head.affine)[:3], (2.0, 2.5, 4.0))
    assert {hp.BRAIN, hp.CSF, hp.BONE, hp.FAT, hp.SCALP, hp.EYE, hp.MUSCLE} <= set(
        np.unique(head.labels).tolist()
    )


def test_brain_is_kept_as_given(brain, head):
    image, mask = brain
    assert np.array_equal(head.image[head.brain_mask], image[mask])
    assert (head.labels[head.brain_mask] == hp.BRAIN).all()
    assert not (head.labels[~head.brain_mask] == hp.BRAIN).any()


def test_every_tissue_is_present(head, fine_head):
    assert set(hp.HEAD_LABELS) == set(range(13))
    for h in (head, fine_head):
        present = set(np.unique(h.labels).tolist())
        assert present == set(hp.HEAD_LABELS), sorted(set(hp.HEAD_LABELS) - present)


def test_layers_from_brain_to_air_in_order(fine_head):
    """Brain, CSF, inner table, diploe, outer table, fat, scalp, air above and beside."""
    c = _centre_index(fine_head)
    order = [hp.BRAIN, hp.CSF, hp.BONE, hp.MARROW, hp.BONE, hp.FAT, hp.SCALP, hp.AIR]
    labels = fine_head.labels
    assert _runs(labels[c[0], c[1], c[2] :]) == order
    assert _runs(labels[c[0] :, c[1], c[2]]) == order
    assert _runs(labels[c[0] :: -1, c[1], c[2]]) == order
    assert _runs(labels[c[0], c[1] :: -1, c[2]]) == order
    # Thicknesses (mm) above the brain: skull 4-10, fat 2-5, scalp 1.5-4.
    column = labels[c[0], c[1], c[2] :]
    skull = np.isin(column, (hp.BONE, hp.MARROW)).sum()
    assert 4 <= skull <= 10
    assert 2 <= (column == hp.FAT).sum() <= 5
    assert 1 <= (column == hp.SCALP).sum() <= 4


def test_scalp_follows_the_brain_with_smoothly_varying_thickness(brain):
    """The head surface lies 7-20 mm outside the brain; the layers vary around the head."""
    spreads = []
    for seed in (0, 1):
        head = hp.make_head(*brain, spacing=(1.0, 1.0, 1.0), seed=seed)
        distance = ndimage.distance_transform_edt(~head.brain_mask)
        inside = head.labels != hp.AIR
        surface = inside & ~ndimage.binary_erosion(inside)
        surface[:, :, : _centre_index(head)[2]] = False
        low, high = np.percentile(distance[surface], [5, 95])
        assert 7 < low and high < 20
        spreads.append(high - low)
    assert min(spreads) > 1.5 and max(spreads) < 8


def test_skull_surrounds_the_brain_everywhere(head):
    """Every path from the brain to the air crosses bone (or the spinal canal)."""
    inside = ~np.isin(head.labels, (hp.BONE, hp.MARROW, hp.CSF, hp.CORD))
    regions, _ = ndimage.label(inside)
    brain_regions = set(np.unique(regions[head.brain_mask]).tolist()) - {0}
    air_regions = set(np.unique(regions[head.labels == hp.AIR]).tolist())
    assert not brain_regions & air_regions


def test_tissue_contrast_is_t1_like(brain, fine_head):
    image, mask = brain
    values = image[mask]
    median = {k: float(np.median(fine_head.image[fine_head.labels == k])) for k in hp.HEAD_LABELS}
    csf = np.percentile(values, 1)
    assert median[hp.FAT] > np.median(values)
    assert median[hp.FAT] > median[hp.SCALP] > median[hp.MUSCLE] > median[hp.CSF]
    assert median[hp.BONE] < csf + 0.05
    assert median[hp.MARROW] > median[hp.BONE] + 0.3
    assert median[hp.EYE] < csf + 0.05 and median[hp.AIRWAY] < 0.1
    assert median[hp.CSF] < csf + 0.05
    assert median[hp.MUSCLE] < np.percentile(values, 90) and median[hp.CORD] > median[hp.CSF]


def test_eyes_in_front_of_and_below_the_brain_in_orbital_fat(head):
    labels = head.labels
    eyes, count = ndimage.label(labels == hp.EYE)
    assert count == 2
    centre = np.array(ndimage.center_of_mass(head.brain_mask))
    spots = np.array(ndimage.center_of_mass(labels == hp.EYE, eyes, [1, 2]))
    sx, sy, sz = head.spacing
    assert np.sort((spots[:, 0] - centre[0]) * sx)[0] < -15
    assert np.sort((spots[:, 0] - centre[0]) * sx)[1] > 15
    assert ((spots[:, 1] - centre[1]) * sy > 30).all()
    assert ((spots[:, 2] - centre[2]) * sz < -20).all()
    volume = np.bincount(eyes.ravel())[1:] * sx * sy * sz
    assert ((volume > 1000) & (volume < 8000)).all()
    shell = ndimage.binary_dilation(labels == hp.EYE) & (labels != hp.EYE)
    around = labels[shell]
    assert np.isin(around, (hp.FAT, hp.SCALP)).mean() > 0.9
    assert (around == hp.FAT).mean() > 0.4


def test_neck_below_the_brain(brain, head):
    labels = head.labels
    bottom = labels[:, :, :3]
    present = set(np.unique(bottom).tolist())
    assert {hp.MUSCLE, hp.FAT, hp.SCALP, hp.CORD, hp.CSF, hp.VERTEBRA, hp.AIRWAY} <= present
    assert hp.BRAIN not in present and hp.EYE not in present
    sx, sy, _ = head.spacing
    section = labels[:, :, 0] != hp.AIR
    xs, ys = np.nonzero(section)
    width, depth = (np.ptp(xs) + 1) * sx, (np.ptp(ys) + 1) * sy
    assert 50 < width < 110 and 60 < depth < 120
    # The cord sits posterior to the vertebral bodies.
    cord_y = np.nonzero(labels[:, :, 0] == hp.CORD)[1].mean()
    body_y = np.nonzero(labels[:, :, 0] == hp.VERTEBRA)[1].mean()
    assert cord_y < body_y
    # No air between the brain and the neck, under the middle of the brain.
    c = _centre_index(head)
    z0 = head.offset[2] + np.flatnonzero(brain[1].any(axis=(0, 1)))[0]
    assert (labels[c[0], c[1], :z0] != hp.AIR).all()
    assert np.isin(labels[c[0], c[1], :z0], (hp.BONE, hp.MARROW)).any()


def test_air_noise_is_rician_with_the_requested_sigma(brain):
    image, mask = brain
    wm = np.percentile(image[mask], 90)
    for noise in (0.02, 0.05):
        head = hp.make_head(image, mask, spacing=SPACING, noise=noise)
        far = ~ndimage.binary_dilation(head.labels != hp.AIR, iterations=2)
        air = head.image[far].astype(np.float64)
        assert air.size > 10_000
        sigma = np.sqrt(np.mean(air**2) / 2)
        assert sigma == pytest.approx(noise * wm, rel=0.05)
        assert air.mean() == pytest.approx(noise * wm * np.sqrt(np.pi / 2), rel=0.05)
    quiet = hp.make_head(image, mask, spacing=SPACING, noise=0.0)
    assert (quiet.image[far] == 0).all()


def test_zero_background(brain, head):
    assert (head.image == 0).mean() < 0.001
    zeroed = hp.make_head(*brain, spacing=SPACING, seed=0, zero_background=True)
    zeros = zeroed.image == 0
    assert zeros.mean() >= 0.2
    assert (zeroed.labels[zeros] == hp.AIR).all()
    near = ndimage.binary_dilation(zeroed.labels != hp.AIR, iterations=1)
    assert not (zeros & near).any()
    assert np.array_equal(zeroed.image[~zeros], head.image[~zeros])


def test_seed_reproduces_the_head(brain, head):
    again = hp.make_head(*brain, spacing=SPACING, seed=0)
    assert np.array_equal(again.image, head.image)
    assert np.array_equal(again.labels, head.labels)
    other = hp.make_head(*brain, spacing=SPACING, seed=1)
    assert not np.array_equal(other.labels, head.labels)
    assert not np.allclose(other.image, head.image)


def test_bias_is_smooth_and_bounded(brain, head):
    biased = hp.make_head(*brain, spacing=SPACING, seed=0, bias=0.2)
    assert np.array_equal(biased.labels, head.labels)
    valid = head.image > 1e-4
    ratio = np.ones_like(head.image)
    ratio[valid] = biased.image[valid] / head.image[valid]
    eps = 1e-3
    assert ratio.min() >= 0.8 - eps and ratio.max() <= 1.2 + eps
    assert ratio.max() - ratio.min() > 0.2
    smooth = valid[:-1] & valid[1:]
    assert np.abs(np.diff(ratio, axis=0))[smooth].max() < 0.03
    other = hp.make_head(*brain, spacing=SPACING, seed=0, bias=0.05)
    assert 0.05 < np.ptp(other.image[valid] / head.image[valid]) <= 0.1 + eps


def test_intensities_follow_the_brain_scale(brain):
    image, mask = brain
    head = hp.make_head(image, mask, spacing=SPACING, noise=0.0)
    scaled = hp.make_head(image * 250.0, mask, spacing=SPACING, noise=0.0)
    assert np.array_equal(head.labels, scaled.labels)
    assert np.allclose(scaled.image, head.image * 250.0, rtol=1e-4, atol=1e-3)


def test_mni_template_brain():
    datasets = pytest.importorskip("nilearn.datasets")
    template = datasets.load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    head = hp.make_head(template * mask, mask, spacing=(2.0, 2.0, 2.0), seed=3)
    assert head.image.shape == (99 + 26, 117 + 26, 95 + 30 + 13)
    assert np.array_equal(head.image[head.brain_mask], (template * mask)[mask])
    assert set(np.unique(head.labels).tolist()) == set(hp.HEAD_LABELS)
    eyes, count = ndimage.label(head.labels == hp.EYE)
    assert count == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"bias": 1.0}, "bias"),
        ({"noise": -0.1}, "noise"),
        ({"neck_mm": -1.0}, "neck_mm"),
    ],
)
def test_bad_arguments_are_refused(brain, kwargs, message):
    with pytest.raises(ValueError, match=message):
        hp.make_head(*brain, **kwargs)


def test_bad_brains_are_refused(brain):
    image, mask = brain
    with pytest.raises(ValueError, match="one shape"):
        hp.make_head(image, mask[:-1])
    with pytest.raises(ValueError, match="empty"):
        hp.make_head(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match="positive"):
        hp.make_head(np.zeros_like(image), mask)

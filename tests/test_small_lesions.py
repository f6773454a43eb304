"""Small lesions: how smoothing treats 2-3-voxel lesions, and the small-anomaly corruption that
teaches DISYRE to remove them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_uad.data.phantoms import add_lesions, make_dataset
from napari_uad.methods.anoddpm import residual_map
from napari_uad.metrics import auroc
from napari_uad.training.corruption import small_anomalies


@pytest.fixture(scope="module")
def small_lesion_slices():
    """Eight 64 x 64 phantoms with four 2-3-voxel lesions each (dark plaques and bright
    spots, alternating), scanner noise of 3 %, and their lesion-free originals."""
    data = make_dataset(8, size=64, seed=300)
    rng = np.random.default_rng(0)
    images, truths = [], []
    for index, (image, mask) in enumerate(zip(data["images"], data["masks"], strict=True)):
        kind = "bright" if index % 2 else "ms"
        lesioned, truth = add_lesions(image, mask, kind=kind, count=4, size=3, seed=index)
        images.append(lesioned + rng.normal(0, 0.03, lesioned.shape) * mask)
        truths.append(truth)
    return np.array(images, dtype=np.float32), data["images"], data["masks"], np.array(truths)


def test_fine_scale_residual_separates_2_to_3_voxel_lesions_and_smoothing_erases_them(
    small_lesion_slices,
):
    images, healthy, masks, truths = small_lesion_slices
    assert truths.sum() / (8 * 4) < 8  # a few voxels per lesion

    def score(smoothing):
        residual = residual_map(
            torch.from_numpy(images)[:, None],
            torch.from_numpy(healthy)[:, None],
            torch.from_numpy(masks)[:, None],
            smoothing=smoothing,
        )
        return auroc(residual[:, 0].numpy(), truths, mask=masks)

    # Measured with a perfect restoration: 0.977 (none), 0.969 (3), 0.912 (5), 0.831 (9).
    fine, light, medium, coarse = (score(s) for s in (0, 3, 5, 9))
    assert fine > 0.95 and light > 0.94
    assert fine > medium > coarse
    assert coarse < 0.88


def test_small_anomalies_are_small_of_one_polarity_per_slice_and_inside_the_brain():
    data = make_dataset(16, size=64, seed=7)
    images = torch.from_numpy(data["images"])[:, None]
    brain = torch.from_numpy(data["masks"])[:, None]
    severity = torch.ones(16)
    corrupted, mask = small_anomalies(
        images, brain, severity, generator=torch.Generator().manual_seed(0)
    )
    again, _ = small_anomalies(images, brain, severity, generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupted, again)
    assert (mask[~brain] == 0).all() and (corrupted[~brain] == 0).all()
    signs = set()
    for index in range(16):
        region = mask[index, 0].numpy() > 0.5
        assert region.any()
        labels, count = ndimage.label(region)
        assert 1 <= count <= 8
        # Radii at most 0.04 of the side: about 2.6 pixels here, so at most ~ 40 pixels each.
        assert np.bincount(labels.ravel())[1:].max() <= 40
        change = (corrupted - images)[index, 0].numpy()[region]
        # The blob level is a multiple (0.3-0.8 or 1.15-1.5) of the blurred tissue level, so a
        # bright blob on a pixel brighter than its neighbourhood changes it little; where a
        # blob changes its pixels, most follow the slice's one sign.
        moved = change[np.abs(change) > 0.02]
        if moved.size < 3:
            continue
        brighter = float((moved > 0).mean())
        assert max(brighter, 1 - brighter) >= 0.75
        signs.add(brighter > 0.5)
    assert signs == {True, False}
    unchanged, none = small_anomalies(images, brain, torch.zeros(16))
    assert torch.allclose(unchanged, images * brain) and (none == 0).all()


def test_disyre_training_adds_small_anomalies_only_when_asked(tmp_path):
    from napari_uad.training.api import create_trainer
    from napari_uad.training.dataset import slices_from_arrays

    data = make_dataset(8, size=32, seed=0)

    def corrupted(share):
        trainer = create_trainer(
            slices_from_arrays(data["images"], data["masks"]),
            method="disyre",
            out=tmp_path / f"run-{share}",
            steps=1,
            grid=32,
            base_channels=8,
            batch_size=8,
            preview_every=0,
            checkpoint_every=0,
            augment=None,
            options={"small_probability": share},
        )
        images = torch.from_numpy(data["images"])[:, None]
        masks = torch.from_numpy(data["masks"])[:, None]
        t = torch.full((8,), 999)
        return trainer.corrupt(images, masks, t)

    plain, plain_mask = corrupted(0.0)
    small, small_mask = corrupted(1.0)
    # The same large corruption underneath; the small blobs add to the mask.
    assert (small_mask >= plain_mask - 1e-6).all()
    extra = (small_mask - plain_mask) > 0.5
    assert extra.flatten(1).any(dim=1).float().mean() > 0.5
    assert not torch.equal(small, plain)

"""Trainers, resumable checkpoints, datasets from folders and the corruptions they train on."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_uad.data.phantoms import make_brain, make_dataset
from napari_uad.io import InputError
from napari_uad.models.checkpoint import CheckpointError, load_checkpoint, load_component
from napari_uad.training import dataset as dataset_module
from napari_uad.training.api import create_trainer, get_trainer_class
from napari_uad.training.augment import AugmentConfig, augment_batch
from napari_uad.training.corruption import (
    random_patch_masks,
    soft_shape_masks,
    synthetic_anomalies,
)
from napari_uad.training.dataset import load_healthy_folder, slices_from_arrays
from napari_uad.training.state import STATE_NAME, load_state

GRID = 32
TINY = dict(grid=GRID, base_channels=8, batch_size=8, warmup_steps=5, preview_every=0)


@pytest.fixture(scope="module")
def slices():
    data = make_dataset(32, size=GRID, seed=0)
    return slices_from_arrays(data["images"], data["masks"])


def _trainer(slices, tmp_path, method, steps, name="m", **kwargs):
    options = {**TINY, "learning_rate": 2e-3, "checkpoint_every": 0, **kwargs}
    return create_trainer(slices, method=method, out=tmp_path / name, steps=steps, **options)


def _weights(trainer):
    state = {}
    for name, net in {
        **trainer.networks,
        **{f"ema.{k}": v for k, v in trainer.ema.items()},
    }.items():
        for key, value in net.state_dict().items():
            state[f"{name}.{key}"] = value.detach().clone()
    return state


# -- data ------------------------------------------------------------------------------------
@pytest.fixture
def scan_folder(tmp_path):
    folder = tmp_path / "healthy"
    (folder / "site-b").mkdir(parents=True)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for index, sub in enumerate(("sub-01", "sub-02", "site-b/sub-03")):
        image, mask = make_brain((40, 44, 8), seed=index)
        nib.save(
            nib.Nifti1Image((image * 600).astype(np.float32), affine), folder / f"{sub}.nii.gz"
        )
        if index == 0:
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / f"{sub}_mask.nii.gz")
    (folder / "README.txt").write_text("healthy controls")
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), affine), folder / "flat.nii.gz")
    return folder


def test_folder_dataset_reports_used_and_skipped_files(scan_folder):
    data = load_healthy_folder(scan_folder, grid=GRID)
    report = data.report
    assert len(report.used) == 3
    assert sum(given for *_, given in report.used) == 1  # only sub-01 has a mask file
    skipped = dict(report.skipped)
    assert skipped[str(scan_folder / "README.txt")] == "not a NIfTI file"
    assert "not a valid NIfTI" in skipped[str(scan_folder / "broken.nii.gz")]
    assert "3-D" in skipped[str(scan_folder / "flat.nii.gz")]
    assert not any("_mask" in path for path, *_ in report.used)
    assert data.images.shape[1:] == (GRID, GRID) and data.images.dtype == np.float32
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert set(np.unique(data.subjects)) == {0, 1, 2}
    assert "3 scans used (1 with a brain mask, 2 estimated)" in report.summary()


def test_folder_cache_avoids_rereading_scans(scan_folder, tmp_path, monkeypatch):
    first = load_healthy_folder(scan_folder, grid=GRID, cache_dir=tmp_path / "cache")

    def fail(path):
        raise AssertionError("read a NIfTI file despite the cache")

    monkeypatch.setattr(dataset_module, "read_scan", fail)
    second = load_healthy_folder(scan_folder, grid=GRID, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.images, second.images)
    assert second.report.skipped == first.report.skipped


def test_folder_without_scans_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no usable scan"):
        load_healthy_folder(tmp_path, grid=GRID)
    with pytest.raises(InputError, match="is not a folder"):
        load_healthy_folder(tmp_path / "missing", grid=GRID)


def test_split_holds_out_whole_subjects(scan_folder):
    data = load_healthy_folder(scan_folder, grid=GRID)
    train, held = data.split(0.34)
    assert set(train.subjects).isdisjoint(held.subjects)
    assert len(train) + len(held) == len(data)


def test_augmentation_is_seeded_in_range_and_moves_masks_with_images(slices):
    images = torch.from_numpy(slices.images[:6])[:, None]
    masks = torch.from_numpy(slices.masks[:6])[:, None]
    config = AugmentConfig()
    one = augment_batch(
        images, config=config, generator=torch.Generator().manual_seed(1), masks=masks
    )
    two = augment_batch(
        images, config=config, generator=torch.Generator().manual_seed(1), masks=masks
    )
    torch.testing.assert_close(one[0], two[0], rtol=0, atol=0)
    augmented, moved = one
    assert 0 <= augmented.min() and augmented.max() <= 1
    assert not torch.equal(augmented, images)
    assert (augmented[~moved] == 0).all()  # nothing outside the deformed brain mask
    assert moved.float().mean() > 0.5 * masks.float().mean()


# -- corruptions -----------------------------------------------------------------------------
def test_disyre_corruption_stays_in_range_with_nonempty_masks(slices):
    images = torch.from_numpy(slices.images[:8])[:, None]
    brain = torch.from_numpy(slices.masks[:8])[:, None]
    generator = torch.Generator().manual_seed(0)
    shapes = soft_shape_masks(brain, generator=generator)
    assert (shapes.flatten(1).amax(dim=1) > 0.5).all()
    assert (shapes[~brain] == 0).all()
    severity = torch.linspace(0.1, 1.0, 8)
    corrupted, mask = synthetic_anomalies(images, brain, severity, generator=generator)
    assert corrupted.shape == images.shape
    assert 0 <= corrupted.min() and corrupted.max() <= 1
    assert (mask.flatten(1).amax(dim=1) > 0).all()
    changed = (corrupted - images).abs().flatten(1).sum(dim=1)
    assert (changed > 0).all()
    unchanged, none = synthetic_anomalies(images, brain, torch.zeros(8), generator=generator)
    torch.testing.assert_close(unchanged, images * brain)
    assert none.max() == 0


def test_madad_masks_use_patch_sizes_and_ratio():
    generator = torch.Generator().manual_seed(0)
    masks = random_patch_masks(200, (16, 16), generator=generator, max_ratio=0.4)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    ratio = masks.mean(dim=(1, 2, 3))
    assert 0.1 < ratio.mean() < 0.3  # U[0, 0.4] has mean 0.2
    fine = random_patch_masks(50, (64, 64), generator=generator, patch_sizes=(1,))
    assert fine.mean(dim=(1, 2, 3)).max() < 0.5
    blocks = random_patch_masks(20, (16, 16), generator=generator, patch_sizes=(4,))
    coarse = blocks[:, :, ::4, ::4].repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert torch.equal(blocks, coarse)


# -- trainers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ddpm", "addm", "disyre"])
def test_each_trainer_reduces_its_loss(slices, tmp_path, method):
    trainer = _trainer(slices, tmp_path, method, 60, augment=None)
    result = trainer.run()
    losses = np.array(result.losses)
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()
    model, config = load_checkpoint(result.model_dir)
    assert config.method == {"ddpm": "anoddpm"}.get(method, method)
    assert config.training["steps"] == 60 and config.training["trainer"] == method


def test_madad_autoencoder_reconstructs_and_mask_head_beats_chance(slices, tmp_path):
    trainer = _trainer(slices, tmp_path, "madad", 260, augment=None, options={"vae_steps": 130})
    result = trainer.run()
    vae = load_component(result.model_dir, "vae")
    images = torch.from_numpy(slices.images[:8])[:, None]
    with torch.no_grad():
        reconstruction = (vae.decode(vae.encode(images * 2 - 1)[0]) + 1) / 2
    error = (reconstruction - images).abs().mean().item()
    assert error < 0.5 * images.mean().item()
    # Mask head on fresh masks of heavily noised patches: IoU of its top-k positions (k = the
    # masked count) against the IoU of k random positions, r / (2 - r) for a masked fraction r.
    model, config = load_checkpoint(result.model_dir)
    brain = torch.from_numpy(slices.masks[:8])[:, None]
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        z0 = vae.encode(images * 2 - 1)[0] * config.components["vae"]["scale"]
        mask = trainer.latent_masks(brain, z0.shape[-2:]) > 0
        t = torch.full((8,), 8)
        noisy = trainer.scheduler.add_noise(z0, torch.randn(z0.shape, generator=generator), t)
        logits = model(torch.where(mask, noisy, z0), t)[:, 4:]
    count = int(mask.sum())
    predicted = torch.zeros_like(mask).flatten()
    predicted[logits.flatten().topk(count).indices] = True
    predicted = predicted.view_as(mask)
    iou = (predicted & mask).sum().item() / (predicted | mask).sum().item()
    ratio = count / mask.numel()
    assert iou > ratio / (2 - ratio) + 0.2


def test_addm_discriminator_gets_gradients_and_its_term_enters_the_generator_loss(slices, tmp_path):
    trainer = _trainer(slices, tmp_path, "addm", 3, augment=None)
    before = {k: v.clone() for k, v in trainer.networks["discriminator"].state_dict().items()}
    images, masks = trainer.next_batch()
    losses = trainer.training_step(images, masks)
    assert losses["generator"] == pytest.approx(losses["loss"] + 0.05 * losses["adversarial"])
    grads = [p.grad for p in trainer.networks["discriminator"].parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    after = trainer.networks["discriminator"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # The same step without the adversarial term gives the denoiser other gradients.
    updates = []
    for weight in (0.0, 0.05):
        run = _trainer(
            slices,
            tmp_path,
            "addm",
            3,
            name=f"w{weight}",
            augment=None,
            options={"adversarial_weight": weight},
        )
        run.training_step(*run.next_batch())
        grads = [p.grad.flatten() for p in run.networks["model"].parameters()]
        updates.append(torch.cat(grads))
    assert not torch.allclose(updates[0], updates[1])
    result = trainer.run()
    discriminator = load_component(result.model_dir, "discriminator")
    assert sum(p.numel() for p in discriminator.parameters()) > 0


@pytest.mark.parametrize("method", ["ddpm", "madad"])
def test_stop_and_resume_matches_an_uninterrupted_run(slices, tmp_path, method):
    kwargs = dict(options={"vae_steps": 4}) if method == "madad" else {}
    straight = _trainer(slices, tmp_path, method, 8, name="straight", **kwargs)
    straight.run()
    interrupted = _trainer(slices, tmp_path, method, 8, name="split", **kwargs)
    result = interrupted.run(should_stop=lambda: interrupted.step == 3)
    assert result.stopped and result.step == 3 and result.threshold is None
    resumed = create_trainer(slices, method=None, out=tmp_path / "split", resume=True, device="cpu")
    assert resumed.step == 3
    resumed.run()
    expected, actual = _weights(straight), _weights(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert resumed.losses == straight.losses
    log = (tmp_path / "split" / "losses.csv").read_text().splitlines()
    assert log[0] == "step,loss" and len(log) == 9
    assert float(log[-1].split(",")[1]) == pytest.approx(straight.losses[-1], rel=1e-5)
    assert load_checkpoint(tmp_path / "split")[1].training["steps"] == 8


def test_an_existing_run_is_not_overwritten_without_asking(slices, tmp_path):
    _trainer(slices, tmp_path, "ddpm", 2).run()
    with pytest.raises(InputError, match="already holds a training run"):
        _trainer(slices, tmp_path, "ddpm", 2)
    with pytest.raises(InputError, match="holds a ddpm run, not disyre"):
        create_trainer(slices, method="disyre", out=tmp_path / "m", resume=True)
    _trainer(slices, tmp_path, "ddpm", 2, overwrite=True)


def test_a_run_killed_while_checkpointing_keeps_the_last_checkpoint(slices, tmp_path, monkeypatch):
    trainer = _trainer(slices, tmp_path, "ddpm", 6, checkpoint_every=2)
    run = trainer.iter_run()
    for _ in range(3):
        next(run)  # checkpoint at step 2
    saved = tmp_path / "m" / STATE_NAME
    assert load_state(saved)[1]["step"] == 2

    from napari_uad.training import state as state_module

    def dying_save(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(state_module, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        next(run)  # step 4 tries to checkpoint
    assert load_state(saved)[1]["step"] == 2
    load_checkpoint(tmp_path / "m")
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    resumed = create_trainer(slices, method="ddpm", out=tmp_path / "m", resume=True)
    assert resumed.step == 2


def test_corrupt_training_state_is_a_clear_error(slices, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / STATE_NAME).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid training state"):
        create_trainer(slices, method="ddpm", out=tmp_path / "m", resume=True)
    with pytest.raises(CheckpointError, match="no training state"):
        create_trainer(slices, method="ddpm", out=tmp_path / "other", resume=True)


def test_init_fine_tunes_from_an_existing_model(slices, tmp_path):
    base = _trainer(slices, tmp_path, "ddpm", 20, name="base").run()
    base_model, _ = load_checkpoint(base.model_dir)
    tuned = _trainer(slices, tmp_path, "ddpm", 5, name="tuned", init=str(base.model_dir))
    for mine, theirs in zip(
        tuned.networks["model"].parameters(), base_model.parameters(), strict=True
    ):
        assert torch.equal(mine.detach(), theirs)
    scratch_loss = _trainer(slices, tmp_path, "ddpm", 5, name="scratch").run().losses[0]
    result = tuned.run()
    assert result.losses[0] < scratch_loss  # starts from a trained model
    config = load_checkpoint(result.model_dir)[1]
    assert config.name == "tuned" and config.training["initialised_from"] == str(base.model_dir)
    with pytest.raises(CheckpointError, match="needs a disyre model"):
        _trainer(slices, tmp_path, "disyre", 5, name="x", init=str(base.model_dir))


def test_mid_run_checkpoints_keep_the_training_time(slices, tmp_path):
    trainer = _trainer(slices, tmp_path, "ddpm", 4, checkpoint_every=2)
    updates = trainer.iter_run()
    for update in updates:
        if update.checkpoint:
            _, metadata = load_state(tmp_path / "m" / STATE_NAME)
            assert 0 < metadata["seconds"] <= update.seconds + 1e-6
            break
    updates.close()
    _, metadata = load_state(tmp_path / "m" / STATE_NAME)
    assert metadata["seconds"] >= update.seconds  # counted once, not twice or never


def test_addm_fine_tunes_a_ddpm_into_an_addm_model(slices, tmp_path):
    base = _trainer(slices, tmp_path, "ddpm", 10, name="base").run()
    base_model, base_config = load_checkpoint(base.model_dir)
    tuned = _trainer(slices, tmp_path, "addm", 3, name="adv", init=str(base.model_dir))
    for mine, theirs in zip(
        tuned.networks["model"].parameters(), base_model.parameters(), strict=True
    ):
        assert torch.equal(mine.detach(), theirs)  # the generator starts as the DDPM
    assert "discriminator" in tuned.networks
    config = load_checkpoint(tuned.run().model_dir)[1]
    assert config.method == "addm" and "discriminator" in config.components
    assert config.defaults == get_trainer_class("addm").default_config("x").defaults
    assert config.diffusion == base_config.diffusion
    # Not the other way round: a DDPM run does not start from an ADDM model.
    with pytest.raises(CheckpointError, match="needs an anoddpm model"):
        _trainer(slices, tmp_path, "ddpm", 2, name="back", init=str(tmp_path / "adv"))


def test_finished_ddpm_run_stores_a_healthy_threshold_and_previews(slices, tmp_path):
    trainer = _trainer(slices, tmp_path, "ddpm", 10, preview_every=5)
    previews = [u.preview for u in _collect(trainer) if u.preview is not None]
    assert len(previews) == 2 and previews[0].shape[0] == 2 and previews[0].shape[2:] == (GRID,) * 2
    config = load_checkpoint(tmp_path / "m")[1]
    assert config.calibration["threshold"] > 0 and config.calibration["percentile"] == 99.5


def _collect(trainer):
    return list(trainer.iter_run())


def test_half_precision_on_cpu_is_refused(slices, tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        _trainer(slices, tmp_path, "ddpm", 2, precision="bf16", device="cpu")

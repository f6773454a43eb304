"""Shared fixtures: a tiny DDPM trained on phantoms, and phantom scans written as NIfTI."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_uad.data.phantoms import add_lesions, make_brain, make_dataset
from napari_uad.models.checkpoint import save_checkpoint
from napari_uad.models.config import DiffusionConfig, ModelConfig
from napari_uad.models.unet import UNetConfig

TINY_GRID = 32


def tiny_config(**overrides) -> ModelConfig:
    settings = dict(
        name="tiny",
        method="anoddpm",
        grid=TINY_GRID,
        unet=UNetConfig(
            base_channels=8, channel_mults=(1, 2), groups=4, attention_levels=(False, False)
        ),
        diffusion=DiffusionConfig(prediction_type="sample", noise="gaussian"),
        defaults={
            "noise_level": 100,
            "steps": 5,
            "smoothing": 3,
            # The same DDPM serves thor and autoddpm, with their own defaults for this model.
            "thor": {"noise_level": 150, "steps": 6, "harmonise_at": [125, 50], "kernel": 3},
            "autoddpm": {"noise_level": 100, "inpaint_level": 30},
        },
    )
    settings.update(overrides)
    return ModelConfig(**settings)


@pytest.fixture(scope="session")
def phantom_train_slices():
    return make_dataset(48, size=TINY_GRID, seed=0)


@pytest.fixture(scope="session")
def phantom_test_slices():
    return make_dataset(6, size=TINY_GRID, seed=100, lesion_kinds=["tumour", "stroke"])


@pytest.fixture(scope="session")
def tiny_trained(phantom_train_slices):
    """A tiny x0-prediction DDPM trained for 200 steps on 32x32 phantoms (seconds on a CPU)."""
    from napari_uad.training.ddpm import train_ddpm

    config = tiny_config()
    model, history = train_ddpm(
        phantom_train_slices["images"],
        config,
        steps=200,
        batch_size=8,
        learning_rate=3e-3,
        max_timestep=300,
        seed=0,
    )
    return model, config, history


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_trained, tmp_path_factory):
    model, config, _ = tiny_trained
    config.calibration = {"threshold": 0.2, "percentile": 99.5}
    return save_checkpoint(tmp_path_factory.mktemp("models") / "tiny", model, config)


LAS_AFFINE = np.array([[-1.2, 0, 0, 60.0], [0, 1.2, 0, -70.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])


@pytest.fixture(scope="session")
def phantom_scan_files(tmp_path_factory):
    """A lesioned 3-D phantom (LAS affine, 1.2 x 1.2 x 3 mm) with truth and brain mask files."""
    folder = tmp_path_factory.mktemp("scans")
    image, mask = make_brain((48, 56, 6), seed=3)
    image, truth = add_lesions(image, mask, kind="tumour", seed=4)
    # Stored flipped left-right so the LAS affine describes the same anatomy.
    files = {}
    for name, data, dtype in (
        ("scan", image * 800.0, np.float32),
        ("truth", truth, np.uint8),
        ("mask", mask, np.uint8),
    ):
        img = nib.Nifti1Image(np.flip(data, axis=0).astype(dtype), LAS_AFFINE)
        img.header.set_xyzt_units("mm")
        path = folder / f"{name}.nii.gz"
        nib.save(img, path)
        files[name] = path
    return files


def _train_tiny(method, folder, steps, **options):
    from napari_uad.training.api import create_trainer
    from napari_uad.training.dataset import slices_from_arrays

    data = make_dataset(48, size=TINY_GRID, seed=0)
    trainer = create_trainer(
        slices_from_arrays(data["images"], data["masks"]),
        method=method,
        out=folder,
        steps=steps,
        grid=TINY_GRID,
        base_channels=8,
        batch_size=8,
        warmup_steps=5,
        preview_every=0,
        learning_rate=2e-3,
        checkpoint_every=0,
        augment=None,
        options=options or None,
    )
    return trainer.run().model_dir


@pytest.fixture(scope="session")
def tiny_disyre_dir(tmp_path_factory):
    """A tiny DISYRE model trained for 150 steps on 32x32 phantoms (~30 s on a CPU)."""
    return _train_tiny("disyre", tmp_path_factory.mktemp("models") / "tiny-disyre", 150)


@pytest.fixture(scope="session")
def tiny_madad_dir(tmp_path_factory):
    """A tiny MAD-AD model (130 autoencoder + 130 latent steps) on 32x32 phantoms (~30 s)."""
    return _train_tiny(
        "madad", tmp_path_factory.mktemp("models") / "tiny-madad", 260, vae_steps=130
    )


@pytest.fixture(scope="session")
def tiny_addm_dir(tiny_trained, tmp_path_factory):
    """The tiny DDPM saved as an ``addm`` model (ADDM's training is tested on its own)."""
    import copy

    model, config, _ = tiny_trained
    config = copy.deepcopy(config)
    config.name, config.method = "tiny-addm", "addm"
    config.calibration = {"threshold": 0.2, "percentile": 99.5}
    return save_checkpoint(tmp_path_factory.mktemp("models") / "tiny-addm", model, config)


@pytest.fixture(scope="session")
def tiny_ensemble_dir(tiny_disyre_dir, tiny_addm_dir, tmp_path_factory):
    """An ensemble of the tiny DISYRE and ADDM models, fitted on six healthy phantoms."""
    from napari_uad.methods import get_method_class
    from napari_uad.training.ensemble import ensemble_config, fit_ensemble, save_ensemble

    data = make_dataset(6, size=TINY_GRID, seed=50)
    folders = [("disyre", tiny_disyre_dir), ("addm", tiny_addm_dir)]
    members = [get_method_class(m).from_checkpoint(f) for m, f in folders]
    tables = fit_ensemble(members, data["images"], data["masks"], bins=4, smoothing=3)
    config = ensemble_config("tiny-ensemble", folders, grid=TINY_GRID, smoothing=3)
    folder = tmp_path_factory.mktemp("models") / "tiny-ensemble"
    return save_ensemble(folder, config, tables)


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir, tiny_addm_dir, tiny_disyre_dir, tiny_madad_dir, tiny_ensemble_dir):
    """Model folder for each of the seven methods (the DDPM serves three of them)."""
    return {
        "ensemble": tiny_ensemble_dir,
        "anoddpm": tiny_model_dir,
        "addm": tiny_addm_dir,
        "autoddpm": tiny_model_dir,
        "thor": tiny_model_dir,
        "disyre": tiny_disyre_dir,
        "madad": tiny_madad_dir,
    }


@pytest.fixture
def healthy_folder(tmp_path):
    """Three healthy 40 x 44 x 8 phantoms (float32) with their brain masks (uint8)."""
    folder = tmp_path / "healthy"
    folder.mkdir()
    for index in range(3):
        image, mask = make_brain((40, 44, 8), seed=10 + index)
        affine = np.diag([1.4, 1.4, 3.0, 1.0])
        nib.save(
            nib.Nifti1Image((image * 700).astype(np.float32), affine), folder / f"s{index}.nii.gz"
        )
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / f"s{index}_mask.nii.gz")
    return folder

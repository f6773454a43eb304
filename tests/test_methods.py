"""Every method behind one interface: tiny trained models on phantoms, and each method's own
stages (AutoDDPM's mask and stitching, DISYRE's gradient accumulation and windows, MAD-AD's
mask-restricted updates, THOR's harmonisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_uad.methods import METHOD_NAMES, get_method_class
from napari_uad.methods import autoddpm as autoddpm_module
from napari_uad.methods import disyre as disyre_module
from napari_uad.methods import madad as madad_module
from napari_uad.methods import thor as thor_module
from napari_uad.metrics import auroc
from napari_uad.models.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def methods(tiny_models):
    return {
        name: get_method_class(name).from_checkpoint(tiny_models[name]) for name in METHOD_NAMES
    }


@pytest.fixture(scope="module")
def results(methods, phantom_test_slices):
    data = phantom_test_slices
    return {
        name: method.restore(data["images"], data["masks"], seed=3)
        for name, method in methods.items()
    }


# Bars measured on these phantoms with these tiny models (AUROC 0.59-0.73 at default settings,
# chance is 0.5); each sits a few hundredths under its measurement.
AUROC_BARS = {
    "anoddpm": 0.65,
    "addm": 0.65,
    "autoddpm": 0.55,
    "thor": 0.6,
    "disyre": 0.6,
    "madad": 0.62,
    "ensemble": 0.7,
}


def test_every_method_of_the_design_is_registered():
    assert set(METHOD_NAMES) == {
        "anoddpm",
        "addm",
        "autoddpm",
        "disyre",
        "ensemble",
        "madad",
        "thor",
    }
    for name in METHOD_NAMES:
        assert get_method_class(name).name == name


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_outputs_match_the_input_and_separate_lesions(name, results, phantom_test_slices):
    data = phantom_test_slices
    result = results[name]
    assert result.healthy.shape == result.anomaly.shape == data["images"].shape
    assert result.anomaly.dtype == np.float32 and result.healthy.dtype == np.float32
    assert np.isfinite(result.anomaly).all() and result.anomaly.min() >= 0
    assert (result.anomaly[~data["masks"]] == 0).all()
    assert 0 <= result.healthy.min() and result.healthy.max() <= 1
    assert result.nfe >= 1
    score = auroc(result.anomaly, data["truths"], mask=data["masks"])
    assert score > AUROC_BARS[name], f"{name}: AUROC {score:.3f}"


# The tiny MAD-AD's mask head is unsure (probabilities under 0.3 on these lesions): at the
# default 0.5 nothing is updated, so its random DDIM noise never shows.
SEED_TEST_PARAMS = {"madad": {"mask_threshold": 0.1}}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_same_seed_same_map_other_seed_other_map(name, methods, phantom_test_slices):
    data = phantom_test_slices
    method = methods[name]
    params = SEED_TEST_PARAMS.get(name, {})
    first = method.restore(data["images"], data["masks"], seed=3, **params)
    again = method.restore(data["images"], data["masks"], seed=3, batch_size=2, **params)
    np.testing.assert_allclose(again.anomaly, first.anomaly, atol=1e-5)
    other = method.restore(data["images"], data["masks"], seed=4, **params)
    assert method.stochastic == (name != "disyre")
    if method.stochastic:
        assert not np.allclose(other.anomaly, first.anomaly)
    else:
        np.testing.assert_array_equal(other.anomaly, first.anomaly)


def test_methods_use_their_own_defaults_for_a_shared_model(methods):
    thor = methods["thor"].resolve_parameters()
    assert thor["noise_level"] == 150 and thor["harmonise_at"] == (125, 50) and thor["kernel"] == 3
    auto = methods["autoddpm"].resolve_parameters()
    assert auto["noise_level"] == 100 and auto["inpaint_level"] == 30
    assert methods["anoddpm"].resolve_parameters()["noise_level"] == 100
    # A calibration is for the method the model was trained for, not for all its users.
    assert methods["anoddpm"].calibrated_threshold() == pytest.approx(0.2)
    assert methods["thor"].calibrated_threshold() is None


def test_loaded_networks_run_channels_last_on_the_cpu_with_the_same_results(tiny_models):
    method = get_method_class("madad").from_checkpoint(tiny_models["madad"])
    for network in (method.model, method.vae):
        weights = [p for p in network.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    plain, _ = load_checkpoint(tiny_models["anoddpm"])
    fast = get_method_class("anoddpm").from_checkpoint(tiny_models["anoddpm"]).model
    x, t = torch.randn(4, 1, 32, 32), torch.full((4,), 50)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x, t), plain(x, t), rtol=1e-4, atol=1e-5)


def test_unknown_parameters_and_bad_values_are_refused(methods):
    with pytest.raises(ValueError, match="no parameter"):
        methods["disyre"].resolve_parameters(noise_level=3)
    with pytest.raises(ValueError, match="severities"):
        methods["disyre"].resolve_parameters(severities=[1.5])
    with pytest.raises(ValueError, match="patch_size"):
        methods["disyre"].resolve_parameters(patch_size=12)
    with pytest.raises(ValueError, match="reference"):
        methods["madad"].resolve_parameters(reference="vae")
    with pytest.raises(ValueError, match="resample_steps"):
        methods["autoddpm"].resolve_parameters(resample_steps=0)


def test_a_method_refuses_a_model_of_another_family(tiny_model_dir, tiny_disyre_dir):
    from napari_uad.models.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="autoencoder"):
        get_method_class("madad").from_checkpoint(tiny_model_dir)


# -- AutoDDPM ---------------------------------------------------------------------------------
def test_autoddpm_masks_the_lesion_stitches_and_keeps_the_input_outside_the_mask(
    methods, results, phantom_test_slices
):
    data = phantom_test_slices
    result = results["autoddpm"]
    brain, truth = data["masks"], data["truths"]
    # Outside the dilated mask the re-sampled image is the input itself, and the map is 0.
    repainted = np.abs(result.healthy - data["images"]) > 1e-6
    assert (result.anomaly[~repainted & brain] == 0).all()
    fraction = repainted[brain].mean()
    assert 0.1 < fraction < 0.75  # the top 20 % of the likelihood, dilated (32 px slices)
    # The mask finds the lesions better than chance: lesion pixels are repainted more often.
    assert repainted[truth & brain].mean() > fraction + 0.1


def test_autoddpm_stages_on_their_own():
    images = torch.rand(2, 1, 16, 16)
    reconstruction = torch.rand(2, 1, 16, 16)
    masks = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    likelihood = torch.zeros(2, 1, 16, 16)
    likelihood[:, :, 8, 8] = 1.0
    binary = autoddpm_module.binary_mask(likelihood, masks, threshold=0.5, dilation=3)
    assert binary.sum() == 2 * 9 and binary[0, 0, 7:10, 7:10].all()
    stitched = autoddpm_module.stitch(images, reconstruction, binary)
    assert torch.equal(stitched[binary], reconstruction[binary])
    assert torch.equal(stitched[~binary], images[~binary])
    ramp = torch.arange(2 * 256, dtype=torch.float32).reshape(2, 1, 16, 16)
    automatic = autoddpm_module.binary_mask(ramp, masks, percentile=75, dilation=1)
    assert automatic.float().mean() == pytest.approx(0.25, abs=0.01)  # each slice's top quarter
    assert automatic[:, :, 12:].all() and not automatic[:, :, :12].any()


def test_autoddpm_resampling_rounds_cost_network_evaluations(methods):
    method = methods["autoddpm"]
    few = method.resolve_parameters(resample_steps=1, inpaint_steps=4)
    many = method.resolve_parameters(resample_steps=3, inpaint_steps=4)
    reconstruction = len(method.timesteps(few))
    assert method.evaluations_per_slice(few) == reconstruction + 4
    assert method.evaluations_per_slice(many) == reconstruction + 3 * 3 + 1


# -- THOR -------------------------------------------------------------------------------------
def test_thor_harmonisation_keeps_healthy_tissue_closer_to_the_input(methods, phantom_test_slices):
    data = phantom_test_slices
    method = methods["thor"]
    guided = method.restore(data["images"], data["masks"], seed=1)
    plain = method.restore(data["images"], data["masks"], seed=1, harmonise_at=[])
    healthy_tissue = data["masks"] & ~data["truths"]
    error_guided = np.abs(guided.healthy - data["images"])[healthy_tissue].mean()
    error_plain = np.abs(plain.healthy - data["images"])[healthy_tissue].mean()
    assert error_guided < 0.92 * error_plain  # measured: 0.082 vs 0.096
    assert not np.allclose(guided.anomaly, plain.anomaly)


def test_thor_harmonise_mask_and_harmonic_mean():
    estimate, images = torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    anomaly = torch.zeros(1, 1, 32, 32)
    anomaly[..., 16, 16] = 1.0
    soft = thor_module.harmonisation_mask(anomaly, 5)
    assert soft[0, 0, 16, 16] == 1.0 and soft[0, 0, 14, 14] == 0.5 and soft[0, 0, 0, 0] == 0
    mixed = thor_module.harmonise(estimate, images, soft)
    assert mixed[0, 0, 16, 16] == 0.0 and mixed[0, 0, 0, 0] == 1.0
    maps = [torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 0.25)]
    assert torch.allclose(thor_module.harmonic_mean(maps), torch.tensor(0.4), atol=1e-4)
    maps.append(torch.zeros(1, 1, 2, 2))
    assert thor_module.harmonic_mean(maps).max() < 1e-5


# -- DISYRE -----------------------------------------------------------------------------------
class _ConstantRestorer(nn.Module):
    """Predicts the same clean image (0.2 in [0, 1]) whatever the input."""

    def forward(self, x, t):
        return torch.full_like(x, 0.2 * 2 - 1)


def test_disyre_accumulates_the_gradients_of_every_restoration_step(tiny_disyre_dir):
    _, config = load_checkpoint(tiny_disyre_dir)
    method = get_method_class("disyre")(_ConstantRestorer(), config)
    images = np.full((2, 32, 32), 0.8, dtype=np.float32)
    masks = np.ones((2, 32, 32), dtype=bool)
    result = method.restore(
        images, masks, severities=[0.6, 0.4, 0.2, 0.1], mode="multi-step", smoothing=0
    )
    # |x_k - x0| shrinks by s_{k+1} / s_1 each step: 0.6 * (1 + 2/3 + 1/3 + 1/6) / 4.
    expected = 0.6 * (1 + 2 / 3 + 1 / 3 + 1 / 6) / 4
    np.testing.assert_allclose(result.anomaly, expected, rtol=1e-5)
    np.testing.assert_allclose(result.healthy, 0.2 + 0.6 * (0.1 / 0.1) * 0, atol=1e-5)
    single = method.restore(images, masks, mode="single-step", smoothing=0)
    np.testing.assert_allclose(single.anomaly, 0.6, rtol=1e-5)


def test_disyre_sliding_windows_blend_back_exactly_and_weight_by_brain():
    images = torch.rand(2, 1, 32, 32)
    corners = disyre_module.window_corners(32, 16, 0.5)
    assert corners == [0, 8, 16]
    windows = disyre_module.extract_windows(images, corners, 16)
    assert windows.shape == (2 * 9, 1, 16, 16)
    blended = disyre_module.blend_windows(windows, corners, images.shape, 16)
    torch.testing.assert_close(blended, images)
    weights = torch.full((18,), 0.5)
    halved = disyre_module.blend_windows(windows, corners, images.shape, 16, weights=weights)
    torch.testing.assert_close(halved, images * 0.5)


def test_disyre_with_windows_counts_each_window_as_an_evaluation(methods, phantom_test_slices):
    data = phantom_test_slices
    method = methods["disyre"]
    result = method.restore(data["images"], data["masks"], patch_size=16, overlap=0.5)
    assert result.nfe == len(result.parameters["severities"]) * 9  # 3 x 3 windows each
    assert auroc(result.anomaly, data["truths"], mask=data["masks"]) > 0.55


# -- MAD-AD -----------------------------------------------------------------------------------
def test_madad_updates_only_the_positions_the_mask_head_flags(tiny_madad_dir):
    model, config = load_checkpoint(tiny_madad_dir)
    method = get_method_class("madad").from_checkpoint(tiny_madad_dir)
    channels = method.latent_channels

    class LeftHalfMask(nn.Module):
        """Clean-latent estimate 0, mask head certain about the left half only."""

        def forward(self, z, t):
            logits = torch.full_like(z[:, :1], -10.0)
            logits[..., : z.shape[-1] // 2] = 10.0
            return torch.cat([torch.zeros_like(z), logits], dim=1)

    method.model = LeftHalfMask()
    latents = []
    original_decode = method.decode
    method.decode = lambda z: (latents.append(z.clone()), original_decode(z))[1]
    images = np.full((2, 32, 32), 0.5, dtype=np.float32)
    masks = np.ones((2, 32, 32), dtype=bool)
    method.restore(images, masks, steps=10, eta=0.5)
    with torch.no_grad():
        start = method.encode(torch.from_numpy(images)[:, None])
    final = latents[-1]
    half = final.shape[-1] // 2
    torch.testing.assert_close(final[..., half:], start[..., half:])  # untouched
    assert final[..., :half].abs().max() < 1e-5  # restored to the predicted clean latent 0
    assert channels == start.shape[1]


def test_masked_ddim_step_is_plain_ddim_inside_and_identity_outside():
    from napari_uad.diffusion.scheduler import DDPMScheduler

    scheduler = DDPMScheduler(
        10, beta_schedule="cosine", prediction_type="sample", clip_sample=None
    )
    latent, predicted = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    update = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    update[..., 0, 0] = True
    out = madad_module.masked_ddim_step(scheduler, predicted, 9, latent, update, prev_t=5)
    ddim = scheduler.step(predicted, 9, latent, prev_t=5).prev_sample
    torch.testing.assert_close(out[..., 0, 0], ddim[..., 0, 0])
    torch.testing.assert_close(out[..., 1:, :], latent[..., 1:, :])


def test_madad_map_is_the_blurred_clipped_squared_residual():
    healthy = torch.zeros(1, 1, 16, 16)
    reference = torch.zeros(1, 1, 16, 16)
    reference[..., 8, 8] = 0.5  # squared 0.25, clipped to gamma
    masks = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    sharp = madad_module.anomaly_map(healthy, reference, masks, gamma=0.1, sigma=0)
    assert sharp.max() == 1.0 and sharp.sum() == 1.0
    blurred = madad_module.anomaly_map(healthy, reference, masks, gamma=0.1, sigma=1.5)
    assert blurred.max() < 0.2 and blurred.sum() == pytest.approx(1.0, abs=1e-3)


# -- samples and uncertainty -------------------------------------------------------------------
def test_samples_average_seeded_runs_and_report_their_spread(methods, phantom_test_slices):
    data = phantom_test_slices
    method = methods["anoddpm"]
    images, masks = data["images"][:2], data["masks"][:2]
    runs = [method.restore(images, masks, seed=s, eta=1.0) for s in (7, 8, 9)]
    ensemble = method.restore(images, masks, seed=7, samples=3, eta=1.0)
    stacked = np.stack([r.anomaly for r in runs])
    np.testing.assert_allclose(ensemble.anomaly, stacked.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(ensemble.uncertainty, stacked.std(axis=0), atol=1e-4)
    assert ensemble.uncertainty[masks].max() > 0 and (ensemble.uncertainty[~masks] == 0).all()
    assert ensemble.nfe == 3 * runs[0].nfe and ensemble.samples == 3
    assert runs[0].uncertainty is None


def test_samples_of_a_deterministic_method_have_no_spread(methods, phantom_test_slices):
    data = phantom_test_slices
    result = methods["disyre"].restore(data["images"][:2], data["masks"][:2], samples=2)
    assert result.uncertainty.max() == 0


def test_a_shared_model_stores_and_uses_a_calibration_per_method(
    tiny_model_dir, tmp_path, phantom_train_slices, phantom_scan_files
):
    import shutil

    from napari_uad.io import read_mask, read_scan
    from napari_uad.models.checkpoint import load_config, save_checkpoint
    from napari_uad.pipeline import detect
    from napari_uad.training.calibrate import calibrate_method, store_calibration

    folder = tmp_path / "shared"
    shutil.copytree(tiny_model_dir, folder)
    thor = get_method_class("thor").from_checkpoint(folder)
    healthy = phantom_train_slices
    entry = calibrate_method(thor, healthy["images"][:8], healthy["masks"][:8])
    model, config = load_checkpoint(folder)
    store_calibration(config, "thor", entry)
    store_calibration(config, "anoddpm", {"threshold": 0.3})
    save_checkpoint(folder, model, config)
    stored = load_config(folder).calibration
    assert stored["threshold"] == 0.3 and stored["methods"]["thor"]["threshold"] > 0
    assert stored["methods"]["thor"]["parameters"]["harmonise_at"] == [125, 50]
    scan = read_scan(phantom_scan_files["scan"])
    brain = read_mask(phantom_scan_files["mask"], like=scan)
    result = detect(scan, method="thor", model=folder, brain_mask=brain, device="cpu")
    assert result.provenance["parameters"]["threshold_source"] == "model calibration"
    assert result.threshold == pytest.approx(entry["threshold"])

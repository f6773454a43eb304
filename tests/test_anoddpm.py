import numpy as np
import pytest
import torch

from napari_uad.methods import get_method_class
from napari_uad.methods.anoddpm import AnoDDPM, median_filter2d
from napari_uad.methods.base import Cancelled
from napari_uad.metrics import auroc
from napari_uad.models.unet import UNet


def _random_model(config):
    torch.manual_seed(0)
    model = UNet(config.unet)
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.05)
    return model.eval()


def test_training_reduces_the_loss(tiny_trained):
    _, _, history = tiny_trained
    assert np.mean(history.losses[-20:]) < 0.3 * np.mean(history.losses[:10])


def test_trained_ddpm_separates_lesions_and_beats_random_weights(tiny_trained, phantom_test_slices):
    model, config, _ = tiny_trained
    data = phantom_test_slices
    trained = AnoDDPM(model, config).restore(data["images"], data["masks"])
    random = AnoDDPM(_random_model(config), config).restore(data["images"], data["masks"])
    auc_trained = auroc(trained.anomaly, data["truths"], mask=data["masks"])
    auc_random = auroc(random.anomaly, data["truths"], mask=data["masks"])
    assert auc_trained > 0.62
    assert auc_trained > auc_random + 0.05
    # The restoration is closer to the lesion-free image than the input is, inside lesions.
    lesion = data["truths"]
    error_restored = np.abs(trained.healthy - data["healthy"])[lesion].mean()
    error_input = np.abs(data["images"] - data["healthy"])[lesion].mean()
    assert error_restored < error_input


def test_outputs_shapes_ranges_and_zero_outside_brain(tiny_trained, phantom_test_slices):
    model, config, _ = tiny_trained
    data = phantom_test_slices
    result = AnoDDPM(model, config).restore(data["images"], data["masks"], smoothing=3)
    assert result.healthy.shape == result.anomaly.shape == data["images"].shape
    assert result.anomaly.dtype == np.float32
    assert (result.anomaly[~data["masks"]] == 0).all()
    assert result.anomaly.min() >= 0
    assert 0 <= result.healthy.min() and result.healthy.max() <= 1
    assert result.nfe == 5
    assert result.parameters["noise"] == "gaussian"


@pytest.mark.parametrize("noise", ["gaussian", "simplex"])
def test_same_seed_same_map_whatever_the_batch_size(tiny_trained, phantom_test_slices, noise):
    model, config, _ = tiny_trained
    method = AnoDDPM(model, config)
    data = phantom_test_slices
    with pytest.warns(UserWarning) if noise == "simplex" else _no_warning():
        a = method.restore(
            data["images"], data["masks"], seed=5, batch_size=6, noise=noise, eta=1.0
        )
        b = method.restore(
            data["images"], data["masks"], seed=5, batch_size=2, noise=noise, eta=1.0
        )
        c = method.restore(
            data["images"], data["masks"], seed=6, batch_size=6, noise=noise, eta=1.0
        )
    np.testing.assert_allclose(a.anomaly, b.anomaly, atol=1e-5)
    assert not np.allclose(a.anomaly, c.anomaly)


def test_single_slice_matches_volume_run(tiny_trained, phantom_test_slices):
    model, config, _ = tiny_trained
    method = AnoDDPM(model, config)
    data = phantom_test_slices
    full = method.restore(data["images"], data["masks"], seed=1)
    one = method.restore(data["images"][3:4], data["masks"][3:4], seed=1, slice_ids=[3])
    np.testing.assert_allclose(one.anomaly[0], full.anomaly[3], atol=1e-5)


def test_progress_cancel_and_intermediates(tiny_trained, phantom_test_slices):
    model, config, _ = tiny_trained
    method = AnoDDPM(model, config)
    data = phantom_test_slices
    updates = []
    result = method.restore(
        data["images"],
        data["masks"],
        batch_size=4,
        steps=3,
        progress=updates.append,
        keep_intermediates=True,
    )
    assert [u.done for u in updates] == list(range(1, 7))
    assert all(u.total == 6 for u in updates)
    assert updates[0].preview.shape == (4, 32, 32)
    assert list(updates[-1].slice_ids) == [4, 5]
    assert len(result.intermediates) == 3
    assert result.intermediates[-1].shape == data["images"].shape

    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(Cancelled):
        method.restore(data["images"], data["masks"], steps=5, should_stop=stop_after_two)
    assert len(calls) == 2  # stopped within one denoising step of the request


def test_parameter_validation(tiny_trained, phantom_test_slices):
    model, config, _ = tiny_trained
    method = get_method_class("anoddpm")(model, config)
    data = phantom_test_slices
    for bad in (
        {"noise_level": 0},
        {"noise_level": 1000},
        {"steps": 0},
        {"eta": 2.0},
        {"noise": "pink"},
        {"unknown": 1},
    ):
        with pytest.raises(ValueError):
            method.restore(data["images"], data["masks"], **bad)
    with pytest.raises(ValueError, match="model expects"):
        method.restore(np.zeros((1, 16, 16)), np.ones((1, 16, 16), bool))
    with pytest.raises(ValueError, match="unknown method"):
        get_method_class("nope")


def test_full_schedule_nfe(tiny_trained):
    model, config, _ = tiny_trained
    method = AnoDDPM(model, config)
    params = method.resolve_parameters(noise_level=250, steps=1000)
    assert method.evaluations_per_slice(params) == 251


def test_median_filter2d_matches_scipy():
    from scipy.ndimage import median_filter

    x = torch.rand(2, 1, 9, 11, generator=torch.Generator().manual_seed(0))
    ours = median_filter2d(x, 3).numpy()
    theirs = median_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

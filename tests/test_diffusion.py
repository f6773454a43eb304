import numpy as np
import pytest
import torch

from napari_uad.diffusion.noise import gaussian_noise, make_noise, simplex_noise
from napari_uad.diffusion.scheduler import DDPMScheduler
from napari_uad.diffusion.schedules import cosine_betas, linear_betas, make_betas


def test_linear_schedule_matches_ho_et_al():
    betas = linear_betas(1000)
    assert betas.dtype == torch.float32
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas[1:] > betas[:-1])


def test_linear_schedule_rescales_for_fewer_steps():
    short = torch.cumprod(1 - linear_betas(500).double(), 0)[-1]
    long = torch.cumprod(1 - linear_betas(1000).double(), 0)[-1]
    assert short.item() == pytest.approx(long.item(), abs=1e-4)


def test_cosine_schedule_alpha_bar_decreases_to_near_zero():
    abar = torch.cumprod(1 - cosine_betas(1000).double(), 0)
    assert abar[0] > 0.999
    assert abar[-1] < 1e-3
    assert torch.all(abar[1:] <= abar[:-1])


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="linear"):
        make_betas("quadratic", 100)


def test_timesteps_exact_values():
    scheduler = DDPMScheduler(1000)
    assert scheduler.timesteps(5, start=200) == [200, 150, 100, 50, 0]
    assert scheduler.timesteps(1, start=250) == [250]
    assert scheduler.timesteps(3, start=2) == [2, 1, 0]
    assert scheduler.timesteps(1000, start=9) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        scheduler.timesteps(5, start=1000)


def test_add_noise_formula():
    scheduler = DDPMScheduler(1000)
    x0 = torch.ones(2, 1, 4, 4)
    noise = torch.full_like(x0, 2.0)
    t = torch.tensor([0, 999])
    xt = scheduler.add_noise(x0, noise, t)
    abar = scheduler.alphas_cumprod[t]
    expected = abar.sqrt() + 2 * (1 - abar).sqrt()
    assert torch.allclose(xt[:, 0, 0, 0], expected)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_split_prediction_inverts_training_target(prediction):
    scheduler = DDPMScheduler(1000, prediction_type=prediction, clip_sample=None)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(3, 1, 8, 8, generator=generator)
    t = torch.tensor([5, 300, 900])
    xt = scheduler.add_noise(x0, noise, t)
    target = scheduler.training_target(x0, noise, t)
    x0_hat, eps_hat = scheduler.split_prediction(target, t, xt)
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    assert torch.allclose(eps_hat, noise, atol=1e-3)


def test_eta_one_unit_stride_is_the_ddpm_posterior():
    """step(eta=1, prev_t=t-1) equals Ho et al.'s posterior mean + sigma * z (eqs. 6-7)."""
    scheduler = DDPMScheduler(1000, clip_sample=None)
    generator = torch.Generator().manual_seed(1)
    xt = torch.randn(2, 1, 8, 8, generator=generator)
    eps = torch.randn(2, 1, 8, 8, generator=generator)
    z = torch.randn(2, 1, 8, 8, generator=generator)
    t = 400
    out = scheduler.step(eps, t, xt, prev_t=t - 1, eta=1.0, noise=z)
    beta = scheduler.betas[t].double()
    abar = scheduler.alphas_cumprod[t].double()
    abar_prev = scheduler.alphas_cumprod[t - 1].double()
    alpha = 1 - beta
    mean = (xt.double() - beta / (1 - abar).sqrt() * eps.double()) / alpha.sqrt()
    sigma = ((1 - abar_prev) / (1 - abar) * beta).sqrt()
    assert torch.allclose(out.prev_sample.double(), mean + sigma * z.double(), atol=1e-4)


class _OracleModel:
    """Predicts the exact noise that maps x_t back to a fixed clean image."""

    def __init__(self, scheduler, clean):
        self.scheduler, self.clean = scheduler, clean

    def __call__(self, xt, t):
        abar = self.scheduler.alphas_cumprod[t]
        return (xt - abar.sqrt() * self.clean) / (1 - abar).sqrt()


def _sample(scheduler, model, x, timesteps, *, eta, generator):
    for i, t in enumerate(timesteps):
        prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        noise = torch.randn(x.shape, generator=generator)
        x = scheduler.step(model(x, t), t, x, prev_t=prev_t, eta=eta, noise=noise).prev_sample
    return x


def test_ddim_full_steps_matches_ddpm_on_fixed_model():
    scheduler = DDPMScheduler(1000)
    generator = torch.Generator().manual_seed(2)
    clean = torch.rand(1, 1, 16, 16, generator=generator) * 2 - 1
    start = scheduler.add_noise(clean, torch.randn(clean.shape, generator=generator), 250)
    model = _OracleModel(scheduler, clean)
    steps = scheduler.timesteps(251, start=250)
    ddpm = _sample(scheduler, model, start, steps, eta=1.0, generator=generator)
    ddim = _sample(scheduler, model, start, steps, eta=0.0, generator=generator)
    ddim_strided = _sample(
        scheduler, model, start, scheduler.timesteps(10, start=250), eta=0.0, generator=generator
    )
    assert torch.allclose(ddpm, clean, atol=1e-3)
    assert torch.allclose(ddim, ddpm, atol=1e-3)
    assert torch.allclose(ddim_strided, ddpm, atol=1e-3)


def test_ddim_full_vs_strided_close_on_smooth_network():
    """A fixed (random, smooth) network: 250-step and 50-step DDIM land close together."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    torch.nn.init.constant_(net.weight, 0.02)
    scheduler = DDPMScheduler(1000)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 16, 16, generator=generator) * 0.5

    def model(xt, t):
        return net(xt)

    with torch.no_grad():
        full = _sample(
            scheduler, model, x, scheduler.timesteps(251, start=250), eta=0, generator=generator
        )
        fewer = _sample(
            scheduler, model, x, scheduler.timesteps(50, start=250), eta=0, generator=generator
        )
    assert (full - fewer).abs().mean() < 0.02


def test_simplex_noise_statistics():
    generator = torch.Generator().manual_seed(0)
    noise = simplex_noise((8, 1, 64, 64), generator=generator)
    assert noise.shape == (8, 1, 64, 64)
    assert torch.isfinite(noise).all()
    per_image_mean = noise.mean(dim=(-2, -1))
    per_image_std = noise.std(dim=(-2, -1))
    assert torch.allclose(per_image_mean, torch.zeros_like(per_image_mean), atol=1e-5)
    assert torch.allclose(per_image_std, torch.ones_like(per_image_std), atol=1e-4)
    # Spatially correlated, unlike white Gaussian noise.
    neighbour = (noise[..., :, 1:] * noise[..., :, :-1]).mean().item()
    white = gaussian_noise((8, 1, 64, 64), generator=generator)
    white_neighbour = (white[..., :, 1:] * white[..., :, :-1]).mean().item()
    assert neighbour > 0.5
    assert abs(white_neighbour) < 0.05
    # Images in a batch differ.
    assert (noise[0] - noise[1]).abs().mean() > 0.5


def test_simplex_noise_is_seeded():
    a = simplex_noise((2, 32, 32), generator=torch.Generator().manual_seed(7))
    b = simplex_noise((2, 32, 32), generator=torch.Generator().manual_seed(7))
    c = simplex_noise((2, 32, 32), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_simplex_noise_has_multiple_octaves():
    """Higher persistence puts more energy into fine scales."""
    gen = torch.Generator().manual_seed(0)
    coarse = simplex_noise((4, 64, 64), persistence=0.2, generator=gen)
    gen = torch.Generator().manual_seed(0)
    fine = simplex_noise((4, 64, 64), persistence=0.9, generator=gen)

    def roughness(x):
        return (x[..., 1:] - x[..., :-1]).pow(2).mean().item()

    assert roughness(fine) > 2 * roughness(coarse)


def test_make_noise_rejects_unknown_kind():
    with pytest.raises(ValueError, match="gaussian"):
        make_noise("pink", (1, 4, 4))
    assert np.isfinite(make_noise("simplex", (1, 16, 16)).numpy()).all()

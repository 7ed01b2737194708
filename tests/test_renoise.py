"""ReNoise: schedule of iterations and windows, the regulariser, and the published NaN failure."""

import pytest
import torch

from diffinv import METHODS, invert, reconstruct
from diffinv.methods.renoise import patch_kl, regularize_noise
from diffinv.models import StableDiffusionBackend
from diffinv.testing import write_tiny_stable_diffusion


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


def test_official_sd_configuration_costs_150_nfe(mixture):
    spec = METHODS["renoise"]
    sched = mixture.schedule(50)
    assert spec.nfe(spec.resolve({}), sched) == 150           # 2 evaluations + 1 reference per step
    assert spec.nfe(spec.resolve({"K": 9}), sched) == 13 * 6 + 37 * 10 + 50  # capped at 5 below t = 250


def test_without_regulariser_or_window_it_is_picard(mixture, mixture_samples):
    x = mixture_samples[:3]
    renoise = invert("renoise", mixture, x, K=3, reg_steps=0, average=False, num_steps=10)
    fpi = invert("fpi", mixture, x, K=4, num_steps=10)
    torch.testing.assert_close(renoise.latent, fpi.latent)


def test_regulariser_refuses_vector_latents(mixture, mixture_samples):
    with pytest.raises(ValueError, match="reg_steps=0"):
        invert("renoise", mixture, mixture_samples[:2], num_steps=5)


def test_kl_gradient_overflows_on_a_flat_float16_patch():
    flat = torch.zeros(4, 4, 4, dtype=torch.float16)
    reference = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(0)).half()
    with torch.enable_grad():
        var = flat.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(patch_kl(var, reference), var)
    assert not torch.isfinite(grad).all()   # d/dv log(1/(v + 1e-6)) = -1e6 overflows float16, times 0
    out = regularize_noise(flat, reference, torch.Generator().manual_seed(0), lambda_kl=0.065, lambda_ac=20,
                           reg_steps=4, ac_rolls=5, nan_guard=True)
    assert torch.isfinite(out).all()


def test_flat_white_image_fails_in_float16_and_the_guard_removes_it(folder):
    # ReNoise issue #9: black outputs on white backgrounds. Reproduced here through the UNet in float16.
    model = StableDiffusionBackend.from_pretrained(folder, device="cpu", dtype=torch.float16)
    z0 = model.encode(torch.ones(1, 3, 64, 64, dtype=torch.float16))
    assert not torch.isfinite(invert("renoise", model, z0, num_steps=10).latent).all()
    guarded = invert("renoise", model, z0, num_steps=10, nan_guard=True)
    assert torch.isfinite(guarded.latent).all()
    assert torch.isfinite(reconstruct("renoise", model, guarded)).all()


def test_batch_equals_images_one_by_one_despite_random_shifts(folder):
    model = StableDiffusionBackend.from_pretrained(folder, device="cpu", dtype=torch.float64)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    z0 = model.encode(images)
    batch = invert("renoise", model, z0, num_steps=5).latent
    single = torch.cat([invert("renoise", model, z0[b:b + 1], num_steps=5).latent for b in range(2)])
    torch.testing.assert_close(batch, single)


def looped_auto_correlation(e, generator):
    """The official loop, channel by channel (pix2pix-zero / ReNoise), as the reference."""
    import torch.nn.functional as F

    loss = e.new_zeros(())
    for channel in e:
        noise = channel[None, None]
        while True:
            shift = int(torch.randint(0, max(noise.shape[2] // 2, 1), (1,), generator=generator))
            loss = loss + (noise * noise.roll(shift, dims=2)).mean() ** 2
            loss = loss + (noise * noise.roll(shift, dims=3)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return loss


@pytest.mark.parametrize("shape", [(4, 64, 64), (3, 40, 24), (2, 8, 8), (4, 5, 7), (3, 37, 21)])
def test_closed_form_auto_correlation_gradient_equals_autograd_through_the_official_loop(shape):
    from diffinv.methods.renoise import auto_correlation_grad

    e = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = e.clone().requires_grad_(True)
    loss = looped_auto_correlation(x, torch.Generator().manual_seed(7))
    (expected,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(auto_correlation_grad(e, torch.Generator().manual_seed(7)), expected,
                               rtol=1e-10, atol=1e-15)

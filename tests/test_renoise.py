"""ReNoise: schedule of iterations and windows, the regulariser, and the published NaN failure."""

import pytest
import torch

from diffinv import METHODS, invert, reconstruct
from diffinv.methods.noise_regularizer import NoiseRegularizer, auto_correlation_grad, patch_kl_grad, regularize_noise
from diffinv.methods.noise_regularizer.reference import (auto_correlation_loss, patch_kl,
                                                         reference_auto_correlation_grad, reference_kl_grad,
                                                         reference_regularize_noise)
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
    assert not torch.isfinite(patch_kl_grad(flat, reference)).all()  # the closed form overflows alike
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


@pytest.mark.parametrize("shape", [(4, 64, 64), (3, 40, 24), (2, 8, 8), (4, 5, 7), (3, 37, 21)])
def test_closed_form_auto_correlation_gradient_equals_autograd_through_the_official_loop(shape):
    e = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = e.clone().requires_grad_(True)
    loss = auto_correlation_loss(x, torch.Generator().manual_seed(7))
    (expected,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(auto_correlation_grad(e, torch.Generator().manual_seed(7)), expected,
                               rtol=1e-10, atol=1e-15)


def seeded(count, seed=0):
    return [torch.Generator().manual_seed(seed + b) for b in range(count)]


def noise_and_reference(shape, seed):
    data = torch.Generator().manual_seed(100 + seed)
    noise = torch.randn(shape, dtype=torch.float64, generator=data)
    return noise, noise + 0.5 * torch.randn(shape, dtype=torch.float64, generator=data)


OFFICIAL = {"lambda_kl": 0.065, "lambda_ac": 20.0, "reg_steps": 4, "ac_rolls": 5}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("nan_guard", [False, True])
@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (3, 4, 8, 8), (1, 4, 64, 64), (3, 4, 64, 64), (2, 3, 64, 64),
                                   (2, 3, 40, 24), (2, 3, 37, 21)])
def test_vectorised_regulariser_equals_the_previous_one(shape, nan_guard, seed):
    # 64 x 64 and 40 x 24 halve exactly down the pyramid (one run of polyphase planes), 37 x 21 does not
    noise, reference = noise_and_reference(shape, seed)
    new_generators, old_generators = seeded(shape[0], seed), seeded(shape[0], seed)
    new = NoiseRegularizer(new_generators, nan_guard=nan_guard, **OFFICIAL)(noise, reference)
    old = torch.stack([reference_regularize_noise(noise[b], reference[b], old_generators[b], nan_guard=nan_guard,
                                                  **OFFICIAL) for b in range(shape[0])])
    torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    for new_generator, old_generator in zip(new_generators, old_generators):  # as many shifts drawn
        assert torch.equal(new_generator.get_state(), old_generator.get_state())
    single = regularize_noise(noise[-1], reference[-1], seeded(shape[0], seed)[-1], nan_guard=nan_guard, **OFFICIAL)
    torch.testing.assert_close(single, old[-1], rtol=1e-12, atol=1e-12)


def test_guard_skips_only_the_image_whose_gradient_is_not_finite():
    noise, reference = noise_and_reference((2, 4, 64, 64), 0)
    noise[1, 2, 5, 7] = float("nan")
    new = NoiseRegularizer(seeded(2), nan_guard=True, **OFFICIAL)(noise, reference)
    old = torch.stack([reference_regularize_noise(noise[b], reference[b], generator, nan_guard=True, **OFFICIAL)
                       for b, generator in enumerate(seeded(2))])
    torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.isfinite(new[0]).all() and not torch.equal(new[0], noise[0])
    torch.testing.assert_close(new[1], noise[1], rtol=0, atol=0, equal_nan=True)  # every update skipped


def test_regulariser_reused_across_calls_equals_fresh_ones():
    # ReNoise keeps one regulariser (and its buffers) for a whole inversion; its generators run on
    regularizer, generators = NoiseRegularizer(seeded(2), nan_guard=False, **OFFICIAL), seeded(2)
    for seed in range(3):
        noise, reference = noise_and_reference((2, 4, 64, 64), seed)
        expected = torch.stack([reference_regularize_noise(noise[b], reference[b], generators[b], nan_guard=False,
                                                           **OFFICIAL) for b in range(2)])
        torch.testing.assert_close(regularizer(noise, reference), expected, rtol=1e-12, atol=1e-12)


def test_vectorised_regulariser_batch_equals_its_images_one_by_one():
    noise, reference = noise_and_reference((3, 4, 64, 64), 0)
    batch = NoiseRegularizer(seeded(3), nan_guard=False, **OFFICIAL)(noise, reference)
    for b, generator in enumerate(seeded(3)):
        single = NoiseRegularizer([generator], nan_guard=False, **OFFICIAL)(noise[b:b + 1], reference[b:b + 1])
        torch.testing.assert_close(batch[b:b + 1], single, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(4, 64, 64), (3, 64, 64), (3, 40, 24), (2, 8, 8), (4, 5, 7), (3, 37, 21),
                                   (4, 16, 48), (1, 96, 96)])
def test_auto_correlation_gradient_equals_the_previous_one(shape, seed):
    noise = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(auto_correlation_grad(noise, torch.Generator().manual_seed(seed)),
                               reference_auto_correlation_grad(noise, torch.Generator().manual_seed(seed)),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [(4, 64, 64), (2, 3, 16, 16), (3, 37, 21)])
def test_closed_form_kl_gradient_equals_autograd(shape):
    noise, reference = noise_and_reference(shape, 0)
    expected = torch.stack([reference_kl_grad(n, r) for n, r in zip(noise.view(-1, *shape[-3:]),
                                                                   reference.view(-1, *shape[-3:]))])
    torch.testing.assert_close(patch_kl_grad(noise, reference), expected.view(shape), rtol=1e-12, atol=1e-12)

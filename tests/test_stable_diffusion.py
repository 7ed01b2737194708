"""The SD backend on tiny random-weight components (plumbing only: no number here means quality)."""

import pytest
import torch

from diffinv import METHODS, invert, reconstruct
from diffinv.models import StableDiffusionBackend
from diffinv.testing import SCALING_FACTOR, write_tiny_stable_diffusion

PARAMS = {"fpi": {"K": 2}, "aidi_e": {"K": 2}, "aidi_a": {"K": 3, "m": 1}, "ife": {"compute_e0": True}}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def tiny_sd(tiny_folder):
    return StableDiffusionBackend.from_pretrained(tiny_folder, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 16, 16, generator=g) * 2 - 1


def test_loads_the_folder_and_builds_the_sd_grid(tiny_sd):
    sched = tiny_sd.schedule(50)
    assert sched.timesteps[1:4] == (1, 21, 41) and sched.alpha_bar[0] == float(tiny_sd.alphas_cumprod[0])
    assert tiny_sd.latent_scale == SCALING_FACTOR
    assert next(tiny_sd.unet.parameters()).dtype == torch.float32


def test_image_round_trip_shapes_and_range(tiny_sd, images):
    z = tiny_sd.encode(images)
    assert z.shape == (2, 4, 8, 8)
    # the latent is the posterior mean times the scaling factor
    mean = tiny_sd.vae.encode(images).latent_dist.mean * SCALING_FACTOR
    torch.testing.assert_close(z, mean)
    out = tiny_sd.decode(z)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1


def test_prompts_embed_per_image_and_empty_prompt_is_unconditional(tiny_sd):
    cond = tiny_sd.condition(["the cat", "a dog"], 2)
    assert cond.cond.shape == cond.uncond.shape == (2, 16, 16)
    assert not torch.equal(cond.cond[0], cond.cond[1])
    torch.testing.assert_close(tiny_sd.condition(None, 1).cond[0], cond.uncond[0])
    with pytest.raises(ValueError, match="3 prompts for a batch of 2"):
        tiny_sd.condition(["a", "b", "c"], 2)


def test_guided_prediction_is_uncond_plus_w_times_difference(tiny_sd, images):
    z = tiny_sd.encode(images)
    cond = tiny_sd.condition("the cat", 2)
    start = tiny_sd.nfe
    guided = tiny_sd.eps(z, 501, cond, 3.0)
    assert tiny_sd.nfe - start == 2
    c = tiny_sd.forward(z, 501, cond.cond)
    u = tiny_sd.forward(z, 501, cond.uncond)
    torch.testing.assert_close(guided, u + 3.0 * (c - u), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("name", sorted(n for n, spec in METHODS.items() if "vp" in spec.paths))
def test_every_method_runs_and_counts_nfe(tiny_sd, images, name, guidance):
    z0 = tiny_sd.encode(images)
    result = invert(name, tiny_sd, z0, ["the cat", "a dog"], num_steps=5, guidance=guidance, **PARAMS.get(name, {}))
    per_pass = 1 if guidance == 1.0 else 2
    spec = METHODS[name]
    assert result.nfe == per_pass * spec.nfe(spec.resolve(PARAMS.get(name, {})), result.schedule)
    start = tiny_sd.nfe
    rec = reconstruct(name, tiny_sd, result, ["the cat", "a dog"])
    assert tiny_sd.nfe - start == per_pass * spec.reconstruct_nfe(result.schedule)
    assert rec.shape == z0.shape and torch.isfinite(rec).all()


def test_runs_are_bitwise_reproducible(tiny_sd, images):
    z0 = tiny_sd.encode(images)
    a = invert("ife", tiny_sd, z0, "the cat", num_steps=5)
    b = invert("ife", tiny_sd, tiny_sd.encode(images.clone()), "the cat", num_steps=5)
    assert torch.equal(a.latent, b.latent)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(OSError, match="nowhere"):
        StableDiffusionBackend.from_pretrained(tmp_path / "nowhere", local_files_only=True)


@pytest.fixture(scope="module")
def tiny_sd64(tiny_folder):
    return StableDiffusionBackend.from_pretrained(tiny_folder, device="cpu", dtype=torch.float64)


EXACT = ["bdia", "belm", "edict", "erddci"]


def rel_error(model, name, z0, steps, **params):
    result = invert(name, model, z0, "the cat", num_steps=steps, guidance=2.0, **params)
    return ((reconstruct(name, model, result, "the cat") - z0).norm() / z0.norm()).item()


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("steps", [10, 50])
def test_exact_methods_reconstruct_the_latent_through_the_unet(tiny_sd, tiny_sd64, images, name, steps):
    assert rel_error(tiny_sd64, name, tiny_sd64.encode(images.double()), steps) <= 1e-10
    assert rel_error(tiny_sd, name, tiny_sd.encode(images), steps) <= 1e-4


def test_edict_round_off_grows_as_p_falls_in_float32(tiny_sd, images):
    # Inversion divides by p twice per step: measured 4.8e-6 at p = 0.93 and 8e-2 at p = 0.8 (N = 50).
    z0 = tiny_sd.encode(images)
    errors = {p: rel_error(tiny_sd, "edict", z0, 50, p=p) for p in (0.93, 0.8)}
    assert errors[0.93] <= 1e-4 and errors[0.8] > 100 * errors[0.93]

"""The exact-inversion family: reconstruction returns the encoded latent up to round-off."""

import pytest
import torch

from diffinv import invert, reconstruct
from diffinv.methods.easyinv import SDXL_DEFAULTS

EXACT = [("bdia", {}), ("bdia", {"gamma": 0.94}), ("belm", {}), ("edict", {}), ("edict", {"leapfrog": False}),
         ("erddci", {})]


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("name,params", EXACT)
def test_exact_on_the_analytic_model_in_float64(mixture, mixture_samples, name, params, steps):
    x = mixture_samples[:8]
    result = invert(name, mixture, x, num_steps=steps, **params)
    assert isinstance(result.state, tuple) and len(result.state) == 2
    assert rel_error(reconstruct(name, mixture, result), x) <= 1e-10


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("name,params", EXACT)
def test_exact_with_guidance_in_float32(mixture, mixture_samples, name, params, steps):
    x = mixture_samples[:4].float()
    result = invert(name, mixture, x, num_steps=steps, guidance=3.0, **params)
    assert rel_error(reconstruct(name, mixture, result), x) <= 1e-4


def test_bdia_round_off_grows_as_gamma_falls(mixture, mixture_samples):
    x = mixture_samples[:4].float()
    errors = [rel_error(reconstruct("bdia", mixture, invert("bdia", mixture, x, gamma=g)), x)
              for g in (1.0, 0.9, 0.7)]
    assert errors[0] < errors[2]


def test_easyinv_blends_only_inside_its_window(mixture, mixture_samples):
    x = mixture_samples[:2]
    plain = invert("ddim", mixture, x, trajectory=True).trajectory
    easy = invert("easyinv", mixture, x, trajectory=True).trajectory
    # j = i - 1 in 3..12 at N = 50: identical before, different from step i = 4 on
    for step in range(3):
        assert torch.equal(plain[step]["z"], easy[step]["z"])
    assert not torch.equal(plain[3]["z"], easy[3]["z"])
    after = invert("easyinv", mixture, x, order="after", **SDXL_DEFAULTS)
    assert torch.isfinite(after.latent).all()
    with pytest.raises(ValueError, match="order"):
        invert("easyinv", mixture, x, order="sideways")

import pytest
import torch
from diffusers import DDIMScheduler

from diffinv.algebra import fixed_point_coefficients, predict_data, transfer
from diffinv.schedule import STABLE_DIFFUSION_SCHEDULER_CONFIG, Schedule, ddim_scheduler


def test_stable_diffusion_grid_matches_the_design_doc():
    s = Schedule.stable_diffusion(50)
    assert s.timesteps[1:] == tuple(range(1, 1000, 20))
    acp = DDIMScheduler.from_config(STABLE_DIFFUSION_SCHEDULER_CONFIG).alphas_cumprod.double()
    assert s.alpha_bar[0] == acp[0].item() < 1  # set_alpha_to_one=False: level 0 is alphas_cumprod[0]
    assert s.alpha_bar[50] == acp[981].item()
    assert s.alpha_bar[1] < s.alpha_bar[0] and all(a > b for a, b in zip(s.alpha_bar[1:], s.alpha_bar[2:]))


@pytest.mark.parametrize("config", [STABLE_DIFFUSION_SCHEDULER_CONFIG,
                                    {**STABLE_DIFFUSION_SCHEDULER_CONFIG, "timestep_spacing": "trailing",
                                     "set_alpha_to_one": True, "beta_schedule": "linear"}])
def test_direct_ddim_scheduler_equals_from_config(config):
    built, reference = ddim_scheduler(config), DDIMScheduler.from_config(config)
    extra = set(reference.config) - set(built.config)   # from_config records what it ignored, too
    assert extra <= {"_class_name", "skip_prk_steps"}
    assert dict(built.config) == {k: v for k, v in reference.config.items() if k not in extra}
    assert torch.equal(built.alphas_cumprod, reference.alphas_cumprod)
    for n in (1, 7, 50, 999):
        built.set_timesteps(n), reference.set_timesteps(n)
        assert torch.equal(built.timesteps, reference.timesteps)


def test_ddim_scheduler_leaves_unknown_keys_to_from_config(caplog):
    scheduler = ddim_scheduler({**STABLE_DIFFUSION_SCHEDULER_CONFIG, "clip_sampel": True})   # a typo
    assert "clip_sampel" in caplog.text and scheduler.config.clip_sample is False


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_transfer_round_trip_is_exact(dtype, tol):
    s = Schedule.stable_diffusion(50)
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(4, 64, generator=g, dtype=dtype), torch.randn(4, 64, generator=g, dtype=dtype)
    for i, j in [(0, 1), (1, 0), (10, 11), (49, 50), (3, 40)]:
        back = transfer(s, j, i, transfer(s, i, j, z, eps), eps)
        assert back.dtype == dtype
        assert ((back - z).norm() / z.norm()).item() < tol


def test_fixed_point_formula_recovers_the_ideal_step():
    # If z_{i-1} and z_i share (x*, eps*), the explicit fixed point gives z_i from z_{i-1} and x*.
    s = Schedule.stable_diffusion(50)
    x, eps = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    for i in [1, 25, 50]:
        z_prev, z = s.a(i - 1) * x + s.s(i - 1) * eps, s.a(i) * x + s.s(i) * eps
        ratio, kappa = fixed_point_coefficients(s, i)
        torch.testing.assert_close(ratio * z_prev + kappa * x, z)
        torch.testing.assert_close(predict_data(s, i, z, eps), x)


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="num_steps"):
        Schedule.stable_diffusion(0)
    with pytest.raises(ValueError, match="alpha_bar"):
        Schedule(timesteps=(0, 1), alpha_bar=(1.0, 0.0))

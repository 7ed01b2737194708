"""Methods on the exact model: NFE accounting, convergence, the IFE claims, determinism."""

import math

import numpy as np
import pytest
import torch

from diffinv import METHODS, invert, reconstruct
from diffinv.algebra import transfer
from diffinv.solvers import relative_residual
from diffinv.evaluation.stats import fixed_point_errors

SMALL = {"fpi": {"K": 2}, "aidi_e": {"K": 3}, "aidi_a": {"K": 4, "m": 2}, "ife": {"compute_e0": True},
         "renoise": {"K": 2, "reg_steps": 0}}  # the regulariser needs image latents: tested on the UNet
VP_METHODS = sorted(name for name, spec in METHODS.items() if "vp" in spec.paths)  # FireFlow, RF-Solver: flows only


def mse(a, b):
    return ((a - b) ** 2).mean().item()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", VP_METHODS)
def test_nfe_counted_equals_theory(mixture, mixture_samples, name, guidance):
    params = SMALL.get(name, {})
    x = mixture_samples[:3]
    result = invert(name, mixture, x, num_steps=10, guidance=guidance, **params)
    per_pass = 1 if guidance == 1.0 else 2
    spec = METHODS[name]
    assert result.nfe == per_pass * spec.nfe(spec.resolve(params), result.schedule)
    before = mixture.nfe
    reconstruct(name, mixture, result)
    assert mixture.nfe - before == per_pass * spec.reconstruct_nfe(result.schedule)


@pytest.mark.parametrize("name", ["fpi", "aidi_e", "aidi_a"])
def test_one_iteration_of_a_fixed_point_method_is_ddim_bit_for_bit(mixture, mixture_samples, name):
    """Why the demo's K sweeps start at 2: K = 1 is the ddim run."""
    x = mixture_samples[:3]
    assert torch.equal(invert(name, mixture, x, num_steps=10, K=1).latent, invert("ddim", mixture, x, num_steps=10).latent)


def test_unknown_method_and_parameter_are_named(mixture, mixture_samples):
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        invert("nope", mixture, mixture_samples)
    with pytest.raises(TypeError, match="'ddim' has no parameter \\['K'\\]"):
        invert("ddim", mixture, mixture_samples, K=3)


def test_fpi_with_many_iterations_solves_each_step(mixture, mixture_samples):
    x = mixture_samples[:8]
    result = invert("fpi", mixture, x, K=80, trajectory=True)  # slowest step contracts ~0.4x per iterate
    eps = lambda z, i: mixture.eps(z, result.schedule.timesteps[i], mixture.condition(None, 8))  # noqa: E731
    worst = max(relative_residual(s["z"], transfer(result.schedule, s["i"] - 1, s["i"], s["z_prev"],
                                                     eps(s["z"], s["i"]))).max().item()
                for s in result.trajectory)
    assert worst < 1e-13
    assert mse(reconstruct("fpi", mixture, result), x) < 1e-25


@pytest.fixture(scope="module")
def runs(mixture, mixture_samples):
    """Invert + reconstruct the 40 samples with N = 50 in float64, keeping trajectories."""
    out = {}
    for name in ["ddim", "ife_noerr", "ife"]:
        result = invert(name, mixture, mixture_samples, trajectory=True)
        out[name] = (result, mse(reconstruct(name, mixture, result), mixture_samples))
    return out


def test_ife_beats_ddim_tenfold_and_the_ablation_lies_between(runs):
    ddim, noerr, ife = (runs[n][1] for n in ["ddim", "ife_noerr", "ife"])
    assert ife * 10 <= ddim
    assert ife < noerr < ddim


@pytest.fixture(scope="module")
def error_stats(runs, mixture):
    return {name: fixed_point_errors(mixture, runs[name][0]) for name in runs}


def t_statistic(values):
    values = np.asarray(values)
    return values.mean() / (values.std(ddof=1) / math.sqrt(len(values)))


def test_fixed_point_solves_converge(error_stats):
    for rows in error_stats.values():
        assert all(r["converged"] for r in rows)


def test_ife_error_is_unbiased_and_the_ablation_is_not(error_stats):
    # One-sample t-test over (image, step) means, |t| < 2 ~ indistinguishable from 0 at about 5%.
    ife = [r["err_mean"] for r in error_stats["ife"]]
    noerr = [r["err_mean"] for r in error_stats["ife_noerr"]]
    assert abs(t_statistic(ife)) < 2
    assert abs(t_statistic(noerr)) > 3


def test_ife_error_variance_is_below_the_ablation(error_stats):
    var = {n: np.mean([r["err_var"] for r in rows]) for n, rows in error_stats.items()}
    assert var["ife"] < var["ife_noerr"]
    de = [r["derr_mean"] for r in error_stats["ife"]]
    assert all(np.isfinite(de)) and all(np.isnan(r["derr_mean"]) for r in error_stats["ddim"])


def test_float32_runs_keep_their_dtype(mixture, mixture_samples):
    x = mixture_samples[:2].float()
    result = invert("ife", mixture, x, num_steps=10)
    assert result.latent.dtype == torch.float32
    assert reconstruct("ife", mixture, result).dtype == torch.float32


@pytest.mark.parametrize("name", VP_METHODS)
def test_same_input_gives_bitwise_identical_results(mixture, mixture_samples, name):
    x = mixture_samples[:4]
    a = invert(name, mixture, x, num_steps=10, **SMALL.get(name, {}))
    b = invert(name, mixture, x.clone(), num_steps=10, **SMALL.get(name, {}))
    assert torch.equal(a.latent, b.latent)
    assert torch.equal(reconstruct(name, mixture, a), reconstruct(name, mixture, b))


def test_batch_is_the_same_as_one_by_one(mixture, mixture_samples):
    x = mixture_samples[:3]
    batch = invert("aidi_a", mixture, x, num_steps=10).latent
    single = torch.cat([invert("aidi_a", mixture, x[b:b + 1], num_steps=10).latent for b in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-12, atol=1e-12)


def test_s0_zero_falls_back_to_a_ddim_first_step(mixture, mixture_samples):
    from diffinv.schedule import STABLE_DIFFUSION_SCHEDULER_CONFIG, Schedule

    sched = Schedule.from_scheduler_config({**STABLE_DIFFUSION_SCHEDULER_CONFIG, "set_alpha_to_one": True}, 10)
    assert sched.s(0) == 0
    x = mixture_samples[:2]
    ife = invert("ife", mixture, x, schedule=sched, compute_e0=True, trajectory=True)
    ddim = invert("ddim", mixture, x, schedule=sched, trajectory=True)
    assert ife.nfe == 10  # no e_0 call when s_0 == 0
    torch.testing.assert_close(ife.trajectory[0]["z"], ddim.trajectory[0]["z"])
    assert torch.isfinite(ife.latent).all()

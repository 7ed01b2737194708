"""The 1-NFE rivals (issue 23): Uni-Inv, FireFlow and RF-Solver against steps written here from their papers'
equations (and the official code's arithmetic), the half levels the midpoint solvers evaluate at, IFE's
``error_from`` switch and its relation to Uni-Inv, the solvers' convergence order, and the paths each is
defined on."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from conftest import sample_mixture
from conftest import rel_error as rel
from diffinv import METHODS, invert, reconstruct
from diffinv.api import guided_eps
from diffinv.models import GaussianMixtureDenoiser
from diffinv.schedule import SD3_SCHEDULER_CONFIG, STABLE_DIFFUSION_SCHEDULER_CONFIG, Schedule

TIGHT = dict(rtol=1e-12, atol=1e-12)




@pytest.fixture(scope="module")
def samples(flow):
    return sample_mixture(flow, 6)


# -- half levels ------------------------------------------------------------------------------------------
def test_half_levels_are_the_means_of_their_grid_levels(flow, samples):
    sched = Schedule.rectified_flow(10)
    mid = sched.midpoint(3)
    assert mid == Fraction(5, 2)
    for level in (mid, 2.5):
        assert sched.s(level) == (sched.sigmas[2] + sched.sigmas[3]) / 2 and sched.a(level) == 1 - sched.s(level)
        assert sched.label(level) == (sched.timesteps[2] + sched.timesteps[3]) / 2
    assert abs(sched.label(mid) - 1000 * sched.s(mid)) < 1e-6 * 1000  # models.base's check on grid levels
    assert sched.s(sched.midpoint(1)) == sched.sigmas[1] / 2  # from sigma = 0, and into sigma = 1:
    assert sched.a(sched.midpoint(10)) == (1 - sched.sigmas[9]) / 2 > 0
    assert sched.label(3) == sched.timesteps[3] and sched.a(3) == sched.signal[3]  # grid levels as before
    for bad in (0, 11):
        with pytest.raises(ValueError, match="not halfway between two of the grid levels 0..10"):
            sched.midpoint(bad)
    with pytest.raises(ValueError, match="not halfway"):
        sched.s(2.25)
    with pytest.raises(ValueError, match="only the rectified-flow path has; this schedule is on the vp path"):
        Schedule.stable_diffusion(10).midpoint(3)
    # the protocol: eps at a half level is the model at the mean label with the half level's (a, s)
    eps = guided_eps(flow, sched, flow.condition(None, 6), 1.0)
    before = flow.nfe
    out = eps(samples, mid)
    assert flow.nfe - before == 1
    v = flow.forward(samples, sched.label(mid), None)
    torch.testing.assert_close(out.eps, samples + sched.a(mid) * v, **TIGHT)


# -- each rival against its equations ----------------------------------------------------------------------
def test_uni_inv_on_a_flow_is_the_official_euler_form(flow, samples):
    """``denoise_uniinv`` (UniEdit-Flow_FLUX/src/flux/sampling.py): v = v(z0, t_0), then per step
    ``zt = z + h v``, ``v = v(zt, t_i)``, ``z = z + h v``, the top step into sigma = 1 included."""
    result = invert("uni_inv", flow, samples, num_steps=10, trajectory=True)
    sched, z = result.schedule, samples
    v = flow.forward(z, sched.timesteps[0], None)
    for i in range(1, 11):
        h = sched.sigmas[i] - sched.sigmas[i - 1]
        estimate = z + h * v
        v = flow.forward(estimate, sched.timesteps[i], None)
        z = z + h * v
        torch.testing.assert_close(result.trajectory[i - 1]["estimate"], estimate, **TIGHT)
    torch.testing.assert_close(result.latent, z, **TIGHT)
    assert result.nfe == 11


def ddim_form(model, x, sched, *, start: bool):
    """Uni-Inv's DDIM form as ``UniInvDDIMScheduler.step`` writes it, on ``sched``'s levels: the predictor
    ``a_i x_prev + s_i eps_prev`` from the pair the last transfer used, then the DDIM transfer with the new noise.
    ``start``: the pair comes from one call at level 0 (the scheduler's first step); otherwise the first
    predictor is z0 itself (``zero_initial``)."""
    cond = model.condition(None, x.shape[0])

    def noise(z, i):
        return model.eps(z, sched.timesteps[i], cond, level=(sched.a(i), sched.s(i)))

    z, pair = x, None
    if start:
        e = noise(x, 0)
        pair = ((x - sched.s(0) * e) / sched.a(0), e)
    estimates = []
    for i in range(1, sched.num_steps + 1):
        estimate = x if pair is None else sched.a(i) * pair[0] + sched.s(i) * pair[1]
        e = noise(estimate, i)
        data = (z - sched.s(i - 1) * e) / sched.a(i - 1)
        z, pair = sched.a(i) * data + sched.s(i) * e, (data, e)
        estimates.append(estimate)
    return z, estimates


def test_uni_inv_on_vp_is_the_ddim_form(mixture, mixture_samples):
    x = mixture_samples[:6]
    result = invert("uni_inv", mixture, x, num_steps=10, trajectory=True)
    z, estimates = ddim_form(mixture, x, result.schedule, start=True)
    torch.testing.assert_close(result.latent, z, **TIGHT)
    for step, estimate in zip(result.trajectory, estimates):
        torch.testing.assert_close(step["estimate"], estimate, **TIGHT)


def official_fireflow(model, z, sched, *, down: bool):
    """``denoise_fireflow``: the first step's velocity at its start, then ``zm = z + (dt / 2) v``, ``v = v(zm,
    t + dt / 2)``, ``z = z + dt v``, over the grid upward (inversion) or downward (sampling)."""
    order = range(sched.num_steps, -1, -1) if down else range(sched.num_steps + 1)
    t = [sched.timesteps[k] for k in order]
    sigma = [sched.sigmas[k] for k in order]
    v = None
    for k in range(sched.num_steps):
        dt = sigma[k + 1] - sigma[k]
        if v is None:
            v = model.forward(z, t[k], None)
        v = model.forward(z + dt / 2 * v, t[k] + (t[k + 1] - t[k]) / 2, None)
        z = z + dt * v
    return z


def official_rf_solver(model, z, sched, *, down: bool):
    """RF-Solver-Edit's ``denoise``: ``v = v(z, t)``, ``vm = v(z + (dt / 2) v, t + dt / 2)``,
    ``z = z + dt v + dt^2 / 2 (vm - v) / (dt / 2)``."""
    order = range(sched.num_steps, -1, -1) if down else range(sched.num_steps + 1)
    t = [sched.timesteps[k] for k in order]
    sigma = [sched.sigmas[k] for k in order]
    for k in range(sched.num_steps):
        dt = sigma[k + 1] - sigma[k]
        v = model.forward(z, t[k], None)
        v_mid = model.forward(z + dt / 2 * v, t[k] + (t[k + 1] - t[k]) / 2, None)
        z = z + dt * v + 0.5 * dt ** 2 * (v_mid - v) / (dt / 2)
    return z


@pytest.mark.parametrize("name, official, nfe", [("fireflow", official_fireflow, (11, 11)),
                                                 ("rf_solver", official_rf_solver, (20, 20))])
def test_midpoint_solvers_are_the_official_schemes_both_ways(flow, samples, name, official, nfe):
    """Inversion and the method's own reconstruction, whose first velocity is the model's at sigma = 1."""
    result = invert(name, flow, samples, num_steps=10)
    torch.testing.assert_close(result.latent, official(flow, samples, result.schedule, down=False), **TIGHT)
    before = flow.nfe
    recon = reconstruct(name, flow, result)
    assert (result.nfe, flow.nfe - before) == nfe
    torch.testing.assert_close(recon, official(flow, result.latent, result.schedule, down=True), **TIGHT)
    assert rel(recon, samples) < 0.3 * rel(reconstruct("ddim", flow, invert("ddim", flow, samples, num_steps=10)),
                                           samples)


def test_rf_solver_is_the_explicit_midpoint_rule(flow, samples):
    """The Taylor form ``h v + h^2 / 2 (vm - v) / (h / 2)`` is ``h vm``: RF-Solver is the midpoint rule, and
    FireFlow the midpoint rule with the start velocity taken from the previous midpoint."""
    sched = Schedule.rectified_flow(6)
    z, t, sigma = samples, sched.timesteps, sched.sigmas
    for i in range(1, 7):
        h = sigma[i] - sigma[i - 1]
        z = z + h * flow.forward(z + h / 2 * flow.forward(z, t[i - 1], None), (t[i - 1] + t[i]) / 2, None)
    torch.testing.assert_close(invert("rf_solver", flow, samples, schedule=sched).latent, z, rtol=1e-11, atol=1e-11)


# -- the paths ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fireflow", "rf_solver"])
def test_the_midpoint_solvers_refuse_a_vp_schedule_before_any_call(mixture, mixture_samples, name):
    assert METHODS[name].paths == ("flow",) and METHODS["uni_inv"].paths == ("vp", "flow")
    before = mixture.nfe
    with pytest.raises(ValueError, match=f"{name} is defined on the rectified-flow path only.*on the vp path"):
        invert(name, mixture, mixture_samples[:2], num_steps=5)
    sched = Schedule.stable_diffusion(5)
    with pytest.raises(ValueError, match="rectified-flow path only"):
        METHODS[name].reconstruct(guided_eps(mixture, sched, mixture.condition(None, 2), 1.0), mixture_samples[:2],
                                  sched)
    assert mixture.nfe == before


def test_a_config_runs_a_method_only_on_its_path():
    from diffinv.workflow.config import ConfigError, prepare
    from snakemake_runner import ROOT, load_config

    config = load_config("demo.yaml")
    config["runs"]["ff"] = {"method": "fireflow"}
    with pytest.raises(ConfigError, match="config key runs.ff.method: fireflow is defined on the flow path only; "
                                          "this gaussian_mixture model is on the vp path"):
        prepare(config, ROOT / "config" / "schema.yaml")
    config = load_config("demo-flow.yaml")
    config["runs"]["ff"] = {"method": "fireflow"}
    assert "ff" in prepare(config, ROOT / "config" / "schema.yaml")[0]


def test_the_nfe_estimate_prices_the_rivals():
    """runs.csv, the budget and job runtimes read config.nfe_estimate: inversion + reconstruction per image."""
    from diffinv.api import Run
    from diffinv.workflow.config import nfe_estimate
    from snakemake_runner import load_config

    flow_model = load_config("demo-flow.yaml")["model"]
    cases = {("uni_inv", "gaussian_mixture"): 21, ("uni_inv", "sd3"): 21, ("fireflow", "sd3"): 22,
             ("rf_solver", "sd3"): 40, ("fireflow", "flux"): 22, ("ife", "gaussian_mixture"): 20}
    for (method, kind), nfe in cases.items():
        assert nfe_estimate(Run(method, num_steps=10), kind) == nfe
    assert nfe_estimate(Run("fireflow", num_steps=10, name="f"), flow_model) == 22
    assert nfe_estimate(Run("rf_solver", num_steps=10, guidance=3.0, name="r"), "sd3") == 80   # guided: 2 passes a call


# -- IFE's error reading and Uni-Inv ------------------------------------------------------------------------
def test_error_from_estimate_is_the_default_and_a_bad_value_is_named(mixture, mixture_samples, flow, samples):
    x = mixture_samples[:4]
    for model, z0 in ((mixture, x), (flow, samples)):
        default = invert("ife", model, z0, num_steps=10)
        assert torch.equal(invert("ife", model, z0, num_steps=10, error_from="estimate").latent, default.latent)
        other = invert("ife", model, z0, num_steps=10, error_from="transfer")
        assert rel(other.latent, default.latent) > 1e-4  # the reading matters
    before = mixture.nfe
    with pytest.raises(ValueError, match="error_from: must be one of 'estimate', 'transfer', got 'input'"):
        invert("ife", mixture, x, num_steps=10, error_from="input")
    assert mixture.nfe == before
    with pytest.raises(TypeError, match="'ife_noerr' has no parameter \\['error_from'\\]"):
        invert("ife_noerr", mixture, x, num_steps=10, error_from="transfer")


@pytest.mark.parametrize("num_steps", [10, 50])
def test_uni_inv_is_ife_with_the_transfer_reading_and_e0_on_vp(mixture, mixture_samples, num_steps):
    """The relation (``docs/methods.md``, "IFE and Uni-Inv: the relation"): with ``s_0 > 0`` IFE's estimate
    is ``Phi(i-1 -> i; z_{i-1}, eps(i-1; z_{i-1}, z0 + e_{i-1}))``; the transfer reading makes that noise the
    previous step's, which is Uni-Inv's predictor. Equal step by step to round-off, with the same N + 1 calls
    and reconstruction."""
    x = mixture_samples[:8]
    uni = invert("uni_inv", mixture, x, num_steps=num_steps, trajectory=True)
    ife = invert("ife", mixture, x, num_steps=num_steps, error_from="transfer", compute_e0=True, trajectory=True)
    assert uni.schedule.s(0) > 0 and uni.nfe == ife.nfe == num_steps + 1
    for a, b in zip(uni.trajectory, ife.trajectory):
        torch.testing.assert_close(a["estimate"], b["estimate"], **TIGHT)
        torch.testing.assert_close(a["z"], b["z"], **TIGHT)
    torch.testing.assert_close(reconstruct("uni_inv", mixture, uni), reconstruct("ife", mixture, ife), **TIGHT)
    assert rel(invert("ife", mixture, x, num_steps=num_steps, compute_e0=True).latent, uni.latent) > 1e-5


def test_where_ife_and_uni_inv_part(mixture, mixture_samples, flow, samples):
    """Where the relation stops: a level 0 with ``s_0 = 0`` and the flow path, where IFE's first step is the
    DDIM step (predictor z0, no start call: the official ``zero_initial``) and from there on the same rule as
    Uni-Inv's DDIM form; on a flow, official Uni-Inv holds the velocity, not the noise, fixed."""
    x = mixture_samples[:6]
    alpha_one = Schedule.from_scheduler_config({**STABLE_DIFFUSION_SCHEDULER_CONFIG, "set_alpha_to_one": True}, 10)
    for model, z0, sched in ((mixture, x, alpha_one), (flow, samples, Schedule.rectified_flow(10))):
        assert sched.s(0) == 0
        ife = invert("ife", model, z0, schedule=sched, error_from="transfer", compute_e0=True, trajectory=True)
        uni = invert("uni_inv", model, z0, schedule=sched, trajectory=True)
        assert (ife.nfe, uni.nfe) == (10, 11)
        assert torch.equal(ife.trajectory[0]["estimate"], z0) and rel(uni.trajectory[0]["estimate"], z0) > 1e-3
        torch.testing.assert_close(ife.latent, ddim_form(model, z0, sched, start=False)[0], **TIGHT)
    torch.testing.assert_close(invert("uni_inv", mixture, x, schedule=alpha_one).latent,
                               ddim_form(mixture, x, alpha_one, start=True)[0], **TIGHT)
    flow_ddim_form = ddim_form(flow, samples, Schedule.rectified_flow(10), start=True)[0]
    assert rel(flow_ddim_form, invert("uni_inv", flow, samples, num_steps=10).latent) > 1e-3


def official_uniinv_ddim(model, x, taus, first_alpha_bar):
    """``UniInvDDIMScheduler`` over its timesteps ``[0, tau_1, ..., tau_N]`` as the pipeline calls it: z0 taken
    at alpha-bar 1; the call at label 0 gives the first prediction at ``first_alpha_bar`` (the code's:
    ``alphas_cumprod[0]``); each later step transfers from the last latent and predicts the next level."""
    acp = model.alphas_cumprod
    eps = model.forward(x, 0, None)
    latents = math.sqrt(first_alpha_bar) * x + math.sqrt(1 - first_alpha_bar) * eps
    sample, alpha_bar = x, 1.0
    for k, tau in enumerate(taus):
        eps = model.forward(latents, tau, None)
        data = (sample - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        alpha_bar = float(acp[tau])
        sample = math.sqrt(alpha_bar) * data + math.sqrt(1 - alpha_bar) * eps
        if k + 1 < len(taus):
            following = float(acp[taus[k + 1]])
            latents = math.sqrt(following) * data + math.sqrt(1 - following) * eps
    return sample


def test_the_official_ddim_scheduler_differs_only_in_its_first_prediction(mixture, mixture_samples):
    """The official DDIM form starts from alpha-bar 1 (Stable Diffusion's sampler ends at alphas_cumprod[0]), so
    it is uni_inv on the grid whose level 0 has alpha-bar 1, but for its first prediction, placed at the
    alpha-bar of label 0 instead of level 1's."""
    x = mixture_samples[:6]
    sched = Schedule.from_scheduler_config({**STABLE_DIFFUSION_SCHEDULER_CONFIG, "set_alpha_to_one": True}, 10)
    ours = invert("uni_inv", mixture, x, schedule=sched).latent
    taus = list(sched.timesteps[1:])
    as_coded = official_uniinv_ddim(mixture, x, taus, float(mixture.alphas_cumprod[0]))
    at_level_one = official_uniinv_ddim(mixture, x, taus, sched.alpha_bar[1])
    torch.testing.assert_close(ours, at_level_one, **TIGHT)
    assert rel(as_coded, ours) > 1e-6
    on_sd_grid = invert("uni_inv", mixture, x, num_steps=10).latent   # level 0 at alphas_cumprod[0]
    assert rel(on_sd_grid, ours) > 1e-4


# -- convergence order ---------------------------------------------------------------------------------------
def one_step_errors(model, z, sigma0, name, ks):
    """The ratios of successive relative errors of one inversion step sigma0 -> sigma0 + 2^-k, for each k,
    against RK4 (8 substeps) on the model's exact velocity of the probability-flow ODE."""
    def v(z, sigma):
        return model.forward(z, 1000 * sigma, None)

    errors = []
    for k in ks:
        h = 2.0 ** -k
        sched = Schedule(timesteps=(1000 * sigma0, 1000 * (sigma0 + h)), sigmas=(sigma0, sigma0 + h))
        ref, dt, sigma = z, h / 8, sigma0
        for _ in range(8):
            k1 = v(ref, sigma)
            k2 = v(ref + dt / 2 * k1, sigma + dt / 2)
            k3 = v(ref + dt / 2 * k2, sigma + dt / 2)
            k4 = v(ref + dt * k3, sigma + dt)
            ref = ref + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            sigma += dt
        errors.append(rel(invert(name, model, z, schedule=sched).latent, ref))
    return [a / b for a, b in zip(errors, errors[1:])]


def test_one_step_error_falls_8x_for_rf_solver_and_4x_for_euler_per_halving():
    """Local errors O(h^3) and O(h^2) where the trajectory bends as the posterior moves between two components
    (measured 7.1, 7.5, 7.8 and 3.8, 3.9, 3.9). Inside one Gaussian component the midpoint rule is exact to
    O(h^4) (each coordinate runs as sqrt of a quadratic in sigma, which cancels its h^3 term): 16x."""
    pair = GaussianMixtureDenoiser([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.3]], [[0.01, 0.02], [0.02, 0.01]],
                                   scheduler_config=SD3_SCHEDULER_CONFIG)
    between = torch.tensor([[0.1, 0.2], [-0.05, 0.1]], dtype=torch.float64)
    rf = one_step_errors(pair, between, 0.5, "rf_solver", range(5, 9))
    euler = one_step_errors(pair, between, 0.5, "euler", range(5, 9))
    assert all(6.5 < r < 8.5 for r in rf) and rf[-1] > rf[0], rf
    assert all(3.5 < r < 4.2 for r in euler), euler
    single = GaussianMixtureDenoiser([1.0], [[0.5, -0.2]], [[0.3, 0.05]], scheduler_config=SD3_SCHEDULER_CONFIG)
    inside = one_step_errors(single, between, 0.3, "rf_solver", range(5, 9))
    assert all(r > 13 for r in inside), inside  # measured 14.3, 15.1, 15.6

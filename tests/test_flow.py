"""The methods on the rectified-flow path (issue 15): schedules, the exact mixture as a velocity model,
exactness, NFE, DDIM and Euler inversion against the flow's Euler steps, the level sigma = 1, and VP
results unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_mixture, rel_error, sample_mixture
from diffinv import METHODS, invert, reconstruct
from diffinv.algebra import Prediction, SingularLevel, predict_data, transfer
from diffinv.schedule import SD3_SCHEDULER_CONFIG, STABLE_DIFFUSION_SCHEDULER_CONFIG, Schedule, calculate_shift
from diffinv.evaluation.stats import fixed_point_errors

FLUX_SCHEDULER_CONFIG = {  # black-forest-labs/FLUX.1-dev, scheduler/scheduler_config.json
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
    "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
    "use_dynamic_shifting": True}
SMALL = {"fpi": {"K": 2}, "aidi_e": {"K": 3}, "aidi_a": {"K": 4, "m": 2}, "ife": {"compute_e0": True},
         "renoise": {"K": 2, "reg_steps": 0}}




@pytest.fixture(scope="module")
def samples(flow):
    return sample_mixture(flow, 8)


# -- schedules --------------------------------------------------------------------------------------
def test_sd3_grid_is_the_schedulers_own_reversed():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = Schedule.from_scheduler_config(SD3_SCHEDULER_CONFIG, 28, image_seq_len=4096)  # ignored: no dynamic shift
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)
    scheduler.set_timesteps(28)
    assert sched.path == "flow" and sched.num_steps == 28
    assert sched.timesteps == (0.0, *scheduler.timesteps.flip(0).tolist())
    assert sched.sigmas == tuple(scheduler.sigmas.flip(0).tolist())
    assert sched.sigmas[0] == 0.0 and sched.sigmas[-1] == 1.0
    assert sched.a(0) == 1 and sched.s(0) == 0 and sched.a(28) == 0 and sched.s(28) == 1
    assert all(sched.a(i) + sched.s(i) == 1 for i in range(29))


def test_flux_grid_shifts_with_the_token_count_as_its_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_shift

    for tokens in (256, 1024, 4096):
        assert calculate_shift(tokens, 256, 4096, 0.5, 1.15) == diffusers_shift(tokens, 256, 4096, 0.5, 1.15)
    sched = Schedule.from_scheduler_config(FLUX_SCHEDULER_CONFIG, 20, image_seq_len=1024, sigmas="flux")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG)
    scheduler.set_timesteps(20, sigmas=np.linspace(1.0, 1 / 20, 20), mu=diffusers_shift(1024))  # FluxPipeline's
    assert sched.timesteps[1:] == tuple(scheduler.timesteps.flip(0).tolist())
    assert sched.sigmas == tuple(scheduler.sigmas.flip(0).tolist())
    larger = Schedule.from_scheduler_config(FLUX_SCHEDULER_CONFIG, 20, image_seq_len=4096, sigmas="flux")
    assert all(b > a for a, b in zip(sched.sigmas[1:-1], larger.sigmas[1:-1]))  # more tokens, more noise
    with pytest.raises(ValueError, match="image_seq_len"):
        Schedule.from_scheduler_config(FLUX_SCHEDULER_CONFIG, 20)
    with pytest.raises(ValueError, match="rectified-flow option"):
        Schedule.from_scheduler_config(STABLE_DIFFUSION_SCHEDULER_CONFIG, 10, sigmas="flux")
    with pytest.raises(ValueError, match="rise strictly"):
        Schedule(timesteps=(0.0, 500.0, 400.0), sigmas=(0.0, 0.5, 0.4))


def test_models_refuse_the_other_familys_schedule(mixture, flow, samples):
    with pytest.raises(ValueError, match="a vp schedule for a model predicting flow"):
        invert("ddim", flow, samples, schedule=Schedule.stable_diffusion(10))
    with pytest.raises(ValueError, match="a flow schedule for a model predicting epsilon"):
        invert("ddim", mixture, samples, schedule=Schedule.rectified_flow(10))
    bad = Schedule(timesteps=(0.0, 400.0, 1000.0), sigmas=(0.0, 0.5, 1.0))
    with pytest.raises(ValueError, match="timestep 400.0 has sigma 0.5"):
        flow.check_schedule(bad)


# -- the exact mixture as a velocity model ------------------------------------------------------------
def test_the_same_mixture_predicts_the_same_noise_on_both_paths(mixture, flow, samples):
    for t in (8.93, 464.9, 960.1):  # the model's sigma is its label / 1000
        s = t / 1000
        a = 1 - s
        z = a * samples + s * torch.randn_like(samples, dtype=torch.float64)
        eps = flow.eps(z, t, flow.condition(None, 8), level=(a, s))
        torch.testing.assert_close(eps, mixture.posterior_noise(z, a, s), rtol=1e-10, atol=1e-12)
    top = torch.randn_like(samples)
    prediction = flow.predict(top, 1000.0, flow.condition(None, 8), level=(0.0, 1.0))
    assert torch.equal(prediction.eps, top) and prediction.at is top  # at sigma = 1 the noise is the input
    prior_mean = (flow.weights / flow.weights.sum()) @ flow.means
    torch.testing.assert_close(prediction.x, prior_mean.expand_as(top))  # z says nothing about x
    assert flow.predict(samples, 8.93, flow.condition(None, 8), level=(0.99107, 0.00893)).x is None  # a > 0


def test_ddim_reconstruction_is_the_flow_euler_sampler(flow, samples):
    """From z_N, ``ddim_reconstruct`` is the SD3 pipeline's sampler, the Euler step of diffusers'
    FlowMatchEulerDiscreteScheduler.step, ``z + (sigma_next - sigma) v(z, t)`` over its timesteps and sigmas
    (which step computes in float32; here in float64), the first step from sigma = 1 included."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    result = invert("ddim", flow, samples, num_steps=10)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)
    scheduler.set_timesteps(10)
    z = result.latent
    for k, t in enumerate(scheduler.timesteps.tolist()):
        z = z + (scheduler.sigmas[k + 1].item() - scheduler.sigmas[k].item()) * flow.forward(z, t, None)
    torch.testing.assert_close(reconstruct("ddim", flow, result), z, rtol=1e-12, atol=1e-12)
    step = scheduler.step(flow.forward(result.latent, scheduler.timesteps[0], None), scheduler.timesteps[0],
                          result.latent).prev_sample  # diffusers' own first step, to float32 round-off
    first = result.latent + (scheduler.sigmas[1].item() - 1.0) * flow.forward(result.latent, 1000.0, None)
    torch.testing.assert_close(step, first, rtol=1e-6, atol=1e-6)


def test_ddim_inversion_is_the_euler_step_that_holds_the_noise_fixed(flow, samples):
    """``ddim`` evaluates the network on z_{i-1} at the target label sigma_i and holds that noise
    prediction fixed: ``z_i = z_{i-1} + (sigma_i - sigma_{i-1}) (1 - sigma_i) / (1 - sigma_{i-1}) v(z_{i-1},
    sigma_i)``, the straight line from z_{i-1} towards the predicted noise. It is not the Euler step with
    the velocity at the source level, ``z_{i-1} + (sigma_i - sigma_{i-1}) v(z_{i-1}, sigma_{i-1})``: that
    evaluates the network at another label. Its top step is the identity (``1 - sigma_N = 0``)."""
    result = invert("ddim", flow, samples, num_steps=10, trajectory=True)
    sched, z = result.schedule, samples
    for i in range(1, 11):
        dsigma = sched.sigmas[i] - sched.sigmas[i - 1]
        z = z + dsigma * (1 - sched.sigmas[i]) / (1 - sched.sigmas[i - 1]) * flow.forward(z, sched.timesteps[i], None)
    torch.testing.assert_close(result.latent, z, rtol=1e-12, atol=1e-12)
    assert torch.equal(result.trajectory[-1]["z"], result.trajectory[-1]["z_prev"])


def test_euler_inversion_is_the_plain_euler_step_from_the_velocity(flow, samples):
    """``euler`` is the plain Euler inversion, ``z_i = z_{i-1} + (sigma_i - sigma_{i-1}) v(z_{i-1},
    sigma_{i-1})``, written here from the velocity alone, the first step from sigma = 0 and the last into
    sigma = 1 included; on the VP path it is the same transfer with the noise from the source level."""
    result = invert("euler", flow, samples, num_steps=10)
    sched, z = result.schedule, samples
    for i in range(1, 11):
        z = z + (sched.sigmas[i] - sched.sigmas[i - 1]) * flow.forward(z, sched.timesteps[i - 1], None)
    torch.testing.assert_close(result.latent, z, rtol=1e-12, atol=1e-12)
    ddim = invert("ddim", flow, samples, num_steps=10).latent
    assert rel_error(ddim, z) > 1e-3      # DDIM's noise from the target level is another step


# -- the methods on the flow path -------------------------------------------------------------------
@pytest.mark.parametrize("grid", ["sd3-10", "sd3-50", "flux-10"])
@pytest.mark.parametrize("name,params", [("bdia", {}), ("bdia", {"gamma": 0.94}), ("belm", {}), ("edict", {}),
                                         ("edict", {"leapfrog": False}), ("erddci", {})])
def test_exact_methods_reconstruct_on_flow_grids(flow, samples, name, params, grid):
    family, steps = grid.split("-")
    sched = (Schedule.rectified_flow(int(steps)) if family == "sd3" else
             Schedule.from_scheduler_config(FLUX_SCHEDULER_CONFIG, int(steps), image_seq_len=1024, sigmas="flux"))
    result = invert(name, flow, samples, schedule=sched, **params)
    assert rel_error(reconstruct(name, flow, result), samples) <= 1e-10


# Counted by hand for the SD3 grid with N = 10 (inversion, reconstruction). EDICT, ERDDCI and BELM stop one
# level below sigma = 1; ReNoise's only level below t = 250 is level 1 (t = 8.9): 3 + 9 * 3 calls. Uni-Inv and
# FireFlow make one call at the start; FireFlow and RF-Solver reconstruct with their own midpoint steps.
FLOW_NFE = {"ddim": (10, 10), "euler": (10, 10), "fpi": (20, 10), "aidi_e": (30, 10), "aidi_a": (40, 10), "ife": (10, 10),
            "ife_noerr": (10, 10), "renoise": (30, 10), "easyinv": (10, 10), "bdia": (10, 9), "belm": (9, 8),
            "edict": (18, 18), "erddci": (18, 9), "uni_inv": (11, 10), "fireflow": (11, 11), "rf_solver": (20, 20)}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_nfe_on_the_flow_grid_equals_theory(flow, samples, name):
    spec, params = METHODS[name], SMALL.get(name, {})
    result = invert(name, flow, samples[:2], num_steps=10, **params)
    before = flow.nfe
    recon = reconstruct(name, flow, result)
    assert (result.nfe, flow.nfe - before) == FLOW_NFE[name]
    assert FLOW_NFE[name] == (spec.nfe(spec.resolve(params), result.schedule), spec.reconstruct_nfe(result.schedule))
    assert torch.isfinite(recon).all()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_at_sigma_one_survives_an_eps_that_copies_what_it_returns(flow, samples, name):
    """What the methods need at sigma = 1 travels in the Prediction's fields, not on a tensor's attributes: a
    wrapper that copies every tensor eps returns (a dtype cast, a clone) changes no result, bit for bit."""
    from diffinv.api import guided_eps

    sched = Schedule.rectified_flow(6)
    assert sched.a(sched.num_steps) == 0
    spec, spec_params = METHODS[name], SMALL.get(name, {})
    eps = guided_eps(flow, sched, flow.condition(None, 2), 1.0)

    def copying(z, i):
        p = eps(z, i)
        return Prediction(p.eps.clone(), None if p.x is None else p.x.clone(), p.at.clone())

    results = []
    for fn in (eps, copying):
        state = spec.invert(fn, samples[:2], sched, **spec.resolve(spec_params))
        results.append((state, spec.reconstruct(fn, state, sched, **spec.reconstruct_params(spec.resolve(spec_params)))))
    (state, recon), (state_copied, recon_copied) = results
    assert torch.equal(recon, recon_copied) and torch.isfinite(recon).all()


def test_ife_beats_ddim_and_its_last_step_uses_the_data_prediction(flow, samples):
    ddim = invert("ddim", flow, samples, num_steps=50)
    ife = invert("ife", flow, samples, num_steps=50, trajectory=True)
    assert rel_error(reconstruct("ife", flow, ife), samples) < 0.3 * rel_error(reconstruct("ddim", flow, ddim), samples)
    last = ife.trajectory[-1]
    assert torch.equal(last["z"], last["estimate"])  # z_N = eps_N(zhat_N) = zhat_N at sigma = 1
    assert torch.isfinite(last["error"]).all()


def test_a_map_from_sigma_one_needs_the_data_prediction_at_that_latent(flow, samples):
    sched = Schedule.rectified_flow(4)
    cond = flow.condition(None, 8)
    z, other = torch.randn_like(samples), torch.randn_like(samples)
    eps = flow.predict(z, sched.timesteps[4], cond, level=(sched.a(4), sched.s(4)))
    euler = z + (sched.sigmas[3] - 1.0) * flow.forward(z, sched.timesteps[4], None)
    torch.testing.assert_close(transfer(sched, 4, 3, z, eps), euler, rtol=1e-13, atol=1e-13)
    with pytest.raises(SingularLevel, match="made at another latent"):
        transfer(sched, 4, 3, other, eps)       # EDICT's and ERDDCI's coupling: undefined at sigma = 1
    with pytest.raises(SingularLevel, match="without one"):
        predict_data(sched, 4, z, eps.eps + 0.0)    # a combined estimate carries none
    torch.testing.assert_close(transfer(sched, 3, 4, other, eps), eps.eps)  # into sigma = 1: the noise itself
    # a copy of the latent is the same latent: a wrapper that copies tensors loses nothing
    copied = Prediction(eps.eps.clone(), eps.x.clone(), eps.at.clone())
    torch.testing.assert_close(transfer(sched, 4, 3, z, copied), euler, rtol=1e-13, atol=1e-13)


def test_error_statistics_on_the_flow_top_step(flow, samples):
    """At sigma = 1 F_N is the identity; Figure 2 solves the fixed point in its data form there."""
    for name in ("ife", "ddim"):
        result = invert(name, flow, samples[:2], num_steps=10, trajectory=True)
        rows = fixed_point_errors(flow, result, tol=1e-10, max_iter=100)
        assert all(r["converged"] for r in rows) and len(rows) == 20
        top = [r for r in rows if r["i"] == 10]
        assert all(np.isfinite(r["err_var"]) and r["err_var"] > 0 for r in top)


# -- VP results unchanged -------------------------------------------------------------------------------
# Made by tests/vp_fingerprints.py on the tree before the flow refactor (commit 37d1951), as its docstring
# says; the refactor reproduced them to the last digit printed.
VP_BEFORE = {
    'ddim': [-5.869353769983315, 193.35203878051115, 0.5607852770171124, 134.54369573562832],
    'fpi': [-16.571764703173965, 465.40722869639325, 0.3689533533765186, 133.45123909865157],
    'aidi_e': [-13.13604024668558, 373.7681287375889, 0.5282079065751919, 132.8574892099956],
    'aidi_a': [-25.663707636538973, 714.7176427403858, -0.2479811851133764, 135.13473742769827],
    'ife': [-20.24375711700206, 370.83036126270883, 0.376790632507074, 127.24631716223561],
    'ife_noerr': [-11.201756243094778, 209.53646163682836, 0.9472055028392958, 121.47883237894753],
    'renoise': [-6.455724802092195, 157.41792762608594, 0.8637310966482428, 125.70600834457649],
    'easyinv': [-4.757381274109964, 157.41783107240414, 0.5618832947025858, 133.7586486555735],
    'bdia': [-17.112739319335255, 241.86392790198164, -16.35292199186394, 260.52751742691015, -0.3047689168043064,
             135.03347837462803],
    'belm': [-43.540835884750614, 519.3634028575964, -41.33565604586996, 541.7175076004885, -0.3047689168042744,
             135.0334783746278],
    'edict': [-8.513316108257303, 253.62312188790315, -8.397024233644188, 252.84250901694304, -0.3047689168043384,
              135.03347837462846],
    'erddci': [-6.539388646508851, 202.91003218211284, -0.30476891680431706, 135.03347837462806, -0.41452733019670873,
               135.25882708056304, -1.6131966438081768, 153.5683437525766, -2.465442368028177, 167.24088762973793,
               -3.1894825712573223, 179.0010088251958, -3.792442131440315, 187.69036787349586, -4.274651856867298,
               192.64730006274465, -4.685510865569184, 194.3533410628403, -5.104623404642338, 194.35155139806858,
               -5.523095033756734, 193.86676332159834, -5.869353769983315, 193.35203878051115, -0.30476891680431883,
               135.03347837462812],
    'ife_e0': [-19.622886744681583, 355.6392813312333, 0.4131712657598019, 127.10198449234443],
}


def test_vp_results_of_every_method_are_unchanged():
    """Every method's inverted state and reconstruction on a small VP problem (Stable Diffusion's grid,
    N = 10, ReNoise with its regulariser) against the pre-refactor values, to round-off (1e-9; the
    refactor left the VP arithmetic as it was, and reproduced them exactly)."""
    from vp_fingerprints import fingerprints

    now = fingerprints(methods=[key for key in VP_BEFORE if key != "ife_e0"])  # methods added later have none
    assert set(now) == set(VP_BEFORE)
    for key, values in now.items():
        np.testing.assert_allclose(values, VP_BEFORE[key], rtol=1e-9, atol=1e-9, err_msg=key)


# -- configuration ----------------------------------------------------------------------------------
def test_the_flow_preset_validates_and_puts_the_mixture_on_the_flow_path():
    import yaml

    from diffinv.workflow.config import mixture_path, prepare
    from snakemake_runner import ROOT

    config = yaml.safe_load((ROOT / "config" / "demo-flow.yaml").read_text())
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    runs, _ = prepare(config, ROOT / "config" / "schema.yaml")
    assert config["model"]["fit"] == demo["model"]["fit"]  # the demo's mixture
    assert {"ddim-N10", "ife-N20", "fpi-N10", "fpi-N20"} <= set(runs)
    assert mixture_path(demo["model"]) == {}
    assert mixture_path(config["model"]) == {"scheduler_config": SD3_SCHEDULER_CONFIG, "schedule_options": {}}
    flux = {**config["model"], "flow": {"use_dynamic_shifting": True, "image_seq_len": 16, "sigmas": "flux"}}
    assert mixture_path(flux) == {"scheduler_config": {**SD3_SCHEDULER_CONFIG, "use_dynamic_shifting": True},
                                  "schedule_options": {"image_seq_len": 16, "sigmas": "flux"}}


def test_nfe_estimate_of_the_flow_mixture_walks_its_own_grid(flow, samples):
    """EDICT stops a level below sigma = 1 on the flow mixture's grid; the estimate (runs.csv, the budget, job
    runtimes) must count that, not the VP grid's N steps."""
    import yaml

    from diffinv.api import Run
    from diffinv.workflow.config import nfe_estimate
    from snakemake_runner import ROOT

    model = yaml.safe_load((ROOT / "config" / "demo-flow.yaml").read_text())["model"]
    result = invert("edict", flow, samples[:1], num_steps=10)
    before = flow.nfe
    reconstruct("edict", flow, result)
    run = Run("edict", num_steps=10)
    assert nfe_estimate(run, model) == result.nfe + flow.nfe - before == 36
    assert nfe_estimate(run, {**model, "path": "vp"}) == nfe_estimate(run, "gaussian_mixture") == 40


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(path="ode"), "config key model.path: 'ode' is not one of"),
    (lambda m: m.update(path="vp"), "config key model.flow: the flow path's settings"),
    (lambda m: m["flow"].update(use_dynamic_shifting=True), "config key model.flow.image_seq_len: use_dynamic"),
    (lambda m: m["flow"].update(image_seq_len=64), "config key model.flow.image_seq_len: used only with"),
    (lambda m: m["flow"].update(sigmas="karras"), "config key model.flow.sigmas: 'karras' is not one of"),
])
def test_bad_flow_settings_name_their_key(edit, message):
    import yaml

    from diffinv.workflow.config import ConfigError, prepare
    from snakemake_runner import ROOT

    config = yaml.safe_load((ROOT / "config" / "demo-flow.yaml").read_text())
    edit(config["model"])
    with pytest.raises(ConfigError, match=message):
        prepare(config, ROOT / "config" / "schema.yaml")


def test_a_saved_flow_mixture_loads_on_its_path(flow, tmp_path):
    from diffinv.models import GaussianMixtureDenoiser

    flux = random_mixture(scheduler_config={**FLUX_SCHEDULER_CONFIG}, schedule_options={"image_seq_len": 64,
                                                                                          "sigmas": "flux"})
    for model in (flow, flux):
        model.save(tmp_path / "gmm.npz")
        loaded = GaussianMixtureDenoiser.load(tmp_path / "gmm.npz")
        assert loaded.prediction_type == "flow" and loaded.schedule(10) == model.schedule(10)
    assert GaussianMixtureDenoiser.load(tmp_path / "gmm.npz", scheduler_config=None,
                                        schedule_options=None).prediction_type == "epsilon"

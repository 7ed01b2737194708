"""The training of the pixel-space UNet (diffinv.workflow.training) on a few steps of a tiny network, and how its noise
prediction is scored."""

import json

import numpy as np
import pytest
import torch

from conftest import random_mixture, sample_mixture
from diffinv.workflow.config import ModelSpec
from diffinv.workflow.data import load_photo
from diffinv.workflow.provenance import weights_digest
from diffinv.workflow.runs import load_model
from diffinv.schedule import Schedule
from diffinv.workflow.model_quality import error_table, noise_prediction_errors
from diffinv.workflow.training import sample_views, save_trained, train_unet, training_views

TINY = dict(size=16, crop_sides=[64], channels=[8, 16], layers_per_block=1, attention=False, norm_groups=4,
            steps=3, batch=4, lr=2e-3, warmup=1, seed=0, threads=1)
PHOTOS = ["astronaut", "coffee"]


def weights(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_two_runs_give_bit_identical_weights_and_leave_the_global_generator_alone():
    state = torch.random.get_rng_state()
    first, losses = train_unet(PHOTOS, **TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
    second, again = train_unet(PHOTOS, **TINY)
    assert losses == again and len(losses) == TINY["steps"]
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = weights(train_unet(PHOTOS, **{**TINY, "seed": 1})[0])
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_the_loss_falls_over_a_short_run():
    _, losses = train_unet(PHOTOS, **{**TINY, "steps": 60, "batch": 8, "warmup": 5})
    loss = np.array([row["loss"] for row in losses])
    assert loss[-15:].mean() < 0.6 * loss[:5].mean()
    assert [row["step"] for row in losses] == list(range(60)) and losses[-1]["lr"] < 1e-5  # cosine to 0


def test_the_saved_folder_loads_as_a_pixel_model_on_sd_s_grid_and_is_byte_stable(tmp_path):
    unet, _ = train_unet(PHOTOS, **TINY)
    settings = {"photos": PHOTOS, **TINY}
    save_trained(tmp_path / "a", unet, settings)
    save_trained(tmp_path / "b", unet, settings)
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "training.json").read_text())["settings"] == settings
    model = load_model(ModelSpec("pixel", "float32", "cpu", 16), tmp_path / "a")
    assert model.schedule(50) == Schedule.stable_diffusion(50) and model.pixel_multiple == 2
    assert all(torch.equal(p, q) for p, q in zip(model.unet.parameters(), unet.parameters()))


def test_views_are_the_evaluation_resize_of_whole_photos_and_crops():
    views = training_views(PHOTOS, 16, [64, 128])
    whole = torch.from_numpy(load_photo("coffee", 16).astype(np.float64) / 127.5 - 1).permute(2, 0, 1)
    assert torch.equal(views[1][0], whole)
    assert views[1][1].shape == (3, 100, 150) and views[1][2].shape == (3, 50, 75)  # coffee is 400 x 600 px
    batch = sample_views(views, 32, 16, torch.Generator().manual_seed(0))
    assert batch.shape == (32, 3, 16, 16) and batch.dtype == torch.float32 and batch.abs().max() <= 1
    with pytest.raises(ValueError, match="has no 1000 px crop"):
        training_views(["coffee"], 16, [1000])


def test_the_bayes_optimal_predictor_scores_best_on_samples_of_its_prior():
    exact = random_mixture(k=4, d=48, seed=3)
    other = random_mixture(k=4, d=48, seed=4)  # another prior: a predictor with a known error
    x = sample_mixture(exact, 24).reshape(24, 3, 4, 4)
    rows = noise_prediction_errors({"network": other, "mixture": exact}, x, [100, 500, 900],
                                   prior_mean=exact.prior_mean(tuple(x.shape)), draws=2, reference="mixture")
    table = error_table(rows)
    assert list(table["timestep"]) == [100, 500, 900] and (table["images"] == 24).all()
    assert (table["mixture"] < table["network"]).all() and (table["network_over_mixture"] > 1).all()
    assert (table["mixture"] < table["prior_mean"]).all() and (table["mixture"] < table["zero"]).all()
    assert np.allclose(table["zero"], 1, atol=3 * table["zero_ci95"].max())  # E|n|^2 = 1 per element
    # the paired difference is the difference of the means, and its CI is tighter than theirs
    assert np.allclose(table["network_minus_mixture"], table["network"] - table["mixture"])
    assert (table["network_minus_mixture_ci95"] < table["network_ci95"] + table["mixture_ci95"]).all()
    assert set(table["network_vs_mixture"]) <= {"higher", "not resolved"} and "higher" in set(table["network_vs_mixture"])

"""Batched shards: one network call per step for the whole batch, rows equal to batch size 1.

Equal means bit for bit on the analytic model (every registered method); a UNet's batched
convolutions sum in another order, so there NFE is equal and the metrics agree to round-off.
"""

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_mixture
from diffinv import METHODS
from diffinv.api import Run
from diffinv.models import GaussianMixtureDenoiser, StableDiffusionBackend
from diffinv.schedule import SD3_SCHEDULER_CONFIG
from diffinv.testing import shard_rows, write_tiny_stable_diffusion

MEASURED = {"seconds_inversion", "seconds_reconstruction", "peak_mem_mb", "batch_size", "batch_id"}
PARAMS = {"renoise": {"reg_steps": 1, "ac_rolls": 2}, "aidi_a": {"K": 3}, "fpi": {"K": 2}}


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """Seven images and one unreadable file in the middle, so batches of 3 are ragged and mixed."""
    folder = tmp_path_factory.mktemp("batching")
    rng = np.random.default_rng(0)
    items = []
    for k in range(8):
        name = f"{k}.png"
        if k == 3:
            (folder / name).write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / name)
        items.append({"index": k, "id": f"im{k}", "file": name, "caption": f"caption {k}", "status": "ok"})
    return folder, items


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]


def same(a, b):
    """Row lists equal to the last bit (JSON keeps every float's repr, and NaN as NaN)."""
    return json.dumps(a) == json.dumps(b)


# every method on the VP path where it is defined there, and the rivals also on the flow path (Uni-Inv's Euler form)
CASES = [(m, "vp" if "vp" in spec.paths else "flow") for m, spec in sorted(METHODS.items())] + [
    ("uni_inv", "flow")]


@pytest.mark.parametrize("method, path", CASES)
def test_batched_rows_equal_batch_one_bit_for_bit_on_the_analytic_model(shard, method, path, tmp_path):
    folder, items = shard
    flow = {"scheduler_config": SD3_SCHEDULER_CONFIG} if path == "flow" else {}
    model = random_mixture(k=4, d=48, patch_size=4, **flow)  # full covariances: the eigenbasis einsum path
    run = Run(method, PARAMS.get(method, {}), num_steps=6)
    common = dict(images_dir=folder, resolution=16, dataset="t", qualitative=6, save_latents=True)
    one = shard_rows(model, run, items, recon_dir=tmp_path / "one", **common)
    calls = model.nfe
    three = shard_rows(model, run, items, recon_dir=tmp_path / "three", batch_size=3, **common)
    assert same(comparable(one), comparable(three))
    assert [r["status"] == "ok" for r in three] == [k != 3 for k in range(8)]
    ok = [r for r in three if r["status"] == "ok"]
    assert [r["batch_size"] for r in ok] == [3, 3, 3, 2, 2, 2, 2]  # 0 1 2 | (3) 4 5 | 6 7
    assert [r["batch_id"] for r in ok] == [0, 0, 0, 4, 4, 6, 6]  # the first image that was inverted
    assert len({(r["seconds_inversion"], r["seconds_reconstruction"]) for r in ok if r["batch_id"] == 0}) == 1
    per_image = one[0]["nfe_inversion"] + one[0]["nfe_reconstruction"]
    assert calls == 7 * per_image + 1  # + the one warm-up call
    assert model.nfe - calls == 3 * per_image + 1  # three batches share the calls
    for name in ("im0.png", "im5.png", "im6.safetensors"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()


class FlatImageDiverges(GaussianMixtureDenoiser):
    """NaN noise for any sample whose latent is flat: one image of a batch diverges, the rest do not."""

    def forward(self, z, timestep, embedding):
        eps = super().forward(z, timestep, embedding)
        flat = z.flatten(1).std(1) < 1e-6
        return torch.where(flat.view(-1, *[1] * (z.ndim - 1)), torch.full_like(eps, math.nan), eps)


def test_a_diverging_image_is_an_error_row_and_its_batch_neighbours_are_untouched(shard):
    folder, items = shard
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(folder / "flat.png")
    items = [items[0], {**items[1], "id": "flat", "file": "flat.png"}, items[2]]
    base = random_mixture(k=4, d=48)
    model = FlatImageDiverges(base.weights, base.means, base.covariances, patch_size=4)
    run = Run("ddim", num_steps=5)
    common = dict(images_dir=folder, resolution=16, dataset="t")
    batched = shard_rows(model, run, items, batch_size=3, **common)
    assert [r["status"] for r in batched] == ["ok", "error: non-finite inverted latent", "ok"]
    alone = [shard_rows(model, run, [item], **common)[0] for item in items]
    assert same(comparable(batched), comparable(alone))


class FailsInBatches(GaussianMixtureDenoiser):
    """Refuses batches larger than one, as a GPU out of memory would."""

    def forward(self, z, timestep, embedding):
        if z.shape[0] > 1:
            raise RuntimeError("out of memory (simulated)")
        return super().forward(z, timestep, embedding)


def test_a_failed_batch_is_retried_one_image_at_a_time(shard, caplog):
    folder, items = shard
    base = random_mixture(k=4, d=48)
    model = FailsInBatches(base.weights, base.means, base.covariances, patch_size=4)
    run = Run("ddim", num_steps=5)
    common = dict(images_dir=folder, resolution=16, dataset="t")
    with caplog.at_level(logging.WARNING, logger="diffinv.workflow.runs"):
        batched = shard_rows(model, run, items[:5], batch_size=4, **common)
    assert "a batch of 3 failed (out of memory (simulated)); inverting its images one at a time" in caplog.text
    ok = [r for r in batched if r["status"] == "ok"]
    assert [(r["batch_size"], r["batch_id"]) for r in ok] == [(1, 0), (1, 1), (1, 2), (1, 4)]
    assert same(comparable(batched), comparable(shard_rows(model, run, items[:5], **common)))


def test_batch_size_below_one_is_refused(shard):
    folder, items = shard
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        shard_rows(random_mixture(k=2, d=48, patch_size=4), Run("ddim", num_steps=2), items,
                  images_dir=folder, resolution=16, dataset="t", batch_size=0)


@pytest.mark.parametrize("method, guidance", [("ddim", 1.0), ("ife", 3.0), ("edict", 1.0)])
def test_unet_batches_count_the_same_nfe_and_agree_to_round_off(shard, tmp_path, method, guidance):
    folder, items = shard
    model = StableDiffusionBackend.from_pretrained(write_tiny_stable_diffusion(tmp_path / "sd"), device="cpu",
                                                   dtype=torch.float32)
    run = Run(method, num_steps=4, guidance=guidance)
    common = dict(images_dir=folder, resolution=16, dataset="t")
    one = shard_rows(model, run, items[:3], **common)
    two = shard_rows(model, run, items[:3], batch_size=3, **common)
    assert [r["status"] for r in two] == ["ok"] * 3 and [r["batch_size"] for r in two] == [3] * 3
    for a, b in zip(one, two):
        assert (a["nfe_inversion"], a["nfe_reconstruction"]) == (b["nfe_inversion"], b["nfe_reconstruction"])
        assert a["latent_mse"] == pytest.approx(b["latent_mse"], rel=1e-3, abs=1e-9)
        assert a["psnr"] == pytest.approx(b["psnr"], abs=0.05)

"""One shard of the workflow as a library call: rows per image, error rows, saved reconstructions."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffinv.api import Run
from diffinv.models import GaussianMixtureDenoiser
from diffinv.workflow.runs import row_columns
from diffinv.testing import shard_rows


def patch_model(seed: int = 0) -> GaussianMixtureDenoiser:
    rng = np.random.default_rng(seed)
    d = 3 * 4 * 4
    return GaussianMixtureDenoiser(np.ones(3) / 3, rng.normal(0, 0.3, (3, d)), np.full(3, 0.05), patch_size=4)


class NaNModel(GaussianMixtureDenoiser):
    def forward(self, z, timestep, embedding):
        return torch.full_like(z, math.nan)


@pytest.fixture
def shard(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "good2.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    items = [{"index": 0, "id": "a", "file": "good.png", "caption": "x", "status": "ok"},
             {"index": 1, "id": "b", "file": "broken.png", "caption": "x", "status": "ok"},
             {"index": 2, "id": "c", "file": "missing.png", "caption": "x", "status": "error: HTTP 404"},
             {"index": 3, "id": "d", "file": "good2.png", "caption": "", "status": "ok"},
             {"index": 4, "id": "e", "file": "good2.png", "caption": "y", "status": "ok"}]
    return tmp_path, items


def test_each_image_is_one_row_and_bad_ones_are_error_rows(shard, tmp_path):
    folder, items = shard
    run = Run("ddim", num_steps=5)
    rows = shard_rows(patch_model(), run, items, images_dir=folder, resolution=16, dataset="t", qualitative=1,
                     recon_dir=tmp_path / "recon")
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", "e"]
    assert all(set(r) == set(row_columns(())) for r in rows)
    status = {r["id"]: r["status"] for r in rows}
    assert status["a"] == status["e"] == "ok"
    assert status["b"].startswith("error: ") and "broken.png" in status["b"]
    assert status["c"] == "error: not acquired (error: HTTP 404)"
    assert status["d"] == "error: empty caption (prompt: caption)"
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["nfe_inversion"] == 5 and r["nfe_reconstruction"] == 5 and r["psnr"] > 10 for r in ok)
    assert all(math.isnan(r["psnr"]) for r in rows if r["status"] != "ok")
    assert sorted(p.name for p in (tmp_path / "recon").iterdir()) == ["a.png"]


def test_a_diverging_method_is_an_error_row_and_the_shard_goes_on(shard):
    folder, items = shard
    model = NaNModel(np.ones(3) / 3, np.zeros((3, 48)), np.full(3, 0.05), patch_size=4)
    rows = shard_rows(model, Run("ife", num_steps=5), [items[0], items[4]], images_dir=folder,
                     resolution=16, dataset="t")
    assert [r["status"] for r in rows] == ["error: non-finite inverted latent"] * 2


def test_unquantised_scoring_measures_the_float_reconstruction_and_still_saves_8_bit_pngs(tmp_path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(30, 226, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "mid.png")  # no clipping
    items = [{"index": 0, "id": "a", "file": "mid.png", "caption": "x", "status": "ok"}]
    run = Run("ddim", num_steps=5)
    rows = {q: shard_rows(patch_model(), run, items, images_dir=tmp_path, resolution=16, qualitative=1,
                          recon_dir=tmp_path / f"recon{q}", quantize=q)[0] for q in (True, False)}
    exact, rounded = rows[False], rows[True]
    assert exact["latent_mse"] == rounded["latent_mse"] > 0
    # the latent is the image in [-1, 1]: the float reconstruction's MSE in [0, 1] units is a quarter of it
    assert exact["mse"] == pytest.approx(exact["latent_mse"] / 4, rel=1e-12)
    assert rounded["mse"] * 255**2 == pytest.approx(round(rounded["mse"] * 255**2 * 768) / 768, abs=1e-9)
    pngs = [np.asarray(Image.open(tmp_path / f"recon{q}" / "a.png")) for q in (True, False)]
    assert pngs[0].dtype == np.uint8 and np.array_equal(*pngs)


def test_the_mixtures_latent_is_its_image_so_its_own_round_trip_is_not_scored_twice(tmp_path):
    from diffinv.evaluation.images import to_uint8, to_unit
    from diffinv.evaluation.roundtrip import encode

    model = patch_model()
    image = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    decoded = model.decode(encode(model, image))
    assert model.latent_is_image and np.array_equal(to_uint8(decoded)[0], image)
    np.testing.assert_allclose(to_unit(decoded)[0], image / 255, rtol=0, atol=1e-15)
    Image.fromarray(image).save(tmp_path / "x.png")
    items = [{"index": 0, "id": "a", "file": "x.png", "caption": "x", "status": "ok"}]
    row = shard_rows(model, Run("ddim", num_steps=5), items, images_dir=tmp_path, resolution=16)[0]
    assert (row["psnr_vae"], row["ssim_vae"], row["mse_vae"]) == (row["psnr"], row["ssim"], row["mse"])

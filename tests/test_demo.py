import numpy as np
import pytest
import torch

from diffinv.workflow.data import DEMO_EVAL, DEMO_FIT, PHOTOS, load_photo
from diffinv.demo import evaluate, fit_demo_model, format_table, run_demo


def test_every_shipped_photo_loads_and_fit_and_eval_sets_are_disjoint():
    for name in PHOTOS:
        photo = load_photo(name, 32)
        assert photo.shape == (32, 32, 3) and photo.dtype == np.uint8 and photo.std() > 5
    assert not set(DEMO_FIT) & set(DEMO_EVAL)


def test_small_fit_inverts_held_out_photos_with_ife_ahead_of_ddim():
    model = fit_demo_model(DEMO_FIT, size=48, n_components=4, stride=4, max_patches=8000)
    images = np.stack([load_photo(name, 32) for name in DEMO_EVAL])
    rows = evaluate(model, images, [("ddim", {}), ("ife", {})], num_steps=20)
    by = {r["method"]: r for r in rows}
    assert by["ddim"]["nfe"] == by["ife"]["nfe"] == 20
    assert by["ife"]["psnr"] > by["ddim"]["psnr"] and by["ife"]["mse"] < by["ddim"]["mse"]
    assert "ife" in format_table(rows)


@pytest.mark.slow
def test_full_demo_orders_the_methods():
    rows = {r["method"]: r for r in run_demo(log=lambda *_: None)}
    assert rows["ife"]["psnr"] > rows["ife_noerr"]["psnr"] > rows["ddim"]["psnr"]
    assert rows["ife"]["psnr"] > rows["fpi K=3"]["psnr"]


def test_the_cached_demo_model_is_the_demo_presets_and_is_fitted_once(tmp_path, monkeypatch):
    """``demo_model()`` fits with fit_demo_model's defaults, which are config/demo.yaml's fit settings, then
    loads the cached file: the library, ``diffinv invert --model demo`` and ``diffinv demo`` share one fit."""
    import inspect

    import yaml

    from diffinv import demo
    from diffinv.workflow.data import DEMO_FIT
    from snakemake_runner import ROOT

    fit = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["model"]["fit"]
    defaults = {k: p.default for k, p in inspect.signature(demo.fit_demo_model).parameters.items()}
    assert tuple(fit["photos"]) == DEMO_FIT == defaults["photos"]
    assert {k: fit[k] for k in ("size", "patch_size", "stride", "seed")} == {
        k: defaults[k] for k in ("size", "patch_size", "stride", "seed")} and fit["components"] == defaults["n_components"]

    calls = []
    small = demo.fit_demo_model(DEMO_FIT[:2], size=32, n_components=2, max_patches=500)
    monkeypatch.setattr(demo, "fit_demo_model", lambda: calls.append(1) or small)
    first = demo.demo_model(tmp_path)
    second = demo.demo_model(tmp_path)
    assert calls == [1] and len(list(tmp_path.glob("demo-model-*.npz"))) == 1
    assert torch.equal(first.means, second.means) and torch.equal(first.means, small.means)

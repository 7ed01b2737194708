"""Speed options of the Stable Diffusion backend and per-run dtypes, on the tiny random-weight model:
each option leaves the result equal, or within a stated tolerance, of the plain float32 run."""

import copy

import pytest
import torch

from diffinv import invert, reconstruct
from diffinv.workflow.config import ConfigError, InvertJob, ModelSpec, expand_runs, prepare
from diffinv.models import StableDiffusionBackend
from diffinv.testing import write_tiny_stable_diffusion
from snakemake_runner import ROOT, load_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd")


def round_trip(folder, **options):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    model = StableDiffusionBackend.from_pretrained(folder, device="cpu", **({"dtype": torch.float32} | options))
    z0 = model.encode(images)
    result = invert("ife", model, z0, ["a cat", "a dog"], num_steps=8)
    return model, z0, result, reconstruct("ife", model, result, ["a cat", "a dog"])


def test_channels_last_gives_the_same_round_trip(folder):
    _, z0, ref, recon = round_trip(folder)
    model, z0_cl, result, recon_cl = round_trip(folder, channels_last=True)
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert result.nfe == ref.nfe
    torch.testing.assert_close(z0_cl, z0)
    torch.testing.assert_close(recon_cl, recon, rtol=1e-4, atol=1e-5)  # another summation order only


def test_float32_latents_keep_the_methods_arithmetic_out_of_the_networks_dtype(folder):
    _, z0, _, recon = round_trip(folder)
    low, z_low, result_low, recon_low = round_trip(folder, dtype=torch.bfloat16)
    mixed, z_mixed, result_mixed, recon_mixed = round_trip(folder, dtype=torch.bfloat16, latent_dtype=torch.float32)
    assert (low.latent_dtype, z_low.dtype, result_low.latent.dtype) == (torch.bfloat16,) * 3
    assert (mixed.dtype, mixed.latent_dtype) == (torch.bfloat16, torch.float32)
    assert z_mixed.dtype == result_mixed.latent.dtype == recon_mixed.dtype == torch.float32
    assert result_mixed.nfe == result_low.nfe
    # the network still rounds to bfloat16 (8 bits of mantissa): within its precision of float32
    assert (recon_mixed - recon).abs().max() < 0.1 * recon.abs().max()
    assert (z_mixed - z0).abs().max() < 0.02 * z0.abs().max()


@pytest.mark.slow  # torch.compile's first call takes about two minutes on this CPU
def test_a_compiled_unet_gives_the_same_round_trip(folder):
    _, _, ref, recon = round_trip(folder)
    model, _, result, recon_compiled = round_trip(folder, compile=True)
    assert result.nfe == ref.nfe and model.unet is not model.unet._orig_mod
    torch.testing.assert_close(recon_compiled, recon, rtol=1e-4, atol=1e-5)


def test_a_run_may_set_its_own_dtype_and_keeps_its_signature_without_one():
    config = load_config("config.yaml")
    runs, _ = expand_runs(config)
    assert runs["ife_fp32"].dtype == "float32" and runs["ife"].dtype is None
    assert runs["ife_fp32"].signature != runs["ife"].signature
    # a run without its own dtype keeps the signature it had before the field existed
    ife = runs["ife"]
    import json

    assert ife.signature == json.dumps([ife.method, ife.params, ife.num_steps, ife.guidance,
                                        ife.reconstruction_guidance], sort_keys=True, default=str)
    prepare(config, ROOT / "config" / "schema.yaml")
    job = InvertJob.from_config(config, runs["ife_fp32"], "coco")
    assert job.model.dtype == "float32" and job.model.latent_dtype == "float32"
    assert InvertJob.from_config(config, runs["ife"], "coco").model.dtype == "float16"
    config["sweeps"] = [{"param": "num_steps", "runs": ["ife_fp32"], "values": [10]}]
    assert expand_runs(config)[0]["ife_fp32-N10"].dtype == "float32"  # a sweep keeps its base's dtype


@pytest.mark.parametrize("key, value", [("latent_dtype", "float32"), ("channels_last", True), ("compile", True)])
def test_stable_diffusion_options_are_refused_on_the_analytic_model(key, value):
    """What a backend takes is its class's ``options``; the config check reads them there."""
    config = load_config("demo.yaml")
    config["model"][key] = value
    with pytest.raises(ConfigError, match=f"config key model.{key}: not an option of the gaussian_mixture model "
                                          r"\(it takes none of latent_dtype, channels_last, compile\)"):
        prepare(config, ROOT / "config" / "schema.yaml")


def test_the_model_spec_reads_every_option():
    spec = ModelSpec.from_config({"kind": "stable_diffusion", "dtype": "float16", "device": "cuda", "resolution": 512,
                                  "latent_dtype": "float32", "channels_last": True, "compile": False})
    assert (spec.latent_dtype, spec.channels_last, spec.compile) == ("float32", True, False)


def test_a_new_backend_is_its_class_and_its_registration(monkeypatch, tmp_path):
    """Adding a backend is one file (a DiffusionModel subclass whose class attributes say what it is) and one
    entry in diffinv.models.BACKENDS: the config checks, the NFE estimate and the loader read it from there."""
    from diffinv import models
    from diffinv.api import Run
    from diffinv.models.base import DiffusionModel
    from diffinv.workflow.config import nfe_estimate

    class Toy(DiffusionModel):
        kind, path, image_multiple, guidance, hub = "toy", "vp", 12, "distilled", True
        options = ("compile", "local_files_only")

        @classmethod
        def load(cls, weights, *, device=None, dtype=None, **options):
            return ("loaded", weights, options)

    monkeypatch.setitem(models.BACKENDS, "toy", Toy)
    config = load_config("config.yaml")
    config["model"] = {**config["model"], "kind": "toy", "resolution": 520, "latent_dtype": None}
    config["model"].pop("latent_dtype")
    with pytest.raises(ConfigError, match="model.resolution: the toy model needs a multiple of 12"):
        prepare(copy.deepcopy(config), ROOT / "config" / "schema.yaml")
    config["model"].update(resolution=528, channels_last=True)
    with pytest.raises(ConfigError, match=r"model.channels_last: not an option of the toy model \(it takes compile\)"):
        prepare(copy.deepcopy(config), ROOT / "config" / "schema.yaml")
    config["model"].update(channels_last=False, compile=True)
    prepare(copy.deepcopy(config), ROOT / "config" / "schema.yaml")
    # guidance distilled: a guided pass is one NFE
    assert nfe_estimate(Run("ddim", num_steps=10, guidance=3.0), {"kind": "toy"}) == 20
    assert models.load("toy", tmp_path, compile=True) == ("loaded", tmp_path, {"compile": True})
    with pytest.raises(TypeError, match=r"the toy backend takes no option \['channels_last'\]"):
        models.load("toy", tmp_path, channels_last=True)
    with pytest.raises(KeyError, match="unknown model kind 'nope'; known: stable_diffusion"):
        models.load("nope", tmp_path)

"""The SDXL, SD3 and FLUX.1 backends on tiny random-weight components (plumbing only: no number here means
image quality). Each tiny model is built from config, saved as a diffusers folder, served by the local fake
Hub and loaded through the workflow's own path: snapshot at a commit (the weights allow-list), then the
backend's from_pretrained on the snapshot folder. The diffusers pipelines, built from the same components,
are the reference for the prompt embeddings and for one sampling step."""

import pytest
import torch

from diffinv import METHODS, invert, reconstruct
from diffinv.api import Run
from diffinv.workflow.config import ConfigError, ModelSpec, nfe_estimate, prepare
from diffinv.models import BACKENDS, Conditioning, folder_kind
from diffinv.models.flux import image_ids, pack, unpack
from diffinv.workflow.runs import load_model
from diffinv.testing import FLOW_SCALING_FACTOR, FLOW_SHIFT_FACTOR, SCALING_FACTOR, TINY_WRITERS, write_tiny_sd3
from fakehub import fetch_through_hub
from httpserver import LocalServer
from snakemake_runner import ROOT, load_config

KINDS = ["sdxl", "sd3", "flux"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Files real repositories hold beside the component folders, which the allow-list must leave out
# (single-file checkpoints of SDXL and FLUX.1-dev, SDXL's second VAE copy, SD3.5's ComfyUI encoders).
DECOYS = {"flux1-dev.safetensors": b"x", "ae.safetensors": b"x", "vae_1_0/diffusion_pytorch_model.safetensors": b"x",
          "text_encoders/clip_g.safetensors": b"x", "transformer/diffusion_pytorch_model.fp16.safetensors": b"x"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """kind -> the snapshot folder of its tiny model, fetched from the fake Hub at a pinned commit."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    with LocalServer() as server:
        for kind in KINDS:
            out[kind] = fetch_through_hub(server, f"test/tiny-{kind}", COMMIT, TINY_WRITERS[kind](root / kind),
                                          DECOYS, root / "hub")
    return out


@pytest.fixture(scope="module")
def models(folders):
    return {kind: BACKENDS[kind].from_pretrained(folders[kind], device="cpu", dtype=torch.float32, resolution=16,
                                                 local_files_only=True) for kind in KINDS}


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


# -- loading -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_loads_the_snapshot_as_its_kind(models, folders, kind):
    model = models[kind]
    assert folder_kind(folders[kind]) == kind and model.kind == kind
    assert model.prediction_type == ("epsilon" if kind == "sdxl" else "flow")
    network = model.unet if kind == "sdxl" else model.transformer
    assert network is model.network and next(network.parameters()).dtype == torch.float32
    assert model.scheduler_config["_class_name"] == ("EulerDiscreteScheduler" if kind == "sdxl"
                                                    else "FlowMatchEulerDiscreteScheduler")


def test_load_model_dispatches_on_the_configured_kind(folders):
    for kind in KINDS:
        spec = ModelSpec(kind, "float32", "cpu", 32)
        model = load_model(spec, folders[kind])
        assert type(model) is BACKENDS[kind] and model.resolution == 32


def test_sd35_layout_loads_and_runs(tmp_path):
    # SD3.5: dual-attention layers and RMS-normalised queries and keys; the same backend
    model = BACKENDS["sd3"].from_pretrained(write_tiny_sd3(tmp_path / "sd35", sd35=True), device="cpu",
                                            dtype=torch.float32)
    assert model.transformer.config.qk_norm == "rms_norm"
    z = torch.randn(1, 16, 8, 8)
    assert torch.isfinite(model.forward(z, 500.0, model.condition("a cat", 1).cond)).all()


# -- latents -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_latents_are_scaled_and_shifted_posterior_means(models, images, kind):
    model = models[kind]
    z = model.encode(images)
    channels, scale, shift = {"sdxl": (4, SCALING_FACTOR, 0.0), "sd3": (16, FLOW_SCALING_FACTOR, FLOW_SHIFT_FACTOR),
                              "flux": (16, FLOW_SCALING_FACTOR, -FLOW_SHIFT_FACTOR)}[kind]
    assert z.shape == (2, channels, 8, 8)
    assert (model.latent_scale, model.latent_shift) == (scale, shift)
    mean = model.vae.encode(images).latent_dist.mean
    torch.testing.assert_close(z, (mean - shift) * scale)
    out = model.decode(z)
    torch.testing.assert_close(out, model.vae.decode(mean).sample.clamp(-1, 1), rtol=1e-5, atol=1e-5)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1


def test_image_sides_must_fit_the_patching(models):
    with pytest.raises(ValueError, match="multiples of 4"):  # the tiny VAE's factor 2 x patch 2
        models["flux"].encode(torch.zeros(1, 3, 18, 18))
    assert models["sdxl"].pixel_multiple == 2 and models["sd3"].pixel_multiple == models["flux"].pixel_multiple == 4


def test_flux_packing_matches_the_pipeline_and_inverts(models):
    from diffusers import FluxPipeline

    z = torch.randn(2, 16, 8, 6)
    packed = pack(z)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(z, 2, 16, 8, 6), rtol=0, atol=0)
    assert torch.equal(unpack(packed, 8, 6), z)
    torch.testing.assert_close(image_ids(8, 6, torch.device("cpu")),
                               FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32))


def test_flow_schedule_options_give_the_token_count(models):
    # FLUX's dynamic shift reads the image's token count: (h/2) (w/2) of the latent
    assert models["flux"].schedule_options((1, 16, 128, 96)) == {"image_seq_len": 64 * 48, "sigmas": "flux"}
    assert models["flux"].schedule_options()["image_seq_len"] == 16  # resolution 16 -> latent 8 x 8
    assert models["sd3"].schedule_options((1, 16, 8, 8)) == {"image_seq_len": 16}
    assert models["sdxl"].schedule_options() == {}


# -- prompts -------------------------------------------------------------------------------------------------
ENCODER_PARTS = {
    # kind -> encoder -> the slices of the embedding it writes (prompt_embeds [tokens, features], pooled)
    "sdxl": {"text_encoder": [("prompt_embeds", slice(None), slice(0, 8))],
             "text_encoder_2": [("prompt_embeds", slice(None), slice(8, 16)), ("pooled", slice(None))]},
    "sd3": {"text_encoder": [("prompt_embeds", slice(0, 16), slice(0, 8)), ("pooled", slice(0, 8))],
            "text_encoder_2": [("prompt_embeds", slice(0, 16), slice(8, 24)), ("pooled", slice(8, 24))],
            "text_encoder_3": [("prompt_embeds", slice(16, 32), slice(None))]},
    "flux": {"text_encoder": [("pooled", slice(None))],
             "text_encoder_2": [("prompt_embeds", slice(None), slice(None))]},
}


@pytest.mark.parametrize("kind", KINDS)
def test_prompts_reach_every_text_encoder(models, kind):
    model = models[kind]
    model._prompt_cache.clear()
    seen = {name: [] for name in model.text_encoders}
    hooks = [encoder.register_forward_pre_hook(lambda mod, args, kwargs, name=name: seen[name].append(
        (args[0] if args else kwargs["input_ids"]).clone()), with_kwargs=True)
        for name, encoder in model.text_encoders.items()]
    try:
        cond = model.condition(["the cat", "a dog"], 2).cond
    finally:
        for hook in hooks:
            hook.remove()
    assert set(ENCODER_PARTS[kind]) == set(model.text_encoders)
    tokenizers = sorted(model.tokenizers)  # tokenizer, tokenizer_2, ... pair with text_encoder, text_encoder_2
    for (name, calls), tokenizer in zip(sorted(seen.items()), tokenizers):
        ids = [model.tokens(tokenizer, text)[0] for text in ("the cat", "a dog")]
        assert len(calls) >= 2, name
        assert any(torch.equal(c[0, :len(ids[0])], ids[0][:c.shape[1]]) for c in calls), name
        for key, *index in ENCODER_PARTS[kind][name]:
            first, second = cond[key][0][tuple(index)], cond[key][1][tuple(index)]
            assert first.numel() and not torch.allclose(first, second), (name, key)


def test_the_unconditional_half_follows_each_pipeline(models):
    sdxl, sd3, flux = (models[k].condition("the cat", 2) for k in KINDS)
    # SDXL base sets force_zeros_for_empty_prompt: zeros; a prompt "" is still encoded
    assert all(torch.count_nonzero(v) == 0 for v in sdxl.uncond.values())
    assert torch.count_nonzero(models["sdxl"].condition(None, 1).cond["prompt_embeds"]) > 0
    # SD3 encodes the empty prompt; FLUX.1-dev has no unconditional pass
    for key, value in sd3.uncond.items():
        torch.testing.assert_close(value[0], models["sd3"].condition(None, 1).cond[key][0])
    assert flux.uncond is None and len(flux) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_equal_the_diffusers_pipelines(models, kind):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    model = models[kind]
    parts = {**model.text_encoders, **model.tokenizers, "vae": model.vae, "scheduler": None}
    prompt = ["the cat"]
    if kind == "sdxl":
        from diffusers import EulerDiscreteScheduler

        parts["scheduler"] = EulerDiscreteScheduler.from_config(model.scheduler_config)
        pipe = StableDiffusionXLPipeline(unet=model.unet, force_zeros_for_empty_prompt=True, **parts)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompt, device="cpu",
                                                                       do_classifier_free_guidance=True)
    else:
        from diffusers import FlowMatchEulerDiscreteScheduler

        parts["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
        if kind == "sd3":
            pipe = StableDiffusion3Pipeline(transformer=model.transformer, **parts)
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                prompt, None, None, device="cpu", do_classifier_free_guidance=True, max_sequence_length=16)
        else:
            pipe = FluxPipeline(transformer=model.transformer, **parts)
            embeds, pooled, _ = pipe.encode_prompt(prompt, None, device="cpu", max_sequence_length=16)
            negative = None
    cond = model.condition(prompt, 1)
    torch.testing.assert_close(cond.cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond.cond["pooled"], pooled)
    if negative is not None:
        torch.testing.assert_close(cond.uncond["prompt_embeds"], negative)
        torch.testing.assert_close(cond.uncond["pooled"], negative_pooled)


# -- the network ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_euler_sampling_equals_the_pipelines(models, kind):
    """Three sampling steps of the diffusers pipeline (its own grid, guidance and Euler steps) equal DDIM
    reconstruction on our schedule: same timesteps, same velocity, and DDIM's transfer is the Euler step."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    from diffinv.api import guided_eps
    from diffinv.methods.base import ddim_reconstruct

    model = models[kind]
    parts = {**model.text_encoders, **model.tokenizers, "vae": model.vae,
             "scheduler": FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)}
    z = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    w, seen = 3.0, []

    def record(pipe, i, t, kwargs):
        seen.append(float(t))
        return {}

    common = {"height": 16, "width": 16, "num_inference_steps": 3, "guidance_scale": w, "max_sequence_length": 16,
              "output_type": "latent", "callback_on_step_end": record}
    if kind == "sd3":
        out = StableDiffusion3Pipeline(transformer=model.transformer, **parts)("the cat", latents=z.clone(),
                                                                              **common).images
    else:
        out = unpack(FluxPipeline(transformer=model.transformer, **parts)("the cat", latents=pack(z), **common).images,
                     8, 8)
    sched = model.schedule(3, tuple(z.shape))
    assert seen == pytest.approx(list(reversed(sched.timesteps[1:])), rel=1e-6)
    nfe = model.nfe
    ours = ddim_reconstruct(guided_eps(model, sched, model.condition("the cat", 1), w), z, sched)
    assert model.nfe - nfe == 3 * (2 if kind == "sd3" else 1)
    torch.testing.assert_close(ours, out, rtol=1e-4, atol=1e-5)


def test_sdxl_time_ids_are_the_pipelines(models):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    model = models["sdxl"]
    pipe = StableDiffusionXLPipeline(unet=model.unet, vae=model.vae, **model.text_encoders, **model.tokenizers,
                                     scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config))
    time_ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32, text_encoder_projection_dim=8)
    z = torch.randn(2, 4, 8, 8)
    cond = model.condition("the cat", 2).cond
    expected = model.unet(z, torch.tensor(501), encoder_hidden_states=cond["prompt_embeds"],
                          added_cond_kwargs={"text_embeds": cond["pooled"], "time_ids": time_ids.expand(2, 6)}).sample
    torch.testing.assert_close(model.forward(z, 501, cond), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_guidance_and_nfe(models, images, kind):
    model = models[kind]
    z = model.encode(images)
    t = 501 if kind == "sdxl" else 600.0
    cond = model.condition("the cat", 2)
    start = model.nfe
    plain = model.guided(z, t, cond, 1.0)
    assert model.nfe - start == 1
    guided = model.guided(z, t, cond, 3.0)
    if kind == "flux":  # the guidance scale is an input: one pass, and it changes the output
        assert model.nfe - start == 2
        torch.testing.assert_close(guided, model.forward(z, t, cond.cond, guidance=3.0))
        assert not torch.allclose(guided, plain)
    else:  # classifier-free guidance: one batched uncond + cond pass, 2 NFE
        assert model.nfe - start == 3
        c, u = model.forward(z, t, cond.cond), model.forward(z, t, cond.uncond)
        torch.testing.assert_close(guided, u + 3.0 * (c - u), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain, c)


def test_flux_schnell_layout_refuses_guidance(tmp_path):
    from diffinv.testing import write_tiny_flux

    model = BACKENDS["flux"].from_pretrained(write_tiny_flux(tmp_path / "schnell", guidance_embeds=False),
                                             device="cpu", dtype=torch.float32)
    cond = model.condition("a cat", 1)
    assert torch.isfinite(model.guided(torch.randn(1, 16, 8, 8), 500.0, cond, 1.0)).all()
    with pytest.raises(ValueError, match="no guidance input"):
        model.guided(torch.randn(1, 16, 8, 8), 500.0, cond, 2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_equals_its_images_one_by_one(models, images, kind):
    model = models[kind]
    z = model.encode(images)
    t = 501 if kind == "sdxl" else 600.0
    prompts = ["the cat", "a dog"]
    batch = model.guided(z, t, model.condition(prompts, 2), 2.0)
    singles = torch.cat([model.guided(z[k:k + 1], t, model.condition(prompts[k], 1), 2.0) for k in range(2)])
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-6)


# -- inversion and reconstruction ----------------------------------------------------------------------------
PARAMS = {"fpi": {"K": 2}, "aidi_e": {"K": 2}, "aidi_a": {"K": 3, "m": 1}, "ife": {"compute_e0": True},
          "renoise": {"K": 1}}


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_every_method_runs_and_counts_nfe(models, images, kind, guidance):
    model = models[kind]
    z0 = model.encode(images)
    per_pass = 1 if guidance == 1.0 or kind == "flux" else 2
    path = "vp" if kind == "sdxl" else "flow"
    for name in sorted(METHODS):
        spec = METHODS[name]
        if path not in spec.paths:  # FireFlow and RF-Solver on SDXL: refused before any pass
            start = model.nfe
            with pytest.raises(ValueError, match="rectified-flow path only"):
                invert(name, model, z0, ["the cat", "a dog"], num_steps=4, guidance=guidance)
            assert model.nfe == start, name
            continue
        result = invert(name, model, z0, ["the cat", "a dog"], num_steps=4, guidance=guidance, **PARAMS.get(name, {}))
        assert result.nfe == per_pass * spec.nfe(spec.resolve(PARAMS.get(name, {})), result.schedule), name
        start = model.nfe
        rec = reconstruct(name, model, result, ["the cat", "a dog"])
        assert model.nfe - start == per_pass * spec.reconstruct_nfe(result.schedule), name
        assert rec.shape == z0.shape and torch.isfinite(rec).all(), name


@pytest.mark.parametrize("kind", KINDS)
def test_inverting_a_batch_equals_its_images_one_by_one(models, images, kind):
    model = models[kind]
    z0 = model.encode(images)
    prompts = ["the cat", "a dog"]
    batch = invert("ife", model, z0, prompts, num_steps=6, guidance=2.0)
    rec = reconstruct("ife", model, batch, prompts)
    for k in range(2):
        single = invert("ife", model, z0[k:k + 1], prompts[k], num_steps=6, guidance=2.0)
        torch.testing.assert_close(batch.latent[k:k + 1], single.latent, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rec[k:k + 1], reconstruct("ife", model, single, prompts[k]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_methods_reconstruct_through_the_network(folders, images, kind):
    model = BACKENDS[kind].from_pretrained(folders[kind], device="cpu", dtype=torch.float64, resolution=16)
    z0 = model.encode(images.double())
    for name in ("bdia", "belm", "edict", "erddci"):
        result = invert(name, model, z0, "the cat", num_steps=8, guidance=2.0)
        error = (reconstruct(name, model, result, "the cat") - z0).norm() / z0.norm()
        assert error <= 1e-10, (name, float(error))


@pytest.mark.parametrize("kind", KINDS)
def test_a_workflow_shard_runs_and_batches_to_round_off(models, kind, tmp_path):
    """The invert job's own path (run_shard: images from disk, captions, metrics, provenance), batch 2 = 1."""
    import numpy as np
    from PIL import Image

    from diffinv.testing import shard_rows

    model = models[kind]
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    items = [{"index": k, "id": name, "file": f"{name}.png", "caption": f"photo {name}", "status": "ok"}
             for k, name in enumerate("ab")]
    run = Run("ife", num_steps=4, guidance=2.0)
    rows = {size: shard_rows(model, run, items, images_dir=tmp_path, resolution=16, batch_size=size)
            for size in (1, 2)}
    per_step = 1 if kind == "flux" else 2
    for one, two in zip(rows[1], rows[2]):
        assert one["status"] == two["status"] == "ok"
        assert one["nfe_inversion"] == two["nfe_inversion"] == 4 * per_step
        assert one["model"] == kind and one["dtype"] == "float32"
        assert two["psnr"] == pytest.approx(one["psnr"], abs=1e-3)


def test_the_command_line_tells_the_kind_from_the_folder(folders, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from diffinv.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (18, 21, 3), dtype=np.uint8)).save(photo)
    code = main(["invert", str(photo), "--model", str(folders["flux"]), "--size", "16", "--steps", "3",
                 "--guidance", "2", "--prompt", "the cat", "--out", str(tmp_path), "--device", "cpu", "--quiet"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[1].split("\t")[2] == "3"  # FLUX: 1 NFE per guided step
    with pytest.raises(SystemExit, match="not a multiple of 4"):  # the tiny VAE's 2 x the 2x2 packing
        main(["invert", str(photo), "--model", str(folders["sd3"]), "--size", "18", "--device", "cpu"])


# -- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_each_example_config_prepares(kind):
    config = load_config(f"{kind}.yaml")
    runs, _ = prepare(config, ROOT / "config" / "schema.yaml")
    assert config["model"]["kind"] == kind and len(config["model"]["revision"]) == 40
    if kind == "sdxl":
        assert runs["easyinv"].params["eta"] == 0.8 and runs["easyinv"].params["s"] == 0.85
    # FLUX.1-dev's guidance is one pass: a guided DDIM round trip of 10 steps costs 20 NFE, elsewhere 40
    assert nfe_estimate(Run("ddim", num_steps=10, guidance=3.0, name="guided"), kind) == (20 if kind == "flux" else 40)


@pytest.mark.parametrize("kind, resolution, ok", [("sd3", 1000, False), ("flux", 1008, True), ("sdxl", 1000, True),
                                                 ("flux", 1000, False)])
def test_resolution_must_fit_the_patching(kind, resolution, ok):
    config = load_config(f"{kind}.yaml")
    config["model"]["resolution"] = resolution
    if ok:
        prepare(config, ROOT / "config" / "schema.yaml")
    else:
        with pytest.raises(ConfigError, match="model.resolution"):
            prepare(config, ROOT / "config" / "schema.yaml")


def test_channels_last_is_a_unet_option():
    config = load_config("flux.yaml")
    config["model"]["channels_last"] = True
    with pytest.raises(ConfigError, match=r"model.channels_last: not an option of the flux model \(it takes latent_dtype, "
                                          r"compile\)"):
        prepare(config, ROOT / "config" / "schema.yaml")


def test_a_structured_conditioning_concatenates_per_key():
    cond = Conditioning({"a": torch.ones(2, 3), "b": torch.ones(2)}, {"a": torch.zeros(2, 3), "b": torch.zeros(2)})
    assert len(cond) == 2
    both = cond.batched()
    assert both["a"].shape == (4, 3) and both["b"].tolist() == [0, 0, 1, 1]

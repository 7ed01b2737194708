"""The pixel-space backend (``UNet2DModel``) on tiny random-weight UNets: plumbing and exactness only, no number
here means image quality. Each tiny folder is written in one of the two layouts the backend reads, served by the
local fake Hub at a commit and fetched with the workflow's allow-list, then loaded through the workflow's own
``load_model``."""

import json
import math

import pytest
import torch

from diffinv import invert, reconstruct
from diffinv.workflow.config import ConfigError, ModelSpec, prepare
from diffinv.workflow.data.hub import write_weights_manifest
from diffinv.models import BACKENDS, Conditioning, PixelDiffusionBackend, folder_kind
from diffinv.workflow.provenance import weights_digest
from diffinv.workflow.runs import load_model
from diffinv.schedule import Schedule, ddim_scheduler
from diffinv.testing import DDPM_SCHEDULER_CONFIG, write_tiny_pixel
from fakehub import fetch_through_hub
from httpserver import LocalServer
from snakemake_runner import ROOT, load_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LAYOUTS = ["pipeline", "root"]
# What the public DDPM repositories hold beside the weights, which the allow-list must leave out
DECOYS = {"diffusion_pytorch_model.bin": b"pickle", "images/generated_image_0.png": b"png",
          "diffusion_pytorch_model.fp16.safetensors": b"x", "README.md": b"# DDPM"}
SPEC = ModelSpec("pixel", "float64", "cpu", 16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """layout -> the snapshot folder of its tiny UNet, fetched from the fake Hub at a pinned commit."""
    root = tmp_path_factory.mktemp("tiny-pixel")
    out = {}
    with LocalServer() as server:
        for layout in LAYOUTS:
            out[layout] = fetch_through_hub(server, f"test/ddpm-{layout}", COMMIT,
                                            write_tiny_pixel(root / layout, layout=layout), DECOYS, root / "hub")
    return out


@pytest.fixture(scope="module")
def models(folders):
    return {layout: load_model(SPEC, folders[layout]) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1


# -- loading -------------------------------------------------------------------------------------------------
def test_both_layouts_load_through_the_workflow_as_their_scheduler_says(folders, models, tmp_path):
    for layout in LAYOUTS:
        model = models[layout]
        assert folder_kind(folders[layout]) == "pixel" and type(model) is BACKENDS["pixel"]
        assert (model.prediction_type, model.pixel_multiple, model.resolution) == ("epsilon", 2, 16)
        assert next(model.unet.parameters()).dtype == torch.float64 and model.latent_is_image
    # the trained folder's schedule is Stable Diffusion's grid; the public DDPMs' their own linear betas
    assert models["pipeline"].schedule(50) == Schedule.stable_diffusion(50)
    ddpm = ddim_scheduler(DDPM_SCHEDULER_CONFIG).alphas_cumprod.double()
    torch.testing.assert_close(models["root"].alphas_cumprod, ddpm, rtol=0, atol=0)
    assert models["root"].schedule(10).alpha_bar[0] == 1.0  # DDIM's set_alpha_to_one default
    # the fetch rule's manifest loads the same weights, and its digest is the snapshot's files
    manifest = tmp_path / "weights.json"
    write_weights_manifest(folders["root"], manifest)
    via_manifest = load_model(SPEC, manifest)
    for a, b in zip(via_manifest.unet.parameters(), models["root"].unet.parameters()):
        assert torch.equal(a, b)
    # a folder's digest covers its files: the same folder, the same digest; another, another
    assert weights_digest(folders["root"]) == weights_digest(folders["root"]) != weights_digest(folders["pipeline"])


def test_pickled_weights_alone_are_refused(tmp_path):
    from diffinv.workflow.training import build_unet

    build_unet(16, (8, 16), 1, True, 4).save_pretrained(tmp_path, safe_serialization=False)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(DDPM_SCHEDULER_CONFIG))
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(OSError, match="cannot load"):
        PixelDiffusionBackend.from_pretrained(tmp_path, device="cpu")


def test_unsupported_networks_and_schedules_are_refused(folders):
    from diffinv.workflow.training import build_unet

    unet = build_unet(16, (8, 16), 1, True, 4)
    config = dict(DDPM_SCHEDULER_CONFIG)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        PixelDiffusionBackend(unet, {**config, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="rectified flow"):
        PixelDiffusionBackend(unet, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    from diffusers import UNet2DModel

    learned_variance = UNet2DModel(sample_size=16, in_channels=3, out_channels=6, block_out_channels=(8, 16),
                                   layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                   up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(ValueError, match="learned-variance"):
        PixelDiffusionBackend(learned_variance, config)


# -- the protocol --------------------------------------------------------------------------------------------
def test_prompts_change_nothing_guidance_is_refused_and_nfe_is_counted(models, images):
    model = models["pipeline"]
    assert model.condition(["a cat", "a dog", "x"], 3) == Conditioning(None, None) == model.condition(None, 3)
    z = model.encode(images)
    assert torch.equal(z, images) and torch.equal(model.decode(z * 3), (z * 3).clamp(-1, 1))
    before = model.nfe
    eps = model.eps(z, 500, model.condition("a cat", 3))
    assert model.nfe == before + 1
    assert torch.equal(eps, model.unet(z, torch.tensor(500)).sample)  # epsilon: the network's output as it is
    result = invert("ddim", model, z, "a cat", num_steps=10)
    assert result.nfe == 10 and model.nfe == before + 11
    with pytest.raises(ValueError, match="unconditional"):
        model.eps(z, 500, Conditioning(None, None), guidance=3.0)


def test_image_sides_and_channels_must_fit_the_unet(models):
    with pytest.raises(ValueError, match="multiples of 2"):
        models["pipeline"].encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="3-channel"):
        models["pipeline"].encode(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("method", ["ife", "aidi_a"])
def test_a_batch_equals_its_images_one_by_one(models, images, method):
    model = models["root"]
    together = invert(method, model, model.encode(images), num_steps=10).latent
    alone = torch.cat([invert(method, model, model.encode(x[None]), num_steps=10).latent for x in images])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)  # convolutions sum in a batch's own order


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", ["bdia", "belm", "edict", "erddci"])
def test_exact_methods_reconstruct_in_float64(models, images, layout, method):
    model = models[layout]
    z = model.encode(images)
    result = invert(method, model, z, num_steps=10)
    error = (reconstruct(method, model, result) - z).norm() / z.norm()
    assert error <= 1e-10


# -- v-prediction ---------------------------------------------------------------------------------------------
def test_v_prediction_is_converted_to_noise(tmp_path, images):
    model = load_model(SPEC, write_tiny_pixel(tmp_path / "v", layout="pipeline", prediction_type="v_prediction"))
    assert model.prediction_type == "v_prediction"
    t = 500
    alpha_bar = float(model.alphas_cumprod[t])
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    x, noise = images, torch.randn(images.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = a * x + s * noise
    v = model.unet(z, torch.tensor(t)).sample
    unconditional = Conditioning(None, None)
    assert torch.equal(model.eps(z, t, unconditional, level=(a, s)), a * v + s * z)
    assert torch.equal(model.eps(z, t, unconditional), a * v + s * z)  # default level: the training schedule's
    # a network that predicted the velocity exactly gives back the noise: a v + s z = (a^2 + s^2) n
    model.forward = lambda z_, timestep, embedding: a * noise - s * x
    torch.testing.assert_close(model.eps(z, t, unconditional, level=(a, s)), noise, rtol=0, atol=1e-14)
    assert invert("ddim", model, x, num_steps=5).schedule.path == "vp"


# -- configuration ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda c: c["runs"]["ife"].update(guidance=2.0), "runs.ife.guidance .*unconditional"),
    (lambda c: c["model"]["train"].update(photos=["astronaut", "cat"]), r"\['cat'\] are evaluation photographs"),
    (lambda c: c["model"]["train"].update(photos=["nosuch"]), "unknown photos"),
    (lambda c: c["model"].update(resolution=64), "trained at model.train.size = 32"),
    (lambda c: c["model"]["train"].update(channels=[16, 32, 60]), "multiples of model.train.norm_groups"),
    (lambda c: c["model"].update(repo_id="google/ddpm-cifar10-32", revision="0" * 40),
     "model.repo_id: the pixel model is trained by the workflow .* or fetched .*, not both"),
])
def test_a_bad_pixel_config_names_its_key(change, message):
    config = load_config("demo-learned.yaml")
    change(config)
    with pytest.raises(ConfigError, match=message):
        prepare(config, ROOT / "config" / "schema.yaml")


def test_train_settings_belong_to_the_pixel_model():
    config = load_config("ddpm-cifar10.yaml")
    prepare(config, ROOT / "config" / "schema.yaml")
    config["model"].pop("repo_id")
    with pytest.raises(ConfigError, match=r"model.repo_id: .* set repo_id and revision \(or train it: model.train\)"):
        prepare(config, ROOT / "config" / "schema.yaml")
    demo = load_config("demo.yaml")
    demo["model"]["train"] = load_config("demo-learned.yaml")["model"]["train"]
    with pytest.raises(ConfigError, match="model.train: .* a gaussian_mixture model is not trained by the workflow"):
        prepare(demo, ROOT / "config" / "schema.yaml")

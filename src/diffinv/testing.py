"""Test helpers: tiny Stable Diffusion, SDXL, SD3, FLUX.1 and pixel-UNet folders with **random weights**, built from
config.

For plumbing tests and benchmarks only; nothing it produces means anything about image quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .schedule import STABLE_DIFFUSION_SCHEDULER_CONFIG

# The random tiny VAE's latent means have std ~0.14 on uniform images; this factor brings them to
# about 1, as SD's 0.18215 does for its VAE, so round-off relative to the latent is SD-like.
SCALING_FACTOR = 7.0


def _byte_symbols() -> list[str]:
    """The printable stand-ins CLIP's byte-level BPE uses for the 256 byte values (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tiny_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer whose vocabulary is the bytes (and bytes ending a word) plus a few merges."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    merges = ["t h", "th e</w>", "o f</w>", "a n", "an d</w>"]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 16, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))


def write_tiny_stable_diffusion(folder: str | Path, seed: int = 0) -> Path:
    """Write a diffusers-layout folder (unet, vae, text_encoder, tokenizer, scheduler) of random tiny parts."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=16, scaling_factor=SCALING_FACTOR)
    write_tiny_tokenizer(folder / "tokenizer")
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1))
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text.save_pretrained(folder / "text_encoder", safe_serialization=True)
    config = {k: v for k, v in STABLE_DIFFUSION_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    DDIMScheduler.from_config(config).save_pretrained(folder / "scheduler")
    return folder


def write_tiny_t5_tokenizer(folder: Path, max_length: int = 16) -> None:
    """A T5 (Unigram) tokenizer over single characters, saved as tokenizer.json as the Hub's T5 tokenizers are."""
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokenizer = T5TokenizerFast(vocab=[(p, 0.0 if i < 3 else -1.0 - 0.01 * i) for i, p in enumerate(pieces)],
                                extra_ids=0, model_max_length=max_length)
    tokenizer.save_pretrained(folder)


def _tiny_clip(vocab_size: int, hidden: int, projection: int | None = None):
    """A two-layer CLIP text encoder (with a projection head if ``projection``), 16 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                            **({"projection_dim": projection} if projection else {}))
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _tiny_t5(folder: Path, d_model: int):
    """T5 v1.1-style encoder (gated GELU), one layer, over :func:`write_tiny_t5_tokenizer`'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    vocab_size = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _tiny_vae(latent_channels: int, scaling_factor: float, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    flow = shift_factor is not None  # the SD3 / FLUX VAE: no quant convs, a shift
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=16, scaling_factor=scaling_factor, shift_factor=shift_factor, force_upcast=True,
        use_quant_conv=not flow, use_post_quant_conv=not flow)


def _save(folder: Path, parts: dict, pipeline: str, **pipeline_config) -> Path:
    for name, part in parts.items():
        part.save_pretrained(folder / name, **({"safe_serialization": True} if hasattr(part, "state_dict") else {}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, **pipeline_config}))
    return folder


# The 16-channel tiny VAEs' factors: arbitrary but not 1 and 0, so that a test sees both applied.
FLOW_SCALING_FACTOR, FLOW_SHIFT_FACTOR = 3.0, 0.03


def write_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """An SDXL folder: a UNet with added text/time conditions, CLIP + CLIP with projection, VAE, tokenizers."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    for name in ("tokenizer", "tokenizer_2"):
        write_tiny_tokenizer(folder / name)
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=4,
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8)
    config = {k: v for k, v in STABLE_DIFFUSION_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    config.update(timestep_spacing="leading", prediction_type="epsilon")  # as SDXL base's scheduler config
    return _save(folder, {"unet": unet, "vae": _tiny_vae(4, SCALING_FACTOR), "text_encoder": _tiny_clip(vocab_size, 8),
                          "text_encoder_2": _tiny_clip(vocab_size, 8, projection=8),
                          "scheduler": EulerDiscreteScheduler.from_config(config)},
                 "StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True)


def write_tiny_sd3(folder: str | Path, seed: int = 0, *, sd35: bool = False) -> Path:
    """An SD3 folder (``sd35``: with SD3.5's dual-attention layer and QK RMS norm): transformer, 16-channel
    VAE with scaling and shift, CLIP-L- and CLIP-G-like encoders with projections, T5, flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    for name in ("tokenizer", "tokenizer_2"):
        write_tiny_tokenizer(folder / name)
    write_tiny_t5_tokenizer(folder / "tokenizer_3")
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=8 + 16,
        pos_embed_max_size=8, **({"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if sd35 else {}))
    return _save(folder, {"transformer": transformer,
                          "vae": _tiny_vae(16, FLOW_SCALING_FACTOR, FLOW_SHIFT_FACTOR),
                          "text_encoder": _tiny_clip(vocab_size, 8, projection=8),
                          "text_encoder_2": _tiny_clip(vocab_size, 16, projection=16),
                          "text_encoder_3": _tiny_t5(folder / "tokenizer_3", 32),
                          "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)},
                 "StableDiffusion3Pipeline")


def write_tiny_flux(folder: str | Path, seed: int = 0, *, guidance_embeds: bool = True) -> Path:
    """A FLUX.1 folder (``guidance_embeds=False``: schnell-like): transformer on packed 2x2 latents with a
    guidance embedding, 16-channel VAE with scaling and shift, CLIP, T5, FLUX.1-dev's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    write_tiny_tokenizer(folder / "tokenizer")
    write_tiny_t5_tokenizer(folder / "tokenizer_2")
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return _save(folder, {"transformer": transformer,
                          "vae": _tiny_vae(16, FLOW_SCALING_FACTOR, -FLOW_SHIFT_FACTOR),
                          "text_encoder": _tiny_clip(vocab_size, 16),
                          "text_encoder_2": _tiny_t5(folder / "tokenizer_2", 32), "scheduler": scheduler},
                 "FluxPipeline")


# The public DDPMs' scheduler config (google/ddpm-cifar10-32's scheduler_config.json as public code quotes it):
# linear betas, DDPMScheduler keys DDIM does not take.
DDPM_SCHEDULER_CONFIG = {"_class_name": "DDPMScheduler", "beta_start": 0.0001, "beta_end": 0.02,
                         "beta_schedule": "linear", "num_train_timesteps": 1000, "clip_sample": True,
                         "variance_type": "fixed_large", "trained_betas": None}


def write_tiny_pixel(folder: str | Path, seed: int = 0, *, layout: str = "pipeline",
                     prediction_type: str = "epsilon") -> Path:
    """A pixel-space ``UNet2DModel`` (16 px, two levels, attention at 8 px). ``layout="pipeline"``: the folder
    :func:`diffinv.workflow.training.save_pipeline` writes (``unet/``, ``scheduler/``, SD's schedule as a DDIM config);
    ``"root"``: the public DDPMs' (``config.json``, weights and a DDPM ``scheduler_config.json`` at the top)."""
    from .workflow.training import build_unet, save_pipeline

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = build_unet(16, (8, 16), 1, True, 4)
    if layout == "pipeline":
        save_pipeline(folder, unet)
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config,
                                                                                "prediction_type": prediction_type}))
        return folder
    if layout != "root":
        raise ValueError(f"layout must be 'pipeline' or 'root', got {layout!r}")
    unet.save_pretrained(folder, safe_serialization=True)
    (folder / "scheduler_config.json").write_text(json.dumps({**DDPM_SCHEDULER_CONFIG,
                                                              "prediction_type": prediction_type}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "scheduler": [
        "diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}))
    return folder


TINY_WRITERS = {"stable_diffusion": write_tiny_stable_diffusion, "sdxl": write_tiny_sdxl, "sd3": write_tiny_sd3,
                "flux": write_tiny_flux, "pixel": write_tiny_pixel}


def model_spec(model, resolution: int):
    """The :class:`~diffinv.workflow.config.ModelSpec` of a model built in a test or benchmark."""
    from .workflow.config import ModelSpec
    from .models import GaussianMixtureDenoiser

    kind = ("gaussian_mixture" if isinstance(model, GaussianMixtureDenoiser)
            else getattr(model, "kind", "stable_diffusion"))
    from .workflow.throughput import dtype_name

    return ModelSpec(kind, dtype_name(model.dtype), str(model.device), resolution)


def shard_rows(model, run, items, *, images_dir, resolution: int, dataset: str = "t", qualitative: int = 0,
               save_latents: bool = False, batch_size: int = 1, prompt: str = "caption", quantize: bool = True,
               **kwargs):
    """``run_shard`` with a job built from the test's model and settings (no LPIPS)."""
    from .workflow.config import InvertJob
    from .workflow.runs import run_shard

    job = InvertJob(run, dataset, model_spec(model, resolution), prompt, qualitative=qualitative,
                    save_latents=save_latents, batch_size=batch_size, quantize=quantize)
    return run_shard(model, job, items, images_dir=images_dir, **kwargs)

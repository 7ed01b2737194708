"""Test helpers: a tiny Stable Diffusion folder with **random weights**, built from config.

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


def model_spec(model, resolution: int):
    """The :class:`~diffinv.config.ModelSpec` of a model built in a test or benchmark."""
    from .config import ModelSpec
    from .models import GaussianMixtureDenoiser

    kind = "gaussian_mixture" if isinstance(model, GaussianMixtureDenoiser) else "stable_diffusion"
    return ModelSpec(kind, str(model.dtype).removeprefix("torch."), str(model.device), resolution)


def shard_rows(model, run, items, *, images_dir, resolution: int, dataset: str = "t", qualitative: int = 0,
               save_latents: bool = False, batch_size: int = 1, prompt: str = "caption", **kwargs):
    """``run_shard`` with a job built from the test's model and settings (no LPIPS)."""
    from .config import InvertJob
    from .runs import run_shard

    job = InvertJob(run, dataset, model_spec(model, resolution), prompt, qualitative=qualitative,
                    save_latents=save_latents, batch_size=batch_size)
    return run_shard(model, job, items, images_dir=images_dir, **kwargs)

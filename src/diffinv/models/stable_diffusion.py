"""Stable Diffusion (diffusers components) behind the model protocol."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .base import Conditioning, DiffusionModel, Prompt

SD_V1_4 = "CompVis/stable-diffusion-v1-4"
# The commit public mirrors of the Hub cache resolve `main` to; not yet confirmed online from this project
# (docs/models.md, "Pinned revisions").
SD_V1_4_REVISION = "133a221b8aa7292a167afc5127cb63fb5005638b"


class StableDiffusionBackend(DiffusionModel):
    """UNet + VAE + CLIP text encoder; latents are ``vae.encode(x).latent_dist.mean * scaling_factor``.

    The DDIM grid comes from the pipeline's scheduler config (leading spacing, ``steps_offset``,
    ``set_alpha_to_one=False`` for SD 1.x) with clipping off, via :class:`~diffinv.schedule.Schedule`.

    ``dtype`` is the networks' dtype; ``latent_dtype`` (default: the same) that of the latents ``encode``
    returns, so a float16 network can run under float32 trajectory arithmetic: every method's update
    then runs in float32 and only the network's input is rounded. ``channels_last`` lays the UNet's
    activations out as NHWC (faster convolutions on recent GPUs); ``compile`` wraps the UNet in
    ``torch.compile`` (the first calls pay the compilation).
    """

    def __init__(self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any,
                 scheduler_config: dict[str, Any], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, latent_dtype: torch.dtype | None = None,
                 channels_last: bool = False, compile: bool = False) -> None:
        super().__init__()
        self.device, self.dtype = torch.device(device), dtype
        self._latent_dtype = latent_dtype or dtype
        parts = [unet, vae, text_encoder]
        for part in parts:  # load with the dtype already set: casting here is only for parts built in memory
            part.to(self.device, *(() if part.dtype == dtype else (dtype,))).eval().requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        self.unet, self.vae, self.text_encoder = parts
        if compile:
            self.unet = torch.compile(unet)
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self._prompt_cache: dict[str, Tensor] = {}

    @property
    def latent_dtype(self) -> torch.dtype:
        return self._latent_dtype

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = SD_V1_4, *, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        local_files_only: bool = False, **options: Any) -> "StableDiffusionBackend":
        """Load from a Hub id at ``revision`` (cache only unless downloads are allowed) or a local folder.

        Only safetensors weights are read. The default revision is pinned for :data:`SD_V1_4`.
        ``options``: ``latent_dtype``, ``channels_last``, ``compile`` (see the class).
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        local = os.path.isdir(source)
        if not local and revision is None and str(source) == SD_V1_4:
            revision = SD_V1_4_REVISION
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        common = {"revision": None if local else revision, "local_files_only": local_files_only or local}
        weights = {**common, "use_safetensors": True}
        try:
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **weights)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **weights)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **weights)
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
            scheduler_config = DDIMScheduler.load_config(source, subfolder="scheduler", **common)
        except (OSError, EnvironmentError) as exc:
            raise OSError(f"cannot load Stable Diffusion from {source!s} (revision {revision}): {exc}") from exc
        return cls(unet, vae, text_encoder, tokenizer, scheduler_config, device=device, dtype=dtype, **options)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    def forward(self, z: Tensor, timestep: int, embedding: Tensor | None) -> Tensor:
        t = torch.tensor(timestep, device=self.device)
        x = z.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.unet(x, t, encoder_hidden_states=embedding).sample
        return out.to(z.dtype)  # the caller's dtype: the trajectory's arithmetic stays in it

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        posterior = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return (posterior.mean * self.latent_scale).to(self.latent_dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        images = self.vae.decode(latents.to(self.device, self.dtype) / self.latent_scale).sample
        return images.clamp(-1, 1)

    @torch.no_grad()
    def embed(self, text: str) -> Tensor:
        if text not in self._prompt_cache:
            ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            self._prompt_cache[text] = self.text_encoder(ids)[0][0]
        return self._prompt_cache[text]

    def condition(self, prompt: Prompt, batch_size: int) -> Conditioning:
        prompts = [prompt or ""] * batch_size if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch_size:
            raise ValueError(f"{len(prompts)} prompts for a batch of {batch_size} images")
        uncond = self.embed("")
        return Conditioning(torch.stack([self.embed(p) for p in prompts]),
                            uncond.expand(batch_size, *uncond.shape))

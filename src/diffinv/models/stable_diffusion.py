"""Stable Diffusion 1.x and 2.x (diffusers components) behind the model protocol."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .latent import Components, LatentDiffusionBackend

SD_V1_4 = "CompVis/stable-diffusion-v1-4"
# The commit public mirrors of the Hub cache resolve `main` to; not yet confirmed online from this project
# (docs/models.md, "Pinned revisions").
SD_V1_4_REVISION = "133a221b8aa7292a167afc5127cb63fb5005638b"


class StableDiffusionBackend(LatentDiffusionBackend):
    """UNet + VAE + CLIP text encoder; latents are ``vae.encode(x).latent_dist.mean * scaling_factor``.

    As in diffusers' ``StableDiffusionPipeline``: the prompt embedding is CLIP's last hidden state, the
    unconditional half of a guided pass the empty prompt's, and the VAE runs in the networks' dtype (the SD
    pipeline does not upcast it). The DDIM grid comes from the pipeline's scheduler config (leading spacing,
    ``steps_offset``, ``set_alpha_to_one=False`` for SD 1.x) with clipping off, via
    :class:`~diffinv.schedule.Schedule`. ``channels_last`` lays the UNet's activations out as NHWC (faster
    convolutions on recent GPUs); the other options are the base class's.
    """

    kind = "stable_diffusion"
    prediction_type = "epsilon"
    network_name = "unet"
    image_multiple = 8  # the VAE's factor
    hub = True
    options = ("latent_dtype", "channels_last", "compile", "local_files_only")

    def __init__(self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler_config: dict[str, Any], *,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32, **options: Any) -> None:
        super().__init__(unet, vae, {"text_encoder": text_encoder}, {"tokenizer": tokenizer}, scheduler_config,
                         dtype=dtype, vae_dtype=dtype, **options)
        self.channels_last = channels_last
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        self.text_encoder, self.tokenizer = text_encoder, tokenizer

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = SD_V1_4, *, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        local_files_only: bool = False, **options: Any) -> "StableDiffusionBackend":
        """Load from a Hub id at ``revision`` (cache only unless downloads are allowed) or a local folder, safetensors
        only; the default revision is pinned for :data:`SD_V1_4`. ``options``: ``latent_dtype``, ``channels_last``,
        ``compile``."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        parts, device, dtype = Components.open(source, revision, (SD_V1_4, SD_V1_4_REVISION), device, dtype,
                                               torch.float16, local_files_only)
        return cls(parts.network(UNet2DConditionModel, "unet"), parts.network(AutoencoderKL, "vae"),
                   parts.text_encoder(CLIPTextModel, "text_encoder"), parts.tokenizer(CLIPTokenizer, "tokenizer"),
                   parts.scheduler_config(DDIMScheduler), device=device, dtype=dtype, **options)

    def forward(self, z: Tensor, timestep: int, embedding: Tensor | None) -> Tensor:
        t = torch.tensor(timestep, device=self.device)
        x = z.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.network(x, t, encoder_hidden_states=embedding).sample
        return out.to(z.dtype)  # the caller's dtype: the trajectory's arithmetic stays in it

    def embed_text(self, text: str) -> Tensor:
        return self.text_encoders["text_encoder"](self.tokens("tokenizer", text))[0][0]

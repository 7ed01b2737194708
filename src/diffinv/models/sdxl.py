"""Stable Diffusion XL (diffusers components) behind the model protocol."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .base import Embedding
from .latent import Components, LatentDiffusionBackend

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
# The commit public caches hold for SDXL base 1.0 (many snapshot paths in public code); not yet confirmed
# online from this project, see README, "Pins".
SDXL_BASE_REVISION = "462165984030d82259a11f4367a4eed129e94a7b"


class StableDiffusionXLBackend(LatentDiffusionBackend):
    """SDXL: a UNet with added conditions, two CLIP text encoders and a VAE; noise prediction.

    As in diffusers' ``StableDiffusionXLPipeline``: the prompt embedding is both encoders' penultimate hidden
    states side by side, the pooled embedding is the second encoder's projection, and the UNet's added
    time ids are ``(H, W, 0, 0, H, W)`` of the image (original size = target size, no crop). With
    ``force_zeros_for_empty_prompt`` (model_index.json; true for SDXL base) the unconditional half of a
    guided pass is zeros, as the pipeline's default negative prompt is; a prompt "" is still encoded.
    The DDIM grid comes from the scheduler config (leading spacing, ``steps_offset=1``,
    ``set_alpha_to_one=False`` for SDXL base), exactly as for SD 1.x.

    The VAE runs in float32 when the networks run in float16 (see the base class), or load the
    fp16-fixed VAE (``madebyollin/sdxl-vae-fp16-fix``) with ``vae=`` in :meth:`from_pretrained`.
    ``channels_last`` lays the UNet's activations out as NHWC.
    """

    kind = "sdxl"
    prediction_type = "epsilon"
    network_name = "unet"
    image_multiple = 8
    hub = True
    options = ("latent_dtype", "vae_dtype", "channels_last", "compile", "resolution", "vae", "vae_revision",
               "local_files_only")

    def __init__(self, unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any, tokenizer: Any,
                 tokenizer_2: Any, scheduler_config: dict[str, Any], *, channels_last: bool = False,
                 **options: Any) -> None:
        super().__init__(unet, vae, {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2},
                         {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2}, scheduler_config, **options)
        self.channels_last = channels_last
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        self.zero_unconditional = bool(self.pipeline_config.get("force_zeros_for_empty_prompt", True))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = SDXL_BASE, *, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        local_files_only: bool = False, vae: str | os.PathLike | None = None,
                        vae_revision: str | None = None, **options: Any) -> "StableDiffusionXLBackend":
        """Load from a Hub id at ``revision`` or a local folder (safetensors only); the default revision is
        pinned for :data:`SDXL_BASE`. ``vae``: another VAE folder or Hub id (its root holds the VAE), e.g.
        the fp16-fixed one. ``options``: ``latent_dtype``, ``vae_dtype``, ``channels_last``, ``compile``,
        ``resolution`` (see the classes)."""
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        parts, device, dtype = Components.open(source, revision, (SDXL_BASE, SDXL_BASE_REVISION), device, dtype, torch.float16,
                                               local_files_only)
        if vae is None:
            vae_model = parts.network(AutoencoderKL, "vae")
        else:
            vae_model = Components(vae, vae_revision, dtype, local_files_only).network(AutoencoderKL, None)
        return cls(parts.network(UNet2DConditionModel, "unet"), vae_model,
                   parts.text_encoder(CLIPTextModel, "text_encoder"),
                   parts.text_encoder(CLIPTextModelWithProjection, "text_encoder_2"),
                   parts.tokenizer(CLIPTokenizer, "tokenizer"), parts.tokenizer(CLIPTokenizer, "tokenizer_2"),
                   parts.scheduler_config(EulerDiscreteScheduler), device=device, dtype=dtype,
                   pipeline_config=parts.pipeline_config(), **options)

    def forward(self, z: Tensor, timestep: int, embedding: Embedding) -> Tensor:
        x = z.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h, w = (side * self.vae_scale_factor for side in z.shape[-2:])
        time_ids = torch.tensor([h, w, 0, 0, h, w], device=self.device, dtype=self.dtype).expand(z.shape[0], 6)
        out = self.network(x, torch.tensor(timestep, device=self.device),
                           encoder_hidden_states=embedding["prompt_embeds"],
                           added_cond_kwargs={"text_embeds": embedding["pooled"], "time_ids": time_ids}).sample
        return out.to(z.dtype)

    def embed_text(self, text: str) -> dict[str, Tensor]:
        hidden, pooled = [], None
        for encoder, tokenizer in [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]:
            out = self.text_encoders[encoder](self.tokens(tokenizer, text), output_hidden_states=True)
            hidden.append(out.hidden_states[-2][0])
            pooled = out[0][0]  # the second encoder's projected embedding (CLIPTextModelWithProjection)
        return {"prompt_embeds": torch.cat(hidden, -1).to(self.dtype), "pooled": pooled.to(self.dtype)}

    def unconditional(self) -> dict[str, Tensor]:
        empty = self.embed("")
        return {k: torch.zeros_like(v) for k, v in empty.items()} if self.zero_unconditional else empty

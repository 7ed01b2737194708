"""Stable Diffusion 3 and 3.5 (diffusers components) behind the model protocol: a rectified flow."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Embedding
from .latent import Components, LatentDiffusionBackend

SD3_MEDIUM = "stabilityai/stable-diffusion-3-medium-diffusers"
# The commit public caches hold for SD3 medium (diffusers layout); not yet confirmed online from this
# project, see README, "Pins". Gated: accept the licence on the model page and use your own token.
SD3_MEDIUM_REVISION = "ea42f8cef0f178587cf766dc8129abd379c90671"


class StableDiffusion3Backend(LatentDiffusionBackend):
    """SD3 / SD3.5: ``SD3Transformer2DModel``, the 16-channel VAE, two CLIP encoders and T5; velocity output.

    As in diffusers' ``StableDiffusion3Pipeline``: the prompt embedding is both CLIP encoders'
    penultimate hidden states side by side, zero-padded to T5's width, followed along the sequence by
    T5's last hidden state (``max_sequence_length`` tokens, 256 by default); the pooled embedding is both
    CLIP projections side by side. The unconditional half of a guided pass is the empty prompt's
    embedding (the pipeline's default negative prompt ""). Classifier-free guidance is the protocol's:
    one batched uncond + cond pass, 2 NFE.

    :meth:`forward` takes ``timestep = sigma * num_train_timesteps`` (the values of diffusers'
    ``FlowMatchEulerDiscreteScheduler.timesteps``, passed to the transformer as the pipeline passes them)
    and returns the velocity ``v = noise - x`` in the latent layout.
    """

    kind = "sd3"
    prediction_type = "flow"
    path = "flow"
    network_name = "transformer"
    image_multiple = 16  # the VAE's 8 times the transformer's 2x2 patches
    hub = True
    options = ("latent_dtype", "vae_dtype", "compile", "resolution", "max_sequence_length", "local_files_only")

    def __init__(self, transformer: Any, vae: Any, text_encoder: Any, text_encoder_2: Any, text_encoder_3: Any,
                 tokenizer: Any, tokenizer_2: Any, tokenizer_3: Any, scheduler_config: dict[str, Any], *,
                 max_sequence_length: int = 256, **options: Any) -> None:
        super().__init__(transformer, vae, {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
                                            "text_encoder_3": text_encoder_3},
                         {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "tokenizer_3": tokenizer_3},
                         scheduler_config, **options)
        self.max_sequence_length = min(max_sequence_length, tokenizer_3.model_max_length)

    @property
    def patch(self) -> int:  # type: ignore[override]
        return int(self.network.config.patch_size)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = SD3_MEDIUM, *, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        local_files_only: bool = False, **options: Any) -> "StableDiffusion3Backend":
        """Load from a Hub id at ``revision`` or a local folder (safetensors only); the default revision is
        pinned for :data:`SD3_MEDIUM`. SD3.5 repositories load the same way. ``options``: ``latent_dtype``,
        ``vae_dtype``, ``compile``, ``resolution``, ``max_sequence_length``."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        parts, device, dtype = Components.open(source, revision, (SD3_MEDIUM, SD3_MEDIUM_REVISION), device, dtype, torch.float16,
                                               local_files_only)
        return cls(parts.network(SD3Transformer2DModel, "transformer"), parts.network(AutoencoderKL, "vae"),
                   parts.text_encoder(CLIPTextModelWithProjection, "text_encoder"),
                   parts.text_encoder(CLIPTextModelWithProjection, "text_encoder_2"),
                   parts.text_encoder(T5EncoderModel, "text_encoder_3"),
                   parts.tokenizer(CLIPTokenizer, "tokenizer"), parts.tokenizer(CLIPTokenizer, "tokenizer_2"),
                   parts.tokenizer(T5TokenizerFast, "tokenizer_3"),
                   parts.scheduler_config(FlowMatchEulerDiscreteScheduler), device=device, dtype=dtype,
                   pipeline_config=parts.pipeline_config(), **options)

    def schedule_options(self, latent_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        # used by the schedule only if the scheduler config shifts dynamically (some SD3.5 configs)
        return {"image_seq_len": self.image_seq_len(latent_shape)}

    def forward(self, z: Tensor, timestep: float, embedding: Embedding) -> Tensor:
        t = torch.full((z.shape[0],), float(timestep), device=self.device, dtype=torch.float32)
        out = self.network(hidden_states=z.to(self.device, self.dtype), timestep=t,
                           encoder_hidden_states=embedding["prompt_embeds"],
                           pooled_projections=embedding["pooled"]).sample
        return out.to(z.dtype)

    def embed_text(self, text: str) -> dict[str, Tensor]:
        hidden, pooled = [], []
        for encoder, tokenizer in [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]:
            out = self.text_encoders[encoder](self.tokens(tokenizer, text), output_hidden_states=True)
            hidden.append(out.hidden_states[-2][0].to(self.dtype))
            pooled.append(out[0][0].to(self.dtype))
        t5 = self.text_encoders["text_encoder_3"](self.tokens("tokenizer_3", text, self.max_sequence_length))[0][0]
        t5 = t5.to(self.dtype)
        clip = torch.cat(hidden, -1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"prompt_embeds": torch.cat([clip, t5], 0), "pooled": torch.cat(pooled, -1)}

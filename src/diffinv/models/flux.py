"""FLUX.1 (diffusers components) behind the model protocol: a guidance-distilled rectified flow."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .base import Conditioning, Embedding
from .latent import Components, LatentDiffusionBackend

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
# The commit public caches hold for FLUX.1-dev (many snapshot paths in public code); not yet confirmed
# online from this project, see README, "Pins". Gated: accept the licence on the model page and use your
# own token.
FLUX_DEV_REVISION = "3de623fc3c33e44ffbe2bad470d0f45bccf2eb21"


def pack(latents: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2x2 patches as tokens (diffusers' ``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """The inverse of :func:`pack` for a latent of height ``h`` and width ``w``."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device: torch.device) -> Tensor:
    """Each token's (0, row, column) for the rotary embedding (``FluxPipeline._prepare_latent_image_ids``)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device)


class FluxBackend(LatentDiffusionBackend):
    """FLUX.1: ``FluxTransformer2DModel`` on packed 2x2 latents, CLIP + T5, the 16-channel VAE; velocity output.

    As in diffusers' ``FluxPipeline``: the transformer reads T5's last hidden state (``max_sequence_length``
    tokens, 512 for FLUX.1-dev) and CLIP's pooled output; text ids are zeros and image ids each token's row
    and column. Methods see unpacked latents (B, 16, h, w); :meth:`forward` packs them and unpacks the
    velocity ``v = noise - x``. ``timestep`` is ``sigma * 1000`` as for SD3 (the transformer gets
    ``timestep / 1000``, as from the pipeline).

    Guidance: FLUX.1-dev is guidance-distilled. The guidance scale ``w`` is an input of the transformer
    (its guidance embedding), so a guided prediction is one pass, 1 NFE, for any ``w``; there is no
    unconditional pass and no unconditional embedding. FLUX.1-schnell has no guidance input and accepts
    only ``w == 1``. The schedule's shift depends on the image's token count (:meth:`schedule_options`).
    """

    kind = "flux"
    prediction_type = "flow"
    path = "flow"
    network_name = "transformer"
    patch = 2  # the 2x2 packing
    image_multiple = 16
    guidance = "distilled"
    hub = True
    options = ("latent_dtype", "vae_dtype", "compile", "resolution", "max_sequence_length", "local_files_only")

    def __init__(self, transformer: Any, vae: Any, text_encoder: Any, text_encoder_2: Any, tokenizer: Any,
                 tokenizer_2: Any, scheduler_config: dict[str, Any], *, max_sequence_length: int = 512,
                 **options: Any) -> None:
        super().__init__(transformer, vae, {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2},
                         {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2}, scheduler_config, **options)
        self.max_sequence_length = min(max_sequence_length, tokenizer_2.model_max_length)
        self.guidance_embeds = bool(self.network.config.guidance_embeds)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = FLUX_DEV, *, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        local_files_only: bool = False, **options: Any) -> "FluxBackend":
        """Load from a Hub id at ``revision`` or a local folder (safetensors only); the default revision is
        pinned for :data:`FLUX_DEV`. Default dtype on CUDA: bfloat16 (FLUX.1's own). ``options``:
        ``latent_dtype``, ``vae_dtype``, ``compile``, ``resolution``, ``max_sequence_length``."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        parts, device, dtype = Components.open(source, revision, (FLUX_DEV, FLUX_DEV_REVISION), device, dtype, torch.bfloat16,
                                               local_files_only)
        return cls(parts.network(FluxTransformer2DModel, "transformer"), parts.network(AutoencoderKL, "vae"),
                   parts.text_encoder(CLIPTextModel, "text_encoder"),
                   parts.text_encoder(T5EncoderModel, "text_encoder_2"),
                   parts.tokenizer(CLIPTokenizer, "tokenizer"), parts.tokenizer(T5TokenizerFast, "tokenizer_2"),
                   parts.scheduler_config(FlowMatchEulerDiscreteScheduler), device=device, dtype=dtype,
                   pipeline_config=parts.pipeline_config(), **options)

    def schedule_options(self, latent_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        """``FluxPipeline``'s grid: ``sigmas = linspace(1, 1/N, N)`` shifted by ``mu`` of the image's token
        count, (h/2)(w/2) of the latent (default: at :attr:`resolution`)."""
        return {"image_seq_len": self.image_seq_len(latent_shape), "sigmas": "flux"}

    @torch.no_grad()
    def guided(self, z: Tensor, timestep: float, cond: Conditioning, guidance: float = 1.0) -> Tensor:
        """One pass with ``guidance`` in the transformer's guidance embedding: 1 NFE whatever ``w``."""
        self.nfe += 1
        return self.forward(z, timestep, cond.cond, guidance=guidance)

    def forward(self, z: Tensor, timestep: float, embedding: Embedding, guidance: float = 1.0) -> Tensor:
        b, _, h, w = z.shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX packs 2x2 latent patches: latent sides must be even, got {h}x{w}")
        if self.guidance_embeds:
            scale = torch.full((b,), float(guidance), device=self.device, dtype=torch.float32)
        elif guidance != 1.0:
            raise ValueError(f"this FLUX model has no guidance input (FLUX.1-schnell?): use guidance 1, not {guidance}")
        else:
            scale = None
        prompt = embedding["prompt_embeds"]
        out = self.network(hidden_states=pack(z.to(self.device, self.dtype)),
                           timestep=torch.full((b,), float(timestep) / 1000, device=self.device, dtype=torch.float32),
                           guidance=scale, pooled_projections=embedding["pooled"], encoder_hidden_states=prompt,
                           txt_ids=torch.zeros(prompt.shape[1], 3, device=self.device),
                           img_ids=image_ids(h, w, self.device)).sample
        return unpack(out, h, w).to(z.dtype)

    def embed_text(self, text: str) -> dict[str, Tensor]:
        pooled = self.text_encoders["text_encoder"](self.tokens("tokenizer", text)).pooler_output[0]
        t5 = self.text_encoders["text_encoder_2"](self.tokens("tokenizer_2", text, self.max_sequence_length))[0][0]
        return {"prompt_embeds": t5.to(self.dtype), "pooled": pooled.to(self.dtype)}

    def unconditional(self) -> None:
        return None  # guidance is an input of the network: no unconditional pass

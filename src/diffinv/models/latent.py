"""What the SDXL, SD3 and FLUX.1 backends share: loading a diffusers folder, VAE latents, prompt embeddings.

Each backend is one network (a UNet or a transformer), a VAE and its text encoders, loaded component by
component from a diffusers folder (a Hub snapshot at a pinned commit, or any local folder) with
safetensors only, as :class:`~diffinv.models.stable_diffusion.StableDiffusionBackend` does for SD 1.x.

Latents are ``(vae.encode(x).latent_dist.mean - shift_factor) * scaling_factor`` (the shift is 0 for
SDXL, set for the 16-channel SD3 and FLUX VAEs), always shaped (B, C, h, w): a backend that feeds its
network another layout (FLUX's packed 2x2 patches) converts inside :meth:`forward`. A prompt's embedding
is a dict of tensors (see :data:`~diffinv.models.base.Embedding`), computed once per text and cached.
"""

from __future__ import annotations

import abc
import os
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from .base import Conditioning, DiffusionModel, Prompt


class Components:
    """Loads the parts of one diffusers folder or Hub repository; a failure names the source and revision."""

    def __init__(self, source: str | os.PathLike, revision: str | None, dtype: torch.dtype,
                 local_files_only: bool) -> None:
        self.source = source
        local = os.path.isdir(source)
        self.revision = None if local else revision
        self.common = {"revision": self.revision, "local_files_only": local_files_only or local}
        self.dtype = dtype

    @classmethod
    def open(cls, source: str | os.PathLike, revision: str | None, pinned: tuple[str, str],
             device: str | torch.device | None, dtype: torch.dtype | None, cuda_dtype: torch.dtype,
             local_files_only: bool) -> tuple["Components", torch.device, torch.dtype]:
        """The parts of ``source`` at ``revision`` (``pinned`` = (repo id, its pinned revision) when None),
        with the device (CUDA when present) and network dtype (``cuda_dtype`` there, float32 on a CPU)."""
        if revision is None and str(source) == pinned[0]:
            revision = pinned[1]
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (cuda_dtype if device.type == "cuda" else torch.float32)
        return cls(source, revision, dtype, local_files_only), device, dtype

    def _fail(self, exc: Exception) -> OSError:
        return OSError(f"cannot load {self.source!s} (revision {self.revision}): {exc}")

    def network(self, cls: Any, subfolder: str | None, dtype: torch.dtype | None = None) -> Any:
        """A diffusers model (UNet, transformer, VAE) in ``dtype`` (default: the networks')."""
        try:
            return cls.from_pretrained(self.source, subfolder=subfolder, torch_dtype=dtype or self.dtype,
                                       use_safetensors=True, **self.common)
        except (OSError, EnvironmentError) as exc:
            raise self._fail(exc) from exc

    def text_encoder(self, cls: Any, subfolder: str) -> Any:
        try:
            return cls.from_pretrained(self.source, subfolder=subfolder, dtype=self.dtype, use_safetensors=True,
                                       **self.common)
        except (OSError, EnvironmentError) as exc:
            raise self._fail(exc) from exc

    def tokenizer(self, cls: Any, subfolder: str) -> Any:
        try:
            return cls.from_pretrained(self.source, subfolder=subfolder, **self.common)
        except (OSError, EnvironmentError) as exc:
            raise self._fail(exc) from exc

    def scheduler_config(self, cls: Any, subfolder: str | None = "scheduler") -> dict[str, Any]:
        try:
            return dict(cls.load_config(self.source, subfolder=subfolder, **self.common))
        except (OSError, EnvironmentError) as exc:
            raise self._fail(exc) from exc

    def pipeline_config(self) -> dict[str, Any]:
        """``model_index.json`` (the pipeline's own settings), or {} if the folder has none."""
        from diffusers import DiffusionPipeline

        try:
            return dict(DiffusionPipeline.load_config(self.source, **self.common))
        except (OSError, EnvironmentError):
            return {}


def prompt_list(prompt: Prompt, batch_size: int) -> list[str]:
    """One string per image: ``None`` is the empty prompt, one string serves every image."""
    prompts = [prompt or ""] * batch_size if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch_size:
        raise ValueError(f"{len(prompts)} prompts for a batch of {batch_size} images")
    return prompts


def stack_embeddings(rows: list[Tensor] | list[Mapping[str, Tensor]]) -> Tensor | dict[str, Tensor]:
    """One embedding per image along a new batch dimension (per key for dicts)."""
    if isinstance(rows[0], Tensor):
        return torch.stack(rows)
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


class LatentDiffusionBackend(DiffusionModel):
    """Network + VAE + text encoders; subclasses define :meth:`forward`, :meth:`embed_text` and loading.

    ``dtype`` is the networks' (network and text encoders) dtype and ``latent_dtype`` (default: the same)
    that of the latents, in which every method's arithmetic runs. ``vae_dtype`` defaults to float32 when
    the networks run in float16 and the VAE's config sets ``force_upcast`` (the SDXL VAE overflows in
    float16, as diffusers' SDXL pipeline knows), else to ``dtype``. ``compile`` wraps the network in
    ``torch.compile``. ``resolution`` (pixels, square) is the image size a schedule is built for when a
    schedule depends on it (FLUX.1's resolution-dependent shift); default: the network's sample size.
    """

    kind: ClassVar[str]
    prediction_type: ClassVar[str] = "epsilon"
    network_name: ClassVar[str]  # "unet" or "transformer": the attribute the network is also known by
    patch: ClassVar[int] = 1  # the network's token side in latent pixels (2: SD3's patches, FLUX's packing)

    def __init__(self, network: Any, vae: Any, text_encoders: Mapping[str, Any], tokenizers: Mapping[str, Any],
                 scheduler_config: Mapping[str, Any], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, latent_dtype: torch.dtype | None = None,
                 vae_dtype: torch.dtype | None = None, compile: bool = False, resolution: int | None = None,
                 pipeline_config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.device, self.dtype = torch.device(device), dtype
        self._latent_dtype = latent_dtype or dtype
        upcast = dtype == torch.float16 and bool(vae.config.get("force_upcast", False))
        self.vae_dtype = vae_dtype or (torch.float32 if upcast else dtype)
        parts = [(network, dtype), (vae, self.vae_dtype), *((e, dtype) for e in text_encoders.values())]
        for part, part_dtype in parts:
            # parts loaded in their dtype are only moved (T5 keeps the float32 layers transformers chose for it)
            part.to(self.device, *(() if part.dtype == part_dtype else (part_dtype,))).eval().requires_grad_(False)
        self.network = torch.compile(network) if compile else network
        setattr(self, self.network_name, self.network)  # `model.unet` / `model.transformer`, as in diffusers
        self.vae = vae
        self.text_encoders = dict(text_encoders)
        self.tokenizers = dict(tokenizers)
        self.scheduler_config = dict(scheduler_config)
        self.pipeline_config = dict(pipeline_config or {})
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.default_resolution()
        self._prompt_cache: dict[str, Tensor | dict[str, Tensor]] = {}

    def default_resolution(self) -> int:
        return int(getattr(self.network.config, "sample_size", None) or 128) * self.vae_scale_factor

    @property
    def latent_dtype(self) -> torch.dtype:
        return self._latent_dtype

    # -- latents ---------------------------------------------------------------------------------
    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        return float(self.vae.config.get("shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1], (B, 3, H, W) with H, W multiples of :attr:`pixel_multiple`, to clean latents."""
        h, w = images.shape[-2:]
        if h % self.pixel_multiple or w % self.pixel_multiple:
            raise ValueError(f"{type(self).__name__} needs image sides that are multiples of {self.pixel_multiple}, "
                             f"got {h}x{w}")
        posterior = self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist
        return ((posterior.mean - self.latent_shift) * self.latent_scale).to(self.latent_dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z = latents.to(self.device, self.vae_dtype) / self.latent_scale + self.latent_shift
        return self.vae.decode(z).sample.clamp(-1, 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the network's patch (1 for a UNet)."""
        return self.vae_scale_factor * self.patch

    def image_seq_len(self, latent_shape: tuple[int, ...] | None = None) -> int:
        """The network's image tokens for a latent of ``latent_shape`` (default: at :attr:`resolution`)."""
        if latent_shape is None:
            h = w = self.resolution // self.vae_scale_factor
        else:
            h, w = latent_shape[-2:]
        return (h // self.patch) * (w // self.patch)

    # -- prompts -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def embed_text(self, text: str) -> Tensor | dict[str, Tensor]:
        """The text encoders' output for one prompt, without a batch dimension (a dict for several inputs)."""

    @torch.no_grad()
    def embed(self, text: str) -> Tensor | dict[str, Tensor]:
        if text not in self._prompt_cache:
            self._prompt_cache[text] = self.embed_text(text)
        return self._prompt_cache[text]

    def unconditional(self) -> Tensor | dict[str, Tensor] | None:
        """The embedding the guided pass's unconditional half uses: the empty prompt's."""
        return self.embed("")

    def condition(self, prompt: Prompt, batch_size: int) -> Conditioning:
        prompts = prompt_list(prompt, batch_size)
        cond = stack_embeddings([self.embed(p) for p in prompts])
        uncond = self.unconditional()
        return Conditioning(cond, None if uncond is None else stack_embeddings([uncond] * batch_size))

    def tokens(self, name: str, text: str, max_length: int | None = None) -> Tensor:
        """Token ids of ``text`` for tokenizer ``name``, padded to ``max_length`` (default: its maximum)."""
        tokenizer = self.tokenizers[name]
        ids = tokenizer([text], padding="max_length", max_length=max_length or tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return ids.to(self.device)

"""The model protocol every method runs on.

A model turns images into latents and back, turns prompts into a :class:`Conditioning`, and
predicts noise with classifier-free guidance. It counts network passes (NFE): every pass covers
the whole batch, so the counter is also the NFE of each image in it. A guided pass with ``w != 1``
is one batched call of uncond + cond and counts 2.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..schedule import Schedule

Prompt = str | Sequence[str] | None


@dataclass(frozen=True)
class Conditioning:
    """Per-image embeddings of the prompt and of the empty prompt (``None`` for unconditional models)."""

    cond: Tensor | None
    uncond: Tensor | None

    def __len__(self) -> int:
        return 0 if self.cond is None else self.cond.shape[0]


class DiffusionModel(abc.ABC):
    """Base of every backend: CFG and NFE counting live here, the network in :meth:`forward`."""

    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype  # the network's

    @property
    def latent_dtype(self) -> torch.dtype:
        """The dtype of the latents ``encode`` returns, in which every method's arithmetic runs."""
        return self.dtype

    def __init__(self) -> None:
        self.nfe = 0
        self._alphas_cumprod: Tensor | None = None

    # -- the network ---------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, z: Tensor, timestep: int, embedding: Tensor | None) -> Tensor:
        """One network pass on a batch: the noise prediction at ``timestep``."""

    @abc.abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1], shape (B, 3, H, W), to clean latents (level 0)."""

    @abc.abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Clean latents to images in [-1, 1]."""

    @abc.abstractmethod
    def condition(self, prompt: Prompt, batch_size: int) -> Conditioning:
        """Embeddings for ``prompt`` (one string for all, or one per image; None = empty prompt)."""

    # -- shared machinery ----------------------------------------------------------------------
    def schedule(self, num_steps: int) -> Schedule:
        return Schedule.from_scheduler_config(self.scheduler_config, num_steps)

    @property
    def alphas_cumprod(self) -> Tensor:
        """The training schedule's alpha-bar per timestep (float64), for checks and analytic models."""
        if self._alphas_cumprod is None:
            from diffusers import DDIMScheduler

            config = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
            self._alphas_cumprod = DDIMScheduler.from_config(config).alphas_cumprod.double()
        return self._alphas_cumprod

    def check_schedule(self, schedule: Schedule) -> None:
        """Refuse a schedule whose alpha-bar does not match this model's timesteps."""
        acp = self.alphas_cumprod
        for t, ab in zip(schedule.timesteps[1:], schedule.alpha_bar[1:]):
            if not 0 <= t < len(acp) or abs(float(acp[t]) - ab) > 1e-9:
                raise ValueError(f"schedule level with timestep {t} has alpha_bar {ab}, the model's is "
                                 f"{float(acp[t]) if 0 <= t < len(acp) else 'undefined'}")

    def as_conditioning(self, cond: "Conditioning | Prompt", batch_size: int) -> Conditioning:
        if isinstance(cond, Conditioning):
            if cond.cond is not None and len(cond) != batch_size:
                raise ValueError(f"conditioning has {len(cond)} rows for a batch of {batch_size}")
            return cond
        return self.condition(cond, batch_size)

    @torch.no_grad()
    def eps(self, z: Tensor, timestep: int, cond: Conditioning, guidance: float = 1.0) -> Tensor:
        """Guided noise prediction ``uncond + w * (cond - uncond)``; ``w == 1`` is one conditional pass."""
        if guidance == 1.0:
            self.nfe += 1
            return self.forward(z, timestep, cond.cond)
        self.nfe += 2
        embedding = None if cond.cond is None else torch.cat([cond.uncond, cond.cond])
        uncond, conditional = self.forward(torch.cat([z, z]), timestep, embedding).chunk(2)
        return uncond + guidance * (conditional - uncond)

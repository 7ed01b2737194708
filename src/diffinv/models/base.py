"""The model protocol every method runs on.

A model turns images into latents and back, turns prompts into a :class:`Conditioning`, and
predicts noise with classifier-free guidance. It counts network passes (NFE): every pass covers
the whole batch, so the counter is also the NFE of each image in it. A guided pass with ``w != 1``
is one batched call of uncond + cond and counts 2.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor

from ..algebra import Prediction
from ..schedule import Schedule

Prompt = str | Sequence[str] | None

# What a network's raw output can be (DiffusionModel.prediction_type), and the path each lives on.
PREDICTION_PATHS = {"epsilon": "vp", "v_prediction": "vp", "flow": "flow"}


# One embedding per image: a tensor, or for models with several text inputs a dict of tensors with the
# batch first (SDXL, SD3, FLUX: {"prompt_embeds", "pooled"}).
Embedding = Tensor | Mapping[str, Tensor] | None


def cat_embeddings(first: Embedding, second: Embedding) -> Embedding:
    """Two embeddings one after the other along the batch (per key for dicts)."""
    if first is None or isinstance(first, Tensor):
        return None if first is None else torch.cat([first, second])
    return {key: torch.cat([first[key], second[key]]) for key in first}


@dataclass(frozen=True)
class Conditioning:
    """Per-image embeddings of the prompt and of the empty prompt (``None`` for unconditional models)."""

    cond: Embedding
    uncond: Embedding

    def __len__(self) -> int:
        if self.cond is None:
            return 0
        first = self.cond if isinstance(self.cond, Tensor) else next(iter(self.cond.values()))
        return first.shape[0]

    def batched(self) -> Embedding:
        """uncond then cond, for one guided pass over ``cat([z, z])``."""
        return cat_embeddings(self.uncond, self.cond)


class DiffusionModel(abc.ABC):
    """Base of every backend: CFG, NFE counting and the noise prediction live here, the network in
    :meth:`forward`.

    ``prediction_type`` says what :meth:`forward` returns: ``"epsilon"`` the noise (a VP schedule from a
    DDIM-style scheduler config), ``"v_prediction"`` the VP velocity ``v = a eps - s x`` (Salimans & Ho
    2022, "Progressive distillation", Sec. 4; a DDIM-style config's ``prediction_type``), ``"flow"`` a
    rectified flow's velocity ``v = eps - x`` (a flow schedule from a ``FlowMatchEulerDiscreteScheduler``
    config). :meth:`eps` turns each into the noise prediction every method consumes.
    """

    prediction_type: ClassVar[str] = "epsilon"
    # True when the latent is the image itself (decode(encode(x)) is x): metrics against the model's own
    # round trip are then those against the input, and are not scored twice
    latent_is_image: ClassVar[bool] = False

    # What the backend is, read without loading it (the workflow's config checks, the NFE estimate, the loader):
    kind: ClassVar[str] = ""                      # its model.kind
    path: ClassVar[str | None] = "vp"             # "vp" or "flow"; None: chosen by the model's own scheduler config
    image_multiple: ClassVar[int | None] = None   # image sides must be multiples of this (None: no such rule)
    guidance: ClassVar[str] = "classifier_free"   # "distilled": the scale is a network input, one pass for any w;
                                                  # "none": unconditional, w = 1 only
    hub: ClassVar[bool] = False                   # its weights are a diffusers repository at a revision
    trainable: ClassVar[bool] = False             # the workflow can train it instead (model.train)
    options: ClassVar[tuple[str, ...]] = ()       # the keywords :meth:`load` takes beyond device and dtype
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

    @classmethod
    def load(cls, weights: Any, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             **options: Any) -> "DiffusionModel":
        """The backend from its weights (a diffusers folder or Hub id, or a fitted file): see
        :func:`diffinv.models.load`, which checks ``options`` against :attr:`options` first."""
        return cls.from_pretrained(weights, device=device, dtype=dtype, **options)

    # -- the network ---------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, z: Tensor, timestep: float, embedding: Embedding) -> Tensor:
        """One network pass on a batch: its raw output at ``timestep`` (the schedule's label: an integer
        timestep, or ``sigma * num_train_timesteps`` for a flow), the noise or the velocity by
        :attr:`prediction_type`."""

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
    def schedule(self, num_steps: int, latent_shape: tuple[int, ...] | None = None) -> Schedule:
        """The grid of this model's scheduler config for latents of ``latent_shape``."""
        return Schedule.from_scheduler_config(self.scheduler_config, num_steps, **self.schedule_options(latent_shape))

    def schedule_options(self, latent_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        """Keywords of :meth:`Schedule.from_scheduler_config` beyond the config: a flow backend's
        ``image_seq_len`` (for a dynamically shifted config) and ``sigmas`` (its pipeline's grid)."""
        return {}

    @property
    def alphas_cumprod(self) -> Tensor:
        """The training schedule's alpha-bar per timestep (float64), for checks and analytic models."""
        if self._alphas_cumprod is None:
            from ..schedule import ddim_scheduler

            self._alphas_cumprod = ddim_scheduler(self.scheduler_config).alphas_cumprod.double()
        return self._alphas_cumprod

    def check_schedule(self, schedule: Schedule) -> None:
        """Refuse a schedule of the other family, or whose alpha-bar (sigma) does not match its timesteps."""
        if self.prediction_type not in PREDICTION_PATHS:
            raise ValueError(f"prediction_type must be one of {sorted(PREDICTION_PATHS)}, got {self.prediction_type!r}")
        wanted = PREDICTION_PATHS[self.prediction_type]
        if schedule.path != wanted:
            raise ValueError(f"a {schedule.path} schedule for a model predicting {self.prediction_type}; "
                             f"it needs a {wanted} schedule (model.schedule(num_steps))")
        if schedule.path == "flow":
            train = self.scheduler_config.get("num_train_timesteps", 1000)
            for t, sigma in zip(schedule.timesteps[1:], schedule.sigmas[1:]):
                if abs(t - sigma * train) > 1e-6 * train:  # diffusers multiplies in float32
                    raise ValueError(f"flow schedule level with timestep {t} has sigma {sigma}; the model's "
                                     f"timestep for it is {sigma * train}")
            return
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
    def guided(self, z: Tensor, timestep: int, cond: Conditioning, guidance: float = 1.0) -> Tensor:
        """The network's raw output guided as ``uncond + w * (cond - uncond)``, counting NFE; ``w == 1`` is
        one conditional pass. A guidance-distilled model (FLUX.1-dev) overrides this with one pass."""
        if guidance == 1.0:
            self.nfe += 1
            return self.forward(z, timestep, cond.cond)
        self.nfe += 2
        uncond, conditional = self.forward(torch.cat([z, z]), timestep, cond.batched()).chunk(2)
        return uncond + guidance * (conditional - uncond)

    @torch.no_grad()
    def predict(self, z: Tensor, timestep: float, cond: Conditioning, guidance: float = 1.0, *,
                level: tuple[float, float] | None = None) -> Prediction:
        """The guided prediction at ``timestep`` (:class:`~diffinv.algebra.Prediction`), from :meth:`guided`'s raw
        output: the noise, and at a level with ``a = 0`` the data prediction too.

        ``level`` is ``(a, s)`` of the schedule level the call is made for (default: the training schedule's
        at ``timestep``; for a flow ``sigma = timestep / num_train_timesteps``). A VP velocity ``v = a eps - s x``
        gives ``eps = a v + s z`` (``a^2 + s^2 = 1``). A flow velocity ``v`` gives ``eps = z + a v``; at a level
        with ``a = 0`` (``sigma = 1``, where ``eps = z`` says nothing of the data) also ``x = z - s v``, which
        :mod:`diffinv.algebra` needs there.
        """
        out = self.guided(z, timestep, cond, guidance)
        if self.prediction_type == "epsilon":
            return Prediction(out, at=z)
        if self.prediction_type == "v_prediction":
            if level is None:
                alpha_bar = float(self.alphas_cumprod[int(timestep)])
                level = (math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar))
            a, s = level
            return Prediction(a * out + s * z, at=z)
        if self.prediction_type != "flow":
            raise ValueError(f"prediction_type must be one of {sorted(PREDICTION_PATHS)}, got {self.prediction_type!r}")
        if level is None:
            sigma = float(timestep) / self.scheduler_config.get("num_train_timesteps", 1000)
            level = (1.0 - sigma, sigma)
        a, s = level
        return Prediction(z + a * out, x=z - s * out if a == 0 else None, at=z)

    def eps(self, z: Tensor, timestep: float, cond: Conditioning, guidance: float = 1.0, *,
            level: tuple[float, float] | None = None) -> Tensor:
        """The guided noise prediction at ``timestep``: :meth:`predict`'s noise."""
        return self.predict(z, timestep, cond, guidance, level=level).eps

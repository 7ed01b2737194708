"""A small pixel-space diffusion model trained by this project: denoising score matching on a CPU.

The network is a diffusers ``UNet2DModel`` trained with the epsilon objective of Ho et al. 2020 (Algorithm 1:
``t ~ U{0..T-1}``, ``z = a_t x + s_t n``, minimise ``|n - eps(z, t)|^2``) on Stable Diffusion's VP schedule
(:data:`~diffinv.schedule.STABLE_DIFFUSION_SCHEDULER_CONFIG`: scaled-linear betas 0.00085 to 0.012, 1,000
steps), so every method walks the paper's DDIM grid on it. Its data are the demo's fit photographs
(:data:`~diffinv.workflow.data.DEMO_FIT`, the pixels the analytic mixture is fitted to), never the evaluation ones:
each step draws ``size``-pixel views of them at the evaluation manifest's scales, the whole photograph
(its centre square resized to ``size``, as a whole evaluation image is) or a square of ``crop_sides`` source
pixels resized to ``size`` (as the manifest's 128 and 64 px crops are), flipped left-right at random.

Deterministic on a CPU from ``seed``: initialisation, views and noise come from seeded generators, and the
thread count is fixed (a reduction split over another number of threads rounds differently). Saved as a
diffusers ``DDIMPipeline`` folder (safetensors), loadable by :class:`~diffinv.models.PixelDiffusionBackend`
and by ``diffusers.DDIMPipeline.from_pretrained``.

How good the network is: :mod:`diffinv.workflow.model_quality`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .data import load_photo, photo_path
from ..schedule import STABLE_DIFFUSION_SCHEDULER_CONFIG, ddim_scheduler

LOSS_COLUMNS = ("step", "loss", "lr")


def build_unet(size: int, channels: Sequence[int], layers_per_block: int, attention: bool, norm_groups: int):
    """An unconditional RGB ``UNet2DModel``: one level per entry of ``channels`` (each but the last halves the
    image), self-attention at the lowest resolution when ``attention``."""
    from diffusers import UNet2DModel

    n = len(channels)
    down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D" if attention else "DownBlock2D",)
    up = ("AttnUpBlock2D" if attention else "UpBlock2D",) + ("UpBlock2D",) * (n - 1)
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
                       layers_per_block=layers_per_block, down_block_types=down, up_block_types=up,
                       norm_num_groups=norm_groups)


def training_views(photos: Sequence[str], size: int, crop_sides: Sequence[int]) -> list[list[Tensor]]:
    """Per photo: its centre square at ``size`` px, then the whole photo scaled by ``size / side`` for each
    crop side (a ``size`` window of it is a ``side``-pixel crop at ``size``), float64 (3, H, W) in [-1, 1].

    Scaling then cropping equals cropping then scaling (PIL's antialiased bicubic, the evaluation's
    resize) away from the crop's border."""
    from PIL import Image

    as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64) / 127.5 - 1.0).permute(2, 0, 1)  # noqa: E731
    views = []
    for name in photos:
        levels = [as_tensor(load_photo(name, size))]
        with Image.open(photo_path(name)) as im:
            image = im.convert("RGB")
        for side in crop_sides:
            if side > min(image.size):
                raise ValueError(f"photo {name!r} ({image.width}x{image.height} px) has no {side} px crop")
            scale = size / side
            shape = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
            levels.append(as_tensor(image.resize(shape, Image.Resampling.BICUBIC)))
        views.append(levels)
    return views


def sample_views(views: list[list[Tensor]], batch: int, size: int, generator: torch.Generator) -> Tensor:
    """``batch`` random views (photo, scale, position and a left-right flip drawn from ``generator``), float32."""
    photo = torch.randint(len(views), (batch,), generator=generator).tolist()
    level = torch.randint(len(views[0]), (batch,), generator=generator).tolist()
    where = torch.rand(batch, 2, generator=generator, dtype=torch.float64).tolist()
    flip = (torch.rand(batch, generator=generator) < 0.5).tolist()
    out = []
    for p, k, (u, v), f in zip(photo, level, where, flip):
        image = views[p][k]
        top, left = int(u * (image.shape[1] - size + 1)), int(v * (image.shape[2] - size + 1))
        crop = image[:, top:top + size, left:left + size]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out).float()


def train_unet(photos: Sequence[str], *, size: int, crop_sides: Sequence[int], channels: Sequence[int],
               layers_per_block: int, attention: bool, norm_groups: int, steps: int, batch: int, lr: float,
               warmup: int, seed: int, threads: int, log=None) -> tuple[Any, list[dict[str, float]]]:
    """Train a ``UNet2DModel`` (see :func:`build_unet`) for ``steps`` AdamW steps of ``batch`` views; returns
    it and one ``{step, loss, lr}`` per step. The learning rate rises linearly over ``warmup`` steps, then
    follows a cosine to 0; gradients are clipped to norm 1. ``log(step, loss)`` is called every 100 steps.

    Every setting is the config's ``model.train`` (what each means: ``config/schema.yaml``; demo-learned's
    values: ``config/demo-learned.yaml``)."""
    for name, value in (("steps", steps), ("batch", batch), ("threads", threads)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if any(c % norm_groups for c in channels):
        raise ValueError(f"channels {list(channels)} must be multiples of norm_groups = {norm_groups}")
    views = training_views(photos, size, crop_sides)
    acp = ddim_scheduler(STABLE_DIFFUSION_SCHEDULER_CONFIG).alphas_cumprod.double()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's global generator is left as it was
            torch.manual_seed(seed)
            unet = build_unet(size, channels, layers_per_block, attention, norm_groups)
        generator = torch.Generator().manual_seed(seed + 1)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
        unet.train()
        losses = []
        for step in range(steps):
            rate = lr * min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in optimizer.param_groups:
                group["lr"] = rate
            x = sample_views(views, batch, size, generator)
            t = torch.randint(len(acp), (batch,), generator=generator)
            noise = torch.randn(x.shape, generator=generator)
            ab = acp[t].float()[:, None, None, None]
            z = ab.sqrt() * x + (1 - ab).sqrt() * noise
            loss = torch.nn.functional.mse_loss(unet(z, t).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            losses.append({"step": step, "loss": loss.item(), "lr": rate})
            if log is not None and (step % 100 == 0 or step == steps - 1):
                log(step, losses[-1]["loss"])
    finally:
        torch.set_num_threads(previous)
    return unet.eval().requires_grad_(False), losses


def save_pipeline(folder: str | Path, unet: Any) -> Path:
    """A ``DDIMPipeline`` folder: ``model_index.json``, ``unet/`` (safetensors) and ``scheduler/`` (Stable
    Diffusion's schedule as a DDIM config). Same weights, same bytes."""
    import diffusers

    folder = Path(folder)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    ddim_scheduler(STABLE_DIFFUSION_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    index = {"_class_name": "DDIMPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def save_trained(folder: str | Path, unet: Any, settings: Mapping[str, Any]) -> Path:
    """:func:`save_pipeline`, plus ``training.json``: the settings :func:`train_unet` trained it with."""
    folder = save_pipeline(folder, unet)
    (folder / "training.json").write_text(json.dumps({"trained_by": "diffinv.workflow.training.train_unet",
                                                      "settings": dict(settings)}, indent=2, sort_keys=True) + "\n")
    return folder

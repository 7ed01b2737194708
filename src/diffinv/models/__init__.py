"""Backends behind one protocol: the analytic Gaussian-mixture denoiser, Stable Diffusion 1.x, SDXL, SD3 / 3.5,
FLUX.1 and pixel-space UNets (DDPM)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .base import Conditioning, DiffusionModel
from .flux import FLUX_DEV, FLUX_DEV_REVISION, FluxBackend
from .gmm import GaussianMixtureDenoiser, extract_patches, fit_gaussian_mixture
from .pixel import DDPM_CIFAR10, DDPM_CIFAR10_REVISION, PixelDiffusionBackend
from .sd3 import SD3_MEDIUM, SD3_MEDIUM_REVISION, StableDiffusion3Backend
from .sdxl import SDXL_BASE, SDXL_BASE_REVISION, StableDiffusionXLBackend
from .stable_diffusion import SD_V1_4, SD_V1_4_REVISION, StableDiffusionBackend

# model.kind -> its backend. Adding one: its file (a DiffusionModel subclass with its capabilities as class
# attributes), this entry and its tests (docs/models.md, "Adding a backend").
BACKENDS: dict[str, type[DiffusionModel]] = {cls.kind: cls for cls in (
    StableDiffusionBackend, StableDiffusionXLBackend, StableDiffusion3Backend, FluxBackend, PixelDiffusionBackend,
    GaussianMixtureDenoiser)}
# diffusers' pipeline class (model_index.json) -> model.kind
PIPELINE_KINDS = {"StableDiffusionPipeline": "stable_diffusion", "StableDiffusionXLPipeline": "sdxl",
                  "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "DDPMPipeline": "pixel",
                  "DDIMPipeline": "pixel"}


def backend(kind: str) -> type[DiffusionModel]:
    """The class of ``model.kind``; an unknown kind names the known ones."""
    try:
        return BACKENDS[kind]
    except KeyError:
        raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(BACKENDS)}") from None


def load(kind: str, weights: str | os.PathLike, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, **options: Any) -> DiffusionModel:
    """The one loader of every caller (the workflow, the CLI, the benchmarks): ``kind``'s backend from
    ``weights`` (a diffusers folder or Hub id, or a fitted file), with the options its class accepts."""
    cls = backend(kind)
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise TypeError(f"the {kind} backend takes no option {unknown}; it takes {list(cls.options) or 'none'}")
    return cls.load(weights, device=device, dtype=dtype, **options)


def folder_kind(folder: str | os.PathLike) -> str:
    """The kind of a diffusers folder, from its model_index.json (Stable Diffusion if it has none)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return "stable_diffusion"
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in PIPELINE_KINDS:
        raise ValueError(f"{folder}: pipeline {name!r} is not one of {sorted(PIPELINE_KINDS)}")
    return PIPELINE_KINDS[name]


__all__ = ["BACKENDS", "backend", "load", "Conditioning", "DDPM_CIFAR10", "DDPM_CIFAR10_REVISION", "DiffusionModel",
           "FLUX_DEV", "FLUX_DEV_REVISION", "FluxBackend", "GaussianMixtureDenoiser", "PIPELINE_KINDS",
           "PixelDiffusionBackend", "SD3_MEDIUM", "SD3_MEDIUM_REVISION", "SDXL_BASE", "SDXL_BASE_REVISION", "SD_V1_4",
           "SD_V1_4_REVISION", "StableDiffusion3Backend", "StableDiffusionBackend", "StableDiffusionXLBackend",
           "extract_patches", "fit_gaussian_mixture", "folder_kind"]

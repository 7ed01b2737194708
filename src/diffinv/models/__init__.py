"""Backends behind one protocol: the analytic Gaussian-mixture denoiser, Stable Diffusion 1.x, SDXL, SD3 / 3.5,
FLUX.1 and pixel-space UNets (DDPM)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import Conditioning, DiffusionModel
from .flux import FLUX_DEV, FLUX_DEV_REVISION, FluxBackend
from .gmm import GaussianMixtureDenoiser, extract_patches, fit_gaussian_mixture
from .pixel import DDPM_CIFAR10, DDPM_CIFAR10_REVISION, PixelDiffusionBackend
from .sd3 import SD3_MEDIUM, SD3_MEDIUM_REVISION, StableDiffusion3Backend
from .sdxl import SDXL_BASE, SDXL_BASE_REVISION, StableDiffusionXLBackend
from .stable_diffusion import SD_V1_4, SD_V1_4_REVISION, StableDiffusionBackend

# model.kind -> the backend that loads a diffusers folder of that kind (gaussian_mixture loads a fitted file)
BACKENDS: dict[str, type] = {"stable_diffusion": StableDiffusionBackend, "sdxl": StableDiffusionXLBackend,
                             "sd3": StableDiffusion3Backend, "flux": FluxBackend, "pixel": PixelDiffusionBackend}
# diffusers' pipeline class (model_index.json) -> model.kind
PIPELINE_KINDS = {"StableDiffusionPipeline": "stable_diffusion", "StableDiffusionXLPipeline": "sdxl",
                  "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "DDPMPipeline": "pixel",
                  "DDIMPipeline": "pixel"}


def folder_kind(folder: str | os.PathLike) -> str:
    """The kind of a diffusers folder, from its model_index.json (Stable Diffusion if it has none)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return "stable_diffusion"
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in PIPELINE_KINDS:
        raise ValueError(f"{folder}: pipeline {name!r} is not one of {sorted(PIPELINE_KINDS)}")
    return PIPELINE_KINDS[name]


__all__ = ["BACKENDS", "Conditioning", "DDPM_CIFAR10", "DDPM_CIFAR10_REVISION", "DiffusionModel", "FLUX_DEV",
           "FLUX_DEV_REVISION", "FluxBackend", "GaussianMixtureDenoiser", "PIPELINE_KINDS", "PixelDiffusionBackend",
           "SD3_MEDIUM", "SD3_MEDIUM_REVISION", "SDXL_BASE", "SDXL_BASE_REVISION", "SD_V1_4", "SD_V1_4_REVISION",
           "StableDiffusion3Backend", "StableDiffusionBackend", "StableDiffusionXLBackend", "extract_patches",
           "fit_gaussian_mixture", "folder_kind"]

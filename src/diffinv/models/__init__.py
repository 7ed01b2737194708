"""Backends behind one protocol: the analytic Gaussian-mixture denoiser and Stable Diffusion."""

from .base import Conditioning, DiffusionModel
from .gmm import GaussianMixtureDenoiser, extract_patches, fit_gaussian_mixture
from .stable_diffusion import SD_V1_4, SD_V1_4_REVISION, StableDiffusionBackend

__all__ = ["Conditioning", "DiffusionModel", "GaussianMixtureDenoiser", "StableDiffusionBackend",
           "SD_V1_4", "SD_V1_4_REVISION", "extract_patches", "fit_gaussian_mixture"]

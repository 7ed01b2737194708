"""Per-image reconstruction metrics on uint8 images (what a saved PNG holds), as float64 in [0, 1].

PSNR with data range 1: ``10 log10(1 / MSE)``, scikit-image's formula, computed here because
``skimage.metrics.peak_signal_noise_ratio``'s module imports scipy.stats (a second per job). SSIM
with the settings of Wang et al. (2004): Gaussian window sigma 1.5, population covariance, K1 = 0.01, K2 = 0.03, data range 1, averaged over RGB (scikit-image).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

DATA_RANGE = 1.0


def _unit(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise TypeError(f"metrics take uint8 images, got {image.dtype}")
    return image.astype(np.float64) / 255.0


def mse(reference: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean((_unit(reference) - _unit(test)) ** 2))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """In dB; ``inf`` for identical images."""
    if np.array_equal(reference, test):
        return float("inf")
    return float(10 * np.log10(DATA_RANGE**2 / mse(reference, test)))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    return float(structural_similarity(_unit(reference), _unit(test), data_range=DATA_RANGE, channel_axis=-1,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def image_metrics(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """``mse``, ``psnr`` and ``ssim`` of two uint8 (H, W, 3) images."""
    return {"mse": mse(reference, test), "psnr": psnr(reference, test), "ssim": ssim(reference, test)}

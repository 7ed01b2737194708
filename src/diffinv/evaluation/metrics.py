"""Per-image reconstruction metrics, as float64 in [0, 1], of uint8 images (what a saved PNG holds: the
papers' protocol) or of float64 images already in [0, 1] (a decoder's output before 8-bit rounding).

PSNR with data range 1: ``10 log10(1 / MSE)``, scikit-image's formula, computed here because
``skimage.metrics.peak_signal_noise_ratio``'s module imports scipy.stats (a second per job). SSIM
with the settings of Wang et al. (2004): Gaussian window sigma 1.5, population covariance, K1 = 0.01, K2 = 0.03, data range 1, averaged over RGB (scikit-image).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

DATA_RANGE = 1.0
# The smallest image side each metric is defined on: SSIM's Gaussian window (sigma 1.5, truncated at 3.5
# sigma) is 11 px wide; LPIPS's trunks pool the image away below these sides (tests/test_metrics.py).
SSIM_MIN_SIDE = 11
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16}


def min_side(lpips_nets=()) -> int:
    """The smallest square side every metric (SSIM, and LPIPS with ``lpips_nets``) can score."""
    return max([SSIM_MIN_SIDE, *(LPIPS_MIN_SIDE[net] for net in lpips_nets)])


def unit_image(image: np.ndarray) -> np.ndarray:
    """uint8 to float64 in [0, 1]; float64 images must be in [0, 1] already."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype != np.float64:
        raise TypeError(f"metrics take uint8 or float64 images in [0, 1], got {image.dtype}")
    if image.size and not (image.min() >= 0.0 and image.max() <= 1.0):  # NaN fails too
        raise ValueError(f"float images must lie in [0, 1], got values in [{image.min()}, {image.max()}]")
    return image


def mse(reference: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean((unit_image(reference) - unit_image(test)) ** 2))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """In dB; ``inf`` for identical images."""
    error = mse(reference, test)
    return float("inf") if error == 0 else float(10 * np.log10(DATA_RANGE**2 / error))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    return float(structural_similarity(unit_image(reference), unit_image(test), data_range=DATA_RANGE, channel_axis=-1,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def image_metrics(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """``mse``, ``psnr`` and ``ssim`` of two (H, W, 3) images, each uint8 or float64 in [0, 1]."""
    return {"mse": mse(reference, test), "psnr": psnr(reference, test), "ssim": ssim(reference, test)}

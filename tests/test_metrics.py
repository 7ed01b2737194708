"""Our PSNR is scikit-image's, bit for bit; identical images give infinity."""

import numpy as np
from skimage.metrics import peak_signal_noise_ratio

from diffinv.metrics import image_metrics, psnr


def test_psnr_equals_scikit_image():
    rng = np.random.default_rng(0)
    for shape in ((17, 23, 3), (64, 64, 3)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-20, 20, shape), 0, 255).astype(np.uint8)
        assert psnr(a, b) == peak_signal_noise_ratio(a / 255.0, b / 255.0, data_range=1.0)
    assert psnr(a, a) == float("inf") and image_metrics(a, a)["ssim"] == 1.0

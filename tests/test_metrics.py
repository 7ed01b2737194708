"""Our PSNR is scikit-image's, bit for bit; identical images give infinity; float images score below 8 bits."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from diffinv.evaluation.metrics import image_metrics, psnr


def test_psnr_equals_scikit_image():
    rng = np.random.default_rng(0)
    for shape in ((17, 23, 3), (64, 64, 3)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-20, 20, shape), 0, 255).astype(np.uint8)
        assert psnr(a, b) == peak_signal_noise_ratio(a / 255.0, b / 255.0, data_range=1.0)
    assert psnr(a, a) == float("inf") and image_metrics(a, a)["ssim"] == 1.0


def test_float_images_score_below_one_grey_level_where_8_bit_ones_tie():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    unit = a / 255.0
    near = np.clip(unit + rng.uniform(-0.4, 0.4, unit.shape) / 255, 0, 1)   # rounds back to a
    assert np.array_equal((near * 255).round().astype(np.uint8), a) and psnr(a, a) == float("inf")
    expected = 10 * np.log10(1 / np.mean((unit - near) ** 2))
    assert psnr(a, near) == pytest.approx(expected, rel=1e-12) and 55 < psnr(a, near) < 100
    assert image_metrics(a, unit) == image_metrics(a, a)   # uint8 is its float twin divided by 255


def test_metrics_refuse_floats_outside_the_unit_range_or_of_another_dtype():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(a, np.full((8, 8, 3), 1.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(a, np.full((8, 8, 3), np.nan))
    with pytest.raises(TypeError, match="float32"):
        psnr(a, a.astype(np.float32))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_min_side_is_the_smallest_side_each_trunk_can_score(net):
    """metrics.LPIPS_MIN_SIDE, which the config checks read, against the nets themselves (random trunks)."""
    import warnings

    import lpips
    import torch

    from diffinv.evaluation.metrics import LPIPS_MIN_SIDE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    side = LPIPS_MIN_SIDE[net]
    image = torch.zeros(1, 3, side, side)
    model(image, image)
    with pytest.raises(RuntimeError):
        small = torch.zeros(1, 3, side - 1, side - 1)
        model(small, small)


def test_ssim_min_side_is_the_smallest_side_it_scores():
    from diffinv.evaluation.metrics import SSIM_MIN_SIDE, ssim

    ok = np.zeros((SSIM_MIN_SIDE, SSIM_MIN_SIDE, 3), np.uint8)
    assert ssim(ok, ok) == 1.0
    small = ok[1:, 1:]
    with pytest.raises(ValueError, match="win_size exceeds image extent"):
        ssim(small, small)

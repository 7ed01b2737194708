"""The KL term: the closed-form gradient of ``reference.patch_kl`` for any batch of noises.

Per 4 x 4 patch and channel the loss compares Gaussian fits (mean, unbiased variance) of the noise and of
the reference prediction. Its gradient is written out here because autograd through it was slow, and the
official step clips the gradient to +-100 (``KL_CLIP``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KL_EPSILON = 1e-6   # added to both variances (official ``latents_kl_divergence``)
KL_CLIP = 100.0     # the official clip of the KL gradient


def patch_values(x: Tensor, patch: int) -> Tensor:
    """(..., H, W) -> (..., patch * patch, nh, nw): value k (row-major) of every whole patch, a copy.

    (Faster to make and to reduce than the patches' rows, (..., nh, nw, patch * patch).)
    """
    nh, nw = x.shape[-2] // patch, x.shape[-1] // patch
    lead = x.ndim - 2
    blocks = x[..., :nh * patch, :nw * patch].unflatten(-1, (nw, patch)).unflatten(-3, (nh, patch))
    values = blocks.permute(*range(lead), lead + 1, lead + 3, lead, lead + 2)  # (..., row, column, nh, nw)
    return values.reshape(*x.shape[:-2], patch * patch, nh, nw)


def from_patch_values(values: Tensor, patch: int, shape: torch.Size) -> Tensor:
    """The inverse of ``patch_values``: (..., patch * patch, nh, nw) back to ``shape`` (..., H, W), with 0
    for the pixels outside whole patches."""
    nh, nw = values.shape[-2:]
    lead = len(shape) - 2
    pixels = values.unflatten(-3, (patch, patch)).permute(*range(lead), lead + 2, lead, lead + 3, lead + 1).reshape(
        *shape[:-2], nh * patch, nw * patch)
    if pixels.shape != shape:
        pixels = F.pad(pixels, (0, shape[-1] - nw * patch, 0, shape[-2] - nh * patch))
    return pixels


def patch_moments(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, deviations from it and unbiased variance of each patch (``torch.var`` is ~10x slower on 16 values)."""
    mean = values.mean(-3)
    deviation = values - mean[..., None, :, :]
    return mean, deviation, (deviation * deviation).sum(-3) / float(values.shape[-3] - 1)


def reference_statistics(reference: Tensor, patch: int) -> tuple[Tensor, Tensor]:
    """The reference's patch means and variances plus ``KL_EPSILON``: fixed during a regulariser call, so
    computed once per call."""
    mean, _, var = patch_moments(patch_values(reference, patch))
    return mean, var + KL_EPSILON


def kl_gradient(e: Tensor, ref_mean: Tensor, ref_var_eps: Tensor, patch: int) -> Tensor:
    """Gradient of ``patch_kl`` with respect to ``e`` (..., C, H, W), from ``reference_statistics``.

    The chain rule is taken in the order autograd takes it (through ``|kl|``, the log of the ratio, the
    quotient, the variance and the mean), so the result is autograd's up to rounding, the float16 overflow
    of ReNoise issue #9 included. Pixels outside whole patches get 0.
    """
    values = patch_values(e, patch)
    n = values.shape[-3]
    mean, deviation, var = patch_moments(values)
    var_eps = var + KL_EPSILON
    ratio = ref_var_eps / var_eps
    diff = mean - ref_mean
    kl = torch.log(ratio) + (var + diff ** 2) / ref_var_eps - 1
    sign = kl.sgn()
    through_fit = sign / ref_var_eps                             # d|kl| / d(var + diff^2)
    grad_var = through_fit - (sign / ratio) * (ratio / var_eps)  # ... plus the log's d/d var_eps
    grad_mean = through_fit * (2.0 * diff)
    grad_values = torch.addcmul((grad_mean / float(n))[..., None, :, :], ((2.0 / (n - 1)) * grad_var)[..., None, :, :],
                                deviation)
    return from_patch_values(grad_values, patch, e.shape)


def patch_kl_grad(e: Tensor, reference: Tensor, patch: int = 4) -> Tensor:
    """Gradient of ``patch_kl(e, reference)`` with respect to ``e``; any leading dimensions (one image each)."""
    return kl_gradient(e, *reference_statistics(reference, patch), patch)

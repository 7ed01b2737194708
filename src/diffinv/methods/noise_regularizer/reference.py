"""ReNoise's noise regulariser, readable: the losses as the official code writes them, and the regulariser
as this project ran it before its vectorisation (issue 14), image by image and channel by channel.

The reference that the fast package must equal (``tests/test_renoise.py``, to 1e-12 in float64) and the
"before" of ``benchmarks/renoise.py``; ReNoise itself never runs it. ``patch_kl`` and
``auto_correlation_loss`` follow ``patchify_latents_kl_divergence`` and ``auto_corr_loss`` of
``src/renoise_inversion.py`` (garibida/ReNoise-Inversion), on one image (C, H, W). The steps are written
here on their own, NaN guard included, so that the tests compare two independent statements of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kl import KL_CLIP, KL_EPSILON


def patch_kl(e: Tensor, reference: Tensor, patch: int = 4) -> Tensor:
    """Sum over 4 x 4 patches and channels of |KL-like divergence| between per-patch Gaussian fits.

    ``e`` and ``reference`` are (C, H, W); per patch and channel the statistic is
    ``log((v_ref + eps) / (v + eps)) + (v + (mu - mu_ref)^2) / (v_ref + eps) - 1`` (unbiased variances).
    """
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        rows = x.unfold(1, patch, patch).unfold(2, patch, patch).flatten(3)   # (C, nh, nw, p*p)
        return rows.mean(-1), rows.var(-1)

    mu, var = stats(e)
    mu_ref, var_ref = stats(reference)
    kl = (torch.log((var_ref + KL_EPSILON) / (var + KL_EPSILON))
          + (var + (mu - mu_ref) ** 2) / (var_ref + KL_EPSILON) - 1)
    return kl.abs().sum()


def auto_correlation_loss(e: Tensor, generator: torch.Generator) -> Tensor:
    """The official loop, channel by channel: ``mean(n * roll(n, s))^2`` along H and W, down the pyramid."""
    loss = e.new_zeros(())
    for channel in e:
        noise = channel[None, None]
        while True:
            shift = int(torch.randint(0, max(noise.shape[2] // 2, 1), (1,), generator=generator))
            loss = loss + (noise * noise.roll(shift, dims=2)).mean() ** 2
            loss = loss + (noise * noise.roll(shift, dims=3)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return loss


def reference_kl_grad(e: Tensor, reference: Tensor) -> Tensor:
    """``d patch_kl / d e`` by autograd."""
    with torch.enable_grad():
        var = e.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(patch_kl(var, reference), var)
    return grad


def reference_auto_correlation_grad(e: Tensor, generator: torch.Generator) -> Tensor:
    """``d auto_correlation_loss / d e``, level by level (``2 m (roll(n, s) + roll(n, -s)) / N``) and
    channel by channel, the same shifts drawn in the same order."""
    grads = []
    for channel in e:
        levels = [channel]
        shifts = [int(torch.randint(0, max(channel.shape[0] // 2, 1), (1,), generator=generator))]
        while levels[-1].shape[0] > 8:
            levels.append(F.avg_pool2d(levels[-1][None, None], kernel_size=2)[0, 0])
            shifts.append(int(torch.randint(0, max(levels[-1].shape[0] // 2, 1), (1,), generator=generator)))
        grad = torch.zeros_like(levels[-1])
        for level in range(len(levels) - 1, -1, -1):
            noise, shift = levels[level], shifts[level]
            if level < len(levels) - 1:  # pooling's adjoint: a quarter of each cell to its 2 x 2 block
                h, w = grad.shape
                spread = torch.zeros_like(noise)
                spread[: 2 * h, : 2 * w] = grad.repeat_interleave(2, 0).repeat_interleave(2, 1) / 4
                grad = spread
            for dim in (0, 1):
                ahead, behind = noise.roll(shift, dim), noise.roll(-shift, dim)
                grad = grad + (2 * (noise * ahead).mean() / noise.numel()) * (ahead + behind)
        grads.append(grad)
    return torch.stack(grads)


def reference_descend(e: Tensor, grad: Tensor, rate: float, clip: float | None, nan_guard: bool) -> Tensor:
    """One step on one image: ``e - rate * clip(grad)``, skipped with ``nan_guard`` if ``grad`` is not finite."""
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    if nan_guard and not bool(torch.isfinite(grad).all()):
        return e
    return e - rate * grad


def reference_regularize_noise(e: Tensor, reference: Tensor, generator: torch.Generator, *, lambda_kl: float,
                               lambda_ac: float, reg_steps: int, ac_rolls: int, nan_guard: bool) -> Tensor:
    """ReNoise's noise regulariser on one image's noise (C, H, W), as it was before issue 14."""
    for _ in range(reg_steps):
        if lambda_kl > 0:
            e = reference_descend(e, reference_kl_grad(e, reference), lambda_kl, KL_CLIP, nan_guard)
        if lambda_ac > 0:
            for _ in range(ac_rolls):
                e = reference_descend(e, reference_auto_correlation_grad(e, generator), lambda_ac / ac_rolls, None,
                                      nan_guard)
    return e

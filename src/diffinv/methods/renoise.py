"""ReNoise (Garibi, Patashnik, Voynov, Averbuch-Elor, Cohen-Or, ECCV 2024, arXiv 2403.14602).

Each step refines the DDIM inversion estimate by renoising: ``zhat^(0) = z_{i-1}``,
``eps^(k) = eps_i(zhat^(k))``, ``zhat^(k+1) = Phi(i-1 -> i; z_{i-1}, R(eps^(k)))`` for k = 0..K_i, then
``z_i = Phi(i-1 -> i; z_{i-1}, R(mean of eps^(k), k in W_i))`` when the averaging window ``W_i`` holds
any iterate. Below timestep 250 the window is [0, 5) and ``K_i = min(K, 5)``; above, [8, 10) and
``K_i = K``. ``R`` is the noise regulariser (a patchwise KL term to a reference prediction and an
auto-correlation penalty, from pix2pix-zero), applied to iterates from the window's start on and to
the average, never outside the window. The reference is ``eps_i(z0)``: the official SD path
replaces ``add_noise`` by the identity, so the reference sees the clean latent.

Defaults are the official 50-step Stable Diffusion example (``examples/inversion_example_sd.py`` and
``src/config.py`` of garibida/ReNoise-Inversion): K = 1 renoising step, averaging on,
lambda_ac = 20, lambda_kl = 0.065, 4 regulariser steps of one KL step then 5 auto-correlation rolls;
noise correction is for stochastic samplers and is not used with DDIM. NFE per step:
``K_i + 1``, plus 1 for the reference when ``reg_steps > 0``: 150 per 50-step image.

``nan_guard`` (off by default, to reproduce ReNoise issue #9, black outputs on flat white images)
skips, per image, a regulariser update whose gradient is not finite. The auto-correlation shifts
are random; ``seed`` makes them reproducible, one generator per image so a batch equals its images
run one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels

KL_EPSILON = 1e-6


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
    kl = torch.log((var_ref + KL_EPSILON) / (var + KL_EPSILON)) + (var + (mu - mu_ref) ** 2) / (var_ref + KL_EPSILON) - 1
    return kl.abs().sum()


def auto_correlation_grad(e: Tensor, generator: torch.Generator) -> Tensor:
    """Gradient of pix2pix-zero's auto-correlation loss on one image's noise (C, H, W), in closed form.

    The loss sums, over channels, both spatial axes and an average-pooling pyramid (halving while the
    height exceeds 8), ``m^2`` with ``m = mean(n * roll(n, s))`` over the level's N elements and a random
    shift ``s`` below half its height, drawn per channel and level in the official loop's order. Then
    ``d m^2 / d n = 2 m (roll(n, s) + roll(n, -s)) / N``, and a level's gradient reaches the level above
    through the adjoint of 2 x 2 average pooling. (Autograd through the loss was ReNoise's main cost.)
    """
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


def _descend(e: Tensor, grad: Tensor, rate: float, clip: float | None, nan_guard: bool) -> Tensor:
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    if nan_guard and not bool(torch.isfinite(grad).all()):
        return e
    return e - rate * grad


def _kl_grad(e: Tensor, reference: Tensor) -> Tensor:
    with torch.enable_grad():
        var = e.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(patch_kl(var, reference), var)
    return grad


def regularize_noise(e: Tensor, reference: Tensor, generator: torch.Generator, *, lambda_kl: float,
                     lambda_ac: float, reg_steps: int, ac_rolls: int, nan_guard: bool) -> Tensor:
    """The ReNoise noise regulariser on one image's noise (C, H, W)."""
    for _ in range(reg_steps):
        if lambda_kl > 0:
            e = _descend(e, _kl_grad(e, reference), lambda_kl, 100.0, nan_guard)
        if lambda_ac > 0:
            for _ in range(ac_rolls):
                e = _descend(e, auto_correlation_grad(e, generator), lambda_ac / ac_rolls, None, nan_guard)
    return e


def renoise(eps: EpsFn, z0: Tensor, sched: Schedule, *, K: int = 1, max_first: int = 5, first_timestep: int = 250,
            first_range: tuple[int, int] = (0, 5), step_range: tuple[int, int] = (8, 10), average: bool = True,
            lambda_kl: float = 0.065, lambda_ac: float = 20.0, reg_steps: int = 4, ac_rolls: int = 5,
            nan_guard: bool = False, seed: int = 0, callback: Callback = None, disable: bool = True) -> Tensor:
    if K < 0 or reg_steps < 0:
        raise ValueError(f"renoise needs K >= 0 and reg_steps >= 0, got K={K}, reg_steps={reg_steps}")
    if reg_steps > 0 and z0.ndim != 4:
        raise ValueError(f"renoise's noise regulariser needs image latents (B, C, H, W), got shape "
                         f"{tuple(z0.shape)}; use reg_steps=0")
    generators = [torch.Generator().manual_seed(seed) for _ in range(z0.shape[0])]

    def regularize(e: Tensor, reference: Tensor) -> Tensor:
        if reg_steps == 0:
            return e
        return torch.stack([regularize_noise(e[b], reference[b], generators[b], lambda_kl=lambda_kl,
                                             lambda_ac=lambda_ac, reg_steps=reg_steps, ac_rolls=ac_rolls,
                                             nan_guard=nan_guard) for b in range(e.shape[0])])

    z = z0
    for i in levels(sched, disable=disable, desc="renoise"):
        early = sched.timesteps[i] < first_timestep
        start, stop = first_range if early else step_range
        iterations = min(max_first, K) if early else K
        reference = eps(z0, i) if reg_steps > 0 else None
        estimate, mean = z, None
        for k in range(iterations + 1):
            noise = eps(estimate, i)
            if start <= k < stop:
                j = k - start
                mean = noise if mean is None else (j * mean + noise) / (j + 1)
            if k >= start or (not average and k > 0):
                noise = regularize(noise, reference)
            evaluated, estimate = estimate, transfer(sched, i - 1, i, z, noise)
        if average and mean is not None:
            estimate = transfer(sched, i - 1, i, z, regularize(mean, reference))
        if callback is not None:
            callback({"i": i, "z_prev": z, "z": estimate, "estimate": evaluated})
        z = estimate
    return z

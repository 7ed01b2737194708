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
noise correction is for stochastic samplers and is not used with DDIM. The step follows
``inversion_step`` in ``src/renoise_inversion.py`` there. NFE per step:
``K_i + 1``, plus 1 for the reference when ``reg_steps > 0``: 150 per 50-step image.

``nan_guard`` (off by default, to reproduce ReNoise issue #9, black outputs on flat white images)
skips, per image, a regulariser update whose gradient is not finite. The auto-correlation shifts
are random; ``seed`` makes them reproducible, one generator per image so a batch equals its images
run one by one.

The regulariser is :mod:`.noise_regularizer` (fast; its readable reference beside it). It amplifies
differences in its input, so over an inversion even rounding differences grow to visible ones: compare
single calls, not inversions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..algebra import noise_of, transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels
from .noise_regularizer import NoiseRegularizer
from .params import NonNegativeFloat, NonNegativeInt


def renoise(eps: EpsFn, z0: Tensor, sched: Schedule, *, K: NonNegativeInt = 1, max_first: NonNegativeInt = 5,
            first_timestep: NonNegativeInt = 250, first_range: tuple[NonNegativeInt, NonNegativeInt] = (0, 5),
            step_range: tuple[NonNegativeInt, NonNegativeInt] = (8, 10), average: bool = True,
            lambda_kl: NonNegativeFloat = 0.065, lambda_ac: NonNegativeFloat = 20.0, reg_steps: NonNegativeInt = 4,
            ac_rolls: NonNegativeInt = 5, nan_guard: bool = False, seed: int = 0, callback: Callback = None,
            disable: bool = True) -> Tensor:
    if reg_steps > 0 and z0.ndim != 4:
        raise ValueError(f"renoise's noise regulariser needs image latents (B, C, H, W), got shape "
                         f"{tuple(z0.shape)}; use reg_steps=0")
    regularize = NoiseRegularizer([torch.Generator().manual_seed(seed) for _ in range(z0.shape[0])],
                                  lambda_kl=lambda_kl, lambda_ac=lambda_ac, reg_steps=reg_steps, ac_rolls=ac_rolls,
                                  nan_guard=nan_guard)

    z = z0
    for i in levels(sched, disable=disable, desc="renoise"):
        early = sched.timesteps[i] < first_timestep
        start, stop = first_range if early else step_range
        iterations = min(max_first, K) if early else K
        reference = noise_of(eps(z0, i)) if reg_steps > 0 else None
        estimate, mean = z, None
        for k in range(iterations + 1):
            noise = noise_of(eps(estimate, i))  # averaged and regularised below: the noise alone
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

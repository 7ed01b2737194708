"""ReNoise's noise regulariser, fast: the gradient steps of ``noise_regularization`` in the official code
(``src/renoise_inversion.py`` of garibida/ReNoise-Inversion, after pix2pix-zero), in closed form.

It pushes a noise prediction ``e`` towards white-noise statistics. ``reg_steps`` times:

- one KL step ``e - lambda_kl * clip(d patch_kl / d e, +-100)``: ``patch_kl`` compares the Gaussian fits
  (mean, variance) of each 4 x 4 patch and channel of ``e`` with those of a reference prediction;
- ``ac_rolls`` auto-correlation steps ``e - lambda_ac / ac_rolls * d L_ac / d e``: ``L_ac`` sums the
  squared mean of ``e * roll(e, s)`` over channels, both axes and an average-pooling pyramid, each level
  with a random shift ``s``.

:mod:`.reference` writes both losses as the official code does and the regulariser with loops (image by
image, channel by channel, the KL gradient by autograd): read it to see what this computes; the tests
hold this package equal to it. The fast version computes the gradients in closed form, for the whole
batch, its channels and all pyramid levels at once: :mod:`.kl` for the KL term, :mod:`.autocorrelation`
for the auto-correlation term (its shifts drawn first, one draw per image), which keeps the noise as
polyphase planes (:mod:`.polyphase`) through a series of steps.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .autocorrelation import AutoCorrelation, Shifts, auto_correlation_grad, pyramid_sizes
from .kl import KL_CLIP, kl_gradient, patch_kl_grad, reference_statistics

__all__ = ["NoiseRegularizer", "regularize_noise", "descend", "patch_kl_grad", "auto_correlation_grad"]


def descend(e: Tensor, grad: Tensor, rate: float, nan_guard: bool, *, in_place: bool = False) -> Tensor:
    """``e - rate * grad`` per image (dim 0); with ``nan_guard`` an image whose gradient is not finite keeps
    ``e`` (ReNoise issue #9). The one NaN guard of both kinds of step. ``in_place``: into ``e`` (the
    auto-correlation steps, on its planes); unguarded as ``e.sub_(grad, alpha=rate)``, which rounds
    differently from ``e - rate * grad`` (one fused multiply-add), as the steps always have."""
    if not nan_guard:
        return e.sub_(grad, alpha=rate) if in_place else e - rate * grad
    finite = torch.isfinite(grad).reshape(grad.shape[0], -1).all(1).view(-1, *[1] * (grad.ndim - 1))
    step = torch.where(finite, e - rate * grad, e)
    return e.copy_(step) if in_place else step


class NoiseRegularizer:
    """The regulariser for a batch of noises (B, C, H, W), one generator per image.

    Nothing mixes images, and image b's shifts come from ``generators[b]``, so a batch equals its images
    one by one. Keeps buffers for the last shape between calls (ReNoise calls it with one shape throughout
    an inversion).
    """

    def __init__(self, generators: Sequence[torch.Generator], *, lambda_kl: float, lambda_ac: float, reg_steps: int,
                 ac_rolls: int, nan_guard: bool, patch: int = 4):
        self.generators = list(generators)
        self.lambda_kl, self.lambda_ac, self.nan_guard, self.patch = lambda_kl, lambda_ac, nan_guard, patch
        self.reg_steps, self.ac_rolls = reg_steps, ac_rolls
        self.rolls = reg_steps * ac_rolls if lambda_ac > 0 else 0
        self._workspace: tuple | None = None

    def _prepared(self, e: Tensor) -> tuple[Shifts, AutoCorrelation | None]:
        """The shifts' and auto-correlation's buffers for ``e``'s shape, made on the first call with it."""
        key = (e.shape, e.dtype, e.device)
        if self._workspace is None or self._workspace[0] != key:
            if e.ndim != 4 or e.shape[0] != len(self.generators):
                raise ValueError(f"NoiseRegularizer has {len(self.generators)} generators, got noise of shape "
                                 f"{tuple(e.shape)}; expected (B, C, H, W) with B = {len(self.generators)}")
            sizes = pyramid_sizes(e.shape[-2], e.shape[-1])
            self._workspace = (key, Shifts(e.shape[0], e.shape[1], sizes, self.rolls),
                               AutoCorrelation(e.shape, self.rolls, e.dtype, e.device) if self.rolls else None)
        return self._workspace[1], self._workspace[2]

    def __call__(self, e: Tensor, reference: Tensor) -> Tensor:
        if self.reg_steps == 0:
            return e
        shifts, autocorrelation = self._prepared(e)
        if self.lambda_kl > 0:
            ref_mean, ref_var_eps = reference_statistics(reference, self.patch)
        if self.rolls:
            autocorrelation.set_shifts(shifts.draw(self.generators).to(e.device))
        roll = 0
        for _ in range(self.reg_steps):
            if self.lambda_kl > 0:
                grad = kl_gradient(e, ref_mean, ref_var_eps, self.patch).clamp_(-KL_CLIP, KL_CLIP)
                e = descend(e, grad, self.lambda_kl, self.nan_guard)
            if self.rolls:
                autocorrelation.load(e)  # the steps work on its planes
                for _ in range(self.ac_rolls):
                    descend(autocorrelation.noise, autocorrelation.gradient(roll), self.lambda_ac / self.ac_rolls,
                            self.nan_guard, in_place=True)
                    roll += 1
                e = autocorrelation.unload()
        return e


def regularize_noise(e: Tensor, reference: Tensor, generator: torch.Generator, *, lambda_kl: float,
                     lambda_ac: float, reg_steps: int, ac_rolls: int, nan_guard: bool) -> Tensor:
    """The regulariser on one image's noise (C, H, W); see ``NoiseRegularizer``."""
    regularizer = NoiseRegularizer([generator], lambda_kl=lambda_kl, lambda_ac=lambda_ac, reg_steps=reg_steps,
                                   ac_rolls=ac_rolls, nan_guard=nan_guard)
    return regularizer(e[None], reference[None])[0]

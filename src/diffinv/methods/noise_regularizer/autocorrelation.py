"""The auto-correlation term: the closed-form gradient of ``reference.auto_correlation_loss`` for a batch.

The loss sums, over channels, both spatial axes and an average-pooling pyramid (halving while the height
exceeds 8), ``m^2`` with ``m = mean(n * roll(n, s))`` over the level's N elements and a random shift ``s``
below half its height. Then ``d m^2 / d n = 2 m (roll(n, s) + roll(n, -s)) / N``, and a level's gradient
reaches the level above through the adjoint of 2 x 2 average pooling. (Autograd through the loss was
ReNoise's main cost.)

The pyramid is split into runs of exact halvings, each a :class:`~.polyphase.PolyphaseRun`: one run for
sizes divisible by 2^(levels - 1), as latents and the demo's images are; an odd size starts a new run,
reached through average pooling in the usual layout.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .polyphase import PolyphaseRun


def pyramid_sizes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """The auto-correlation loss's average-pooling pyramid: halving while the height exceeds 8."""
    sizes = [(height, width)]
    while sizes[-1][0] > 8:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return tuple(sizes)


class Shifts:
    """The random roll shifts of a series of auto-correlation gradients, drawn as the official loop draws them.

    Per image and gradient: per channel, per pyramid level, ``torch.randint(0, max(h // 2, 1), (1,))`` on
    the image's generator. The shifts do not depend on the noise, so a whole regulariser call's shifts are
    drawn first, in that order, by one ``randint`` per image: on the CPU a draw of n values is n draws of
    one, each ``r % high`` of one 32-bit word ``r``, and ``(r % L) % high == r % high`` for every ``high``
    dividing ``L``, so one draw below the highs' least common multiple, reduced per slot, gives the same
    shifts as the official loop.
    """

    def __init__(self, batch: int, channels: int, sizes: Sequence[tuple[int, int]], rolls: int):
        highs = [max(h // 2, 1) for h, _ in sizes]
        self.common = math.lcm(*highs)
        if self.common >= 2 ** 32:  # a 64-bit draw would take two words per value
            raise ValueError(f"renoise: pyramid of sizes {sizes} needs shifts below {highs}, whose least "
                             f"common multiple {self.common} does not fit a 32-bit draw")
        self.highs = torch.tensor(highs * (channels * rolls))
        self.values = torch.empty(batch, rolls, channels, len(sizes), dtype=torch.long)

    def draw(self, generators: Sequence[torch.Generator]) -> Tensor:
        """(rolls, B, C, levels) shifts."""
        for generator, image in zip(generators, self.values.view(len(self.values), -1), strict=True):
            torch.randint(0, self.common, image.shape, generator=generator, out=image)
            image.remainder_(self.highs)
        return self.values.transpose(0, 1)


class AutoCorrelation:
    """Auto-correlation gradients of a batch of noises (B, C, H, W), for a series of drawn shifts.

    Holds the noise being regularised, as the first run's top planes (``noise``), between ``load`` and
    ``unload``, so that a series of gradient steps stays in that layout.
    """

    def __init__(self, shape: torch.Size, rolls: int, dtype: torch.dtype, device: torch.device):
        batch, channels, height, width = shape
        sizes = pyramid_sizes(height, width)
        breaks = [j for j in range(1, len(sizes)) if sizes[j - 1][0] % 2 or sizes[j - 1][1] % 2]
        self.bounds = list(zip([0, *breaks], [*breaks, len(sizes)]))
        self.runs = [PolyphaseRun(sizes[a:b], batch, channels, rolls, dtype, device) for a, b in self.bounds]
        self.noise = self.runs[0].top

    def set_shifts(self, shifts: Tensor) -> None:
        """``shifts`` (rolls, B, C, levels); roll ``r`` of ``gradient`` uses ``shifts[r]``."""
        for run, (a, b) in zip(self.runs, self.bounds):
            run.set_shifts(shifts[..., a:b])

    def load(self, e: Tensor) -> None:
        self.runs[0].load(e)

    def unload(self) -> Tensor:
        return self.runs[0].natural()

    def gradient(self, roll: int) -> Tensor:
        """The loaded noise's gradient for shifts ``roll``, laid out as ``noise``."""
        runs = self.runs
        for upper, lower in zip(runs, runs[1:]):  # down the pyramid; a new run starts after an odd size
            upper.pool_levels()
            lower.load(F.avg_pool2d(upper.coarsest_level(), kernel_size=2))
        runs[-1].pool_levels()
        for run in runs:
            run.level_gradients(roll)
        for upper, lower in zip(runs[-2::-1], runs[:0:-1]):  # back up, the lowest run first
            lower.accumulate()
            upper.add_upsampled(lower.natural(gradient=True))
        runs[0].accumulate()
        return runs[0].top_grad

    def natural_gradient(self, roll: int) -> Tensor:
        """``gradient`` as (B, C, H, W)."""
        self.gradient(roll)
        return self.runs[0].natural(gradient=True)


def auto_correlation_grad(e: Tensor, generator: torch.Generator) -> Tensor:
    """Gradient of the auto-correlation loss on one image's noise (C, H, W), in closed form.

    The shifts are drawn from ``generator`` per channel and level in the official loop's order.
    """
    sizes = pyramid_sizes(e.shape[-2], e.shape[-1])
    autocorrelation = AutoCorrelation(e[None].shape, 1, e.dtype, e.device)
    autocorrelation.set_shifts(Shifts(1, e.shape[0], sizes, 1).draw([generator]).to(e.device))
    autocorrelation.load(e[None])
    return autocorrelation.natural_gradient(0)[0]

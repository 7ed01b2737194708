"""EDICT, exact diffusion inversion via coupled transformations (Wallace, Gokul, Naik, CVPR 2023,
arXiv 2211.12446).

Two chains ``(x, y)`` start at ``z0``. A reconstruction step ``i -> i-1`` updates one chain with the
noise predicted on the other, then the second with the noise on the first's new value, then mixes:
``x' = p x_int + (1 - p) y_int``, ``y' = p y_int + (1 - p) x'``. Inversion is its exact algebraic inverse
(un-mix, then the two DDIM updates in reverse order). Every network call carries the higher level's
timestep. With ``leapfrog`` (the official code's alternation, which the paper's equations alone do
not reproduce) the chain updated first swaps on odd levels; the mixing is always x then y. We key
the parity on the level i; the official loop parity may differ by one, which does not affect
exactness. 2 NFE per step in both directions. Default p = 0.93 (official). Inversion divides by p
twice per step, so round-off grows as p falls; the official code runs in float64. On a grid whose top
level is ``sigma = 1`` (rectified flows) the chains stop one level below it (``exact_top``): a step into
``sigma = 1`` with the other chain's noise would leave only that noise.
"""

from __future__ import annotations

from typing import Annotated

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, exact_top, levels
from .params import Bounds


# the mixing weight: p = 0 would divide by zero in the inversion
MixingWeight = Annotated[float, Bounds(0.0, 1.0, low_open=True)]


def edict(eps: EpsFn, z0: Tensor, sched: Schedule, *, p: MixingWeight = 0.93, leapfrog: bool = True,
          callback: Callback = None, disable: bool = True) -> tuple[Tensor, Tensor]:
    x, y = z0, z0
    for i in levels(sched, top=exact_top(sched, "edict"), disable=disable, desc="edict"):
        y_int = (y - (1 - p) * x) / p
        x_int = (x - (1 - p) * y_int) / p
        first, second = (y_int, x_int) if leapfrog and i % 2 else (x_int, y_int)
        second = transfer(sched, i - 1, i, second, eps(first, i))
        first = transfer(sched, i - 1, i, first, eps(second, i))
        x_new, y_new = (second, first) if leapfrog and i % 2 else (first, second)
        if callback is not None:
            callback({"i": i, "z_prev": x, "z": x_new, "estimate": x_int})
        x, y = x_new, y_new
    return x, y


def edict_reconstruct(eps: EpsFn, state: tuple[Tensor, Tensor], sched: Schedule, *, p: MixingWeight = 0.93,
                      leapfrog: bool = True, callback: Callback = None, disable: bool = True) -> Tensor:
    x, y = state
    for i in levels(sched, reverse=True, top=exact_top(sched, "edict"), disable=disable, desc="edict"):
        first, second = (y, x) if leapfrog and i % 2 else (x, y)
        first = transfer(sched, i, i - 1, first, eps(second, i))
        second = transfer(sched, i, i - 1, second, eps(first, i))
        x_int, y_int = (second, first) if leapfrog and i % 2 else (first, second)
        x_new = p * x_int + (1 - p) * y_int
        y_new = p * y_int + (1 - p) * x_new
        if callback is not None:
            callback({"i": i, "z_prev": x, "z": x_new})
        x, y = x_new, y_new
    return x

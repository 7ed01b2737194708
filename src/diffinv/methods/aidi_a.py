"""AIDI-A, Anderson-accelerated fixed-point inversion (Pan, Gherardi, Xie, Huang, ICCV 2023,
arXiv 2309.04907).

Each step solves ``u = F_i(u)`` from ``u_0 = z_{i-1}`` with type-II Anderson acceleration (mixing 1)
over the last ``m`` residual differences, K evaluations of ``F_i`` (K NFE). No official code exists;
defaults K = 3 (as for ``fpi``) and m = 3 (the window of the wmchen reimplementation), no ridge.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from ..solvers import anderson
from .base import Callback, EpsFn, levels
from .params import NonNegativeFloat, NonNegativeInt, PositiveInt


def aidi_a(eps: EpsFn, z0: Tensor, sched: Schedule, *, K: PositiveInt = 3, m: NonNegativeInt = 3, ridge: NonNegativeFloat = 0.0,
           callback: Callback = None, disable: bool = True) -> Tensor:
    z = z0
    for i in levels(sched, disable=disable, desc="aidi_a"):
        step = anderson(lambda u: transfer(sched, i - 1, i, z, eps(u, i)), z, iterations=K, window=m,
                        ridge=ridge)
        z_prev, z = z, step.solution
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": step.last_evaluated})
    return z

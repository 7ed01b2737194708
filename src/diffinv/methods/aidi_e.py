"""AIDI-E, the empirical acceleration of AIDI (Pan, Gherardi, Xie, Huang, ICCV 2023, arXiv 2309.04907).

``u_0 = z_{i-1}``, ``u_1 = F_i(u_0)``; from the second iterate on
``u_{k+1} = Phi(i-1 -> i; z_{i-1}, (eps_k + eps_{k-1}) / 2)`` with ``eps_k = eps_i(u_k)``. Since ``F_i``
is affine in eps this averages the last two F-values; the previous eps is cached, so each iterate
costs 1 NFE: K per step. No official code exists; this follows ``docs/methods.md`` ("aidi_e"; the
third-party wmchen reimplementation recomputes the old F-value and spends 2 NFE per iterate).
Default K = 3, as for ``fpi``.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import noise_of, transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels
from .params import PositiveInt


def aidi_e(eps: EpsFn, z0: Tensor, sched: Schedule, *, K: PositiveInt = 3, callback: Callback = None,
           disable: bool = True) -> Tensor:
    z = z0
    for i in levels(sched, disable=disable, desc="aidi_e"):
        u, previous = z, None
        for _ in range(K):
            current = noise_of(eps(u, i))  # averaged below: the noise alone
            mixed = current if previous is None else 0.5 * (current + previous)
            estimate, u, previous = u, transfer(sched, i - 1, i, z, mixed), current
        z_prev, z = z, u
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": estimate})
    return z

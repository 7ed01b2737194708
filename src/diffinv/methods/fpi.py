"""Fixed-point iteration (Picard) on each inversion step (Meiri, Samuel et al., arXiv 2312.12540v1;
the per-step problem as posed by Pan et al., AIDI, ICCV 2023).

``u_0 = z_{i-1}``, ``u_{k+1} = F_i(u_k) = Phi(i-1 -> i; z_{i-1}, eps_i(u_k))``, ``z_i = u_K``: K NFE per
step, and K = 1 is DDIM inversion. Default K = 3 (about the 150 NFE per 50-step image that the IFE
paper quotes for the fixed-point baselines); the official FPI code uses K = 20.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels
from .params import PositiveInt


def fpi(eps: EpsFn, z0: Tensor, sched: Schedule, *, K: PositiveInt = 3, callback: Callback = None,
        disable: bool = True) -> Tensor:
    z = z0
    for i in levels(sched, disable=disable, desc="fpi"):
        u = z
        for _ in range(K):
            estimate, u = u, transfer(sched, i - 1, i, z, eps(u, i))
        z_prev, z = z, u
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": estimate})
    return z

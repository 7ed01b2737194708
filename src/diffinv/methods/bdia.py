"""BDIA, bi-directional integration approximation (Zhang, Lewis, Kleijn, ECCV 2024, arXiv 2307.10829).

With ``eps_i = eps_i(z_i)`` (network at the current level), reconstruction is
``z_{i-1} = gamma * (z_{i+1} - Phi(i -> i+1; z_i, eps_i)) + Phi(i -> i-1; z_i, eps_i)`` and inversion its
exact inverse ``z_{i+1} = (z_{i-1} - Phi(i -> i-1; z_i, eps_i)) / gamma + Phi(i -> i+1; z_i, eps_i)``. The
first inversion step is plain DDIM; the inverted state is the pair ``(z_N, z_{N-1})``. 1 NFE per step
(N to invert, N - 1 to reconstruct). Default gamma = 1.0 (the official ``BDIA_stablediffusion``
signature; its editing notebook uses 0.94). Inversion divides by gamma, so round-off grows for gamma < 1.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels
from .params import PositiveFloat


def bdia(eps: EpsFn, z0: Tensor, sched: Schedule, *, gamma: PositiveFloat = 1.0, callback: Callback = None,
         disable: bool = True) -> tuple[Tensor, Tensor]:
    older, z = None, z0
    for i in levels(sched, disable=disable, desc="bdia"):
        k = i - 1   # the level whose network output drives this step
        if older is None:
            z_new = transfer(sched, 0, 1, z, eps(z, 1))
        else:
            noise = eps(z, k)
            z_new = (older - transfer(sched, k, k - 1, z, noise)) / gamma + transfer(sched, k, i, z, noise)
        if callback is not None:
            callback({"i": i, "z_prev": z, "z": z_new, "estimate": z})
        older, z = z, z_new
    return z, older


def bdia_reconstruct(eps: EpsFn, state: tuple[Tensor, Tensor], sched: Schedule, *, gamma: PositiveFloat = 1.0,
                     callback: Callback = None, disable: bool = True) -> Tensor:
    newer, z = state
    for k in levels(sched, reverse=True, top=sched.num_steps - 1, disable=disable, desc="bdia"):
        noise = eps(z, k)
        z_new = gamma * (newer - transfer(sched, k, k + 1, z, noise)) + transfer(sched, k, k - 1, z, noise)
        if callback is not None:
            callback({"i": k, "z_prev": z, "z": z_new})
        newer, z = z, z_new
    return z

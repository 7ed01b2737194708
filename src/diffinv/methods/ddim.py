"""DDIM inversion (Song, Meng, Ermon, ICLR 2021; Mokady et al.'s ``next_step``; diffusers
``DDIMInverseScheduler``): the network is evaluated on the current latent with the target
timestep, ``z_i = F_i(z_{i-1}) = Phi(i-1 -> i; z_{i-1}, eps_i(z_{i-1}))``. 1 NFE per step.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels


def ddim(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None, disable: bool = True) -> Tensor:
    z = z0
    for i in levels(sched, disable=disable, desc="ddim"):
        z_prev, z = z, transfer(sched, i - 1, i, z, eps(z, i))
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": z_prev})
    return z

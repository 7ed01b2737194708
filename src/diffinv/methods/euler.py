"""Euler inversion: the explicit step ``z_i = Phi(i-1 -> i; z_{i-1}, eps_{i-1}(z_{i-1}))``, the network
evaluated where the latent is, at its own level. On a rectified flow (``eps = z + (1 - sigma) v``) this
is ``z_i = z_{i-1} + (sigma_i - sigma_{i-1}) v(z_{i-1}, sigma_{i-1})``, the flows' plain inversion
baseline (the reverse of the pipelines' Euler sampler; e.g. Rout et al., RF-Inversion, ICLR 2025, and
Wang et al., RF-Solver, ICML 2025, as their first-order baseline). 1 NFE per step.

DDIM inversion (:mod:`.ddim`) instead evaluates the network on ``z_{i-1}`` at the target level ``i``: the
first guess at the implicit step that the fixed-point methods solve. The two differ at first order.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels


def euler(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None, disable: bool = True) -> Tensor:
    z = z0
    for i in levels(sched, disable=disable, desc="euler"):
        z_prev, z = z, transfer(sched, i - 1, i, z, eps(z, i - 1))
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": z_prev})
    return z

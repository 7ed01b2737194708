"""FireFlow (Deng et al., ICML 2025): midpoint steps whose start velocity is the previous step's midpoint
velocity; inverts and reconstructs with its own scheme, N + 1 NFE each.

Paper: Deng, He, Mei, Wang, Tang, "FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing",
ICML 2025, arXiv 2412.07517. Checked against the official code as its authors' sampler is copied into
``DSL-Lab/UniEdit-Flow``, ``UniEdit-Flow_FLUX/src/flux/sampling.py`` (``denoise_fireflow``; the same function
in a fork of the FireFlow repository).

A midpoint step whose start velocity is the previous step's midpoint velocity (reused, not recomputed):

    zm = z + (h / 2) v_prev,   vm = v(zm, (sigma + sigma_next) / 2),   z_next = z + h vm,   v_prev := vm

with ``h = sigma_next - sigma``; only the first step evaluates its start velocity, ``v(z, sigma)``. The same
scheme runs upward to invert and downward to reconstruct: N + 1 NFE each. Rectified-flow path only (a VP
grid has no level between two timesteps, and no velocity to hold fixed without choosing an ODE form).
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import euler_step, velocity
from ..schedule import Schedule
from .base import Callback, EpsFn, flow_only, levels


def _fireflow(eps: EpsFn, z: Tensor, sched: Schedule, reverse: bool, callback: Callback, disable: bool) -> Tensor:
    flow_only(sched, "fireflow")
    out = None                                        # the velocity the next step starts from
    for i in levels(sched, reverse=reverse, disable=disable, desc="fireflow"):
        source, target = (i, i - 1) if reverse else (i - 1, i)
        mid = sched.midpoint(i)
        if out is None:
            out = velocity(sched, source, z, eps(z, source))   # the first step's extra call
        estimate = euler_step(sched, source, mid, z, out)
        out = velocity(sched, mid, estimate, eps(estimate, mid))
        z_prev, z = z, euler_step(sched, source, target, z, out)
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": estimate})
    return z


def fireflow(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None, disable: bool = True) -> Tensor:
    return _fireflow(eps, z0, sched, False, callback, disable)


def fireflow_reconstruct(eps: EpsFn, zN: Tensor, sched: Schedule, *, callback: Callback = None,
                         disable: bool = True) -> Tensor:
    """FireFlow's own sampler, from level N down to 0 (its first velocity at ``sigma = 1`` is the model's)."""
    return _fireflow(eps, zN, sched, True, callback, disable)

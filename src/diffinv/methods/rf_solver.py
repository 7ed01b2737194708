"""RF-Solver (Wang et al., ICML 2025): second-order Taylor steps of the flow ODE with the velocity's derivative
from a midpoint evaluation; inverts and reconstructs with its own scheme, 2N NFE each.

Paper: Wang, Pu, Qi, Guo, Ma, Huang, Chen, Li, Shan, "Taming Rectified Flow for Inversion and Editing",
ICML 2025, arXiv 2411.04746. Checked against the official code, ``wangjiangshan0725/RF-Solver-Edit``,
``FLUX_Image_Edit/src/flux/sampling.py`` (``denoise``), and its copy ``denoise_rf_solver`` in
``DSL-Lab/UniEdit-Flow``, ``UniEdit-Flow_FLUX/src/flux/sampling.py``.

A second-order Taylor step of the flow ODE whose derivative of the velocity comes from a midpoint evaluation:

    v = v(z, sigma),   zm = z + (h / 2) v,   vm = v(zm, (sigma + sigma_next) / 2),
    z_next = z + h v + (h^2 / 2) (vm - v) / (h / 2)

with ``h = sigma_next - sigma``. Algebraically ``z_next = z + h vm``, the explicit midpoint rule: local error
O(h^3). 2 NFE per step; the same scheme runs upward to invert and downward to reconstruct (2N NFE each).
Rectified-flow path only, as FireFlow (:mod:`.fireflow`).
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import euler_step, velocity
from ..schedule import Schedule
from .base import Callback, EpsFn, flow_only, levels


def _rf_solver(eps: EpsFn, z: Tensor, sched: Schedule, reverse: bool, callback: Callback, disable: bool) -> Tensor:
    flow_only(sched, "rf_solver")
    for i in levels(sched, reverse=reverse, disable=disable, desc="rf_solver"):
        source, target = (i, i - 1) if reverse else (i - 1, i)
        mid = sched.midpoint(i)
        v = velocity(sched, source, z, eps(z, source))
        estimate = euler_step(sched, source, mid, z, v)
        v_mid = velocity(sched, mid, estimate, eps(estimate, mid))
        h = sched.s(target) - sched.s(source)
        z_prev, z = z, euler_step(sched, source, target, z, v) + 0.5 * h * h * ((v_mid - v) / (h / 2))
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": estimate})
    return z


def rf_solver(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None, disable: bool = True) -> Tensor:
    return _rf_solver(eps, z0, sched, False, callback, disable)


def rf_solver_reconstruct(eps: EpsFn, zN: Tensor, sched: Schedule, *, callback: Callback = None,
                          disable: bool = True) -> Tensor:
    """RF-Solver's own sampler, from level N down to 0 (its velocity at ``sigma = 1`` is the model's)."""
    return _rf_solver(eps, zN, sched, True, callback, disable)

"""Uni-Inv (UniEdit-Flow, Jiao et al., arXiv 2504.13109): predict the next latent with the previous step's
network output, evaluate there at the target level, step with that output. N + 1 NFE.

Paper: Jiao, Huang, Wang, Liao, "UniEdit-Flow: Unleashing Inversion and Editing in the Era of Flow Models",
arXiv 2504.13109, 2025. Checked against the official code, ``DSL-Lab/UniEdit-Flow``:
``UniEdit-Flow_FLUX/src/flux/sampling.py`` (``denoise_uniinv``) and
``UniEdit-Flow_diffusers/schedulers/UniInvEulerScheduler.py`` (``UniInvEulerScheduler``, ``UniInvDDIMScheduler``).

A predictor-corrector: 1 NFE per step and one at the start (N + 1); the reconstruction is the plain sampler
(``ddim_reconstruct``).

- Flow path (Euler form, the velocity held fixed): ``zt_i = z_{i-1} + h v_prev``, ``v_i = v(zt_i, sigma_i)``,
  ``z_i = z_{i-1} + h v_i`` with ``h = sigma_i - sigma_{i-1}``, starting from ``v_prev = v(z0, sigma_0)``.
- VP path (DDIM form, the noise held fixed): ``zt_i = Phi(i-1 -> i; z_{i-1}, eps_prev)`` (= ``a_i x_prev +
  s_i eps_prev`` with the pair the previous transfer used), ``eps_i = eps_i(zt_i)``, ``z_i = Phi(i-1 -> i;
  z_{i-1}, eps_i)``, starting from ``eps_prev = eps_0(z0)``. This is IFE with ``error_from="transfer"`` and
  ``compute_e0=True`` wherever ``s_0 > 0`` (``docs/methods.md``, "IFE and Uni-Inv: the relation";
  ``tests/test_rivals.py``).

The official DDIM scheduler starts differently: it takes z0 at alpha-bar 1 (not at level 0's alpha-bar,
``alphas_cumprod[0]`` for Stable Diffusion, where the sampler ends), and places its first prediction at the
alpha-bar of label 0 rather than at level 1. Here the first step follows the rule of every other step and of
the flow form, on the sampler's own grid.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import euler_step, transfer, velocity
from ..schedule import Schedule
from .base import Callback, EpsFn, levels


def uni_inv(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None, disable: bool = True) -> Tensor:
    flow = sched.path == "flow"

    def held(z: Tensor, i: int, noise: Tensor) -> Tensor:   # what a step holds fixed: v on a flow, eps on VP
        return velocity(sched, i, z, noise) if flow else noise

    def step(i: int, z: Tensor, out: Tensor) -> Tensor:      # level i - 1 to i with it held
        return euler_step(sched, i - 1, i, z, out) if flow else transfer(sched, i - 1, i, z, out)

    out = held(z0, 0, eps(z0, 0))                            # the start's extra call
    z = z0
    for i in levels(sched, disable=disable, desc="uni_inv"):
        estimate = step(i, z, out)                           # predictor: the previous output
        out = held(estimate, i, eps(estimate, i))
        z_prev, z = z, step(i, z, out)                       # corrector: the new output, from z_{i-1}
        if callback is not None:
            callback({"i": i, "z_prev": z_prev, "z": z, "estimate": estimate})
    return z

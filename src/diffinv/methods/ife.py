"""IFE, the iteration-free fixed-point estimator (Chen, Song, Pan, Yu, Yin, Lai, arXiv 2512.08547),
as reconstructed in ``docs/methods.md`` ("IFE as reconstructed here") from the paper's abstract and captions.

The ideal step's fixed point is explicit: ``z_i* = (s_i / s_{i-1}) z_{i-1} + kappa_i (z0 + e_i)`` with the
unknown data-prediction error ``e_i = x* - z0``. IFE replaces ``e_i`` by the previous step's error:

    zhat_i = (s_i / s_{i-1}) z_{i-1} + kappa_i (z0 + e_{i-1})
    eps    = eps_i(zhat_i)                           # the step's only network call
    z_i    = Phi(i-1 -> i; z_{i-1}, eps)
    e_i    = x(i; zhat_i, eps) - z0

``e_0 = 0`` (N NFE in all) unless ``compute_e0`` spends one more call on ``x(0; z0, eps_0(z0)) - z0``.

``error_from`` says which data prediction of the step the error reads: ``"estimate"`` (the default, as
above) the one at the network's input, ``x(i; zhat_i, eps)``; ``"transfer"`` the one the transfer keeps,
``x(i-1; z_{i-1}, eps) = x(i; z_i, eps)``. With ``"transfer"`` and ``compute_e0`` the estimate is
``zhat_i = Phi(i-1 -> i; z_{i-1}, eps_{i-1})`` and IFE is Uni-Inv's DDIM form (:mod:`.uni_inv`), wherever
``s_0 > 0``.
With ``s_0 == 0`` the first step is a DDIM step (its error is then 0). ``error_approximation=False``
(the ``ife_noerr`` ablation) keeps ``e = 0`` throughout.

On a rectified flow nothing changes: level 0 is ``sigma = 0`` (so the first step is the DDIM step), the
coefficients hold without ``a^2 + s^2 = 1``, and at a top level with ``sigma = 1`` the estimate is
``zhat_N = (z_{N-1} - a_{N-1} (z0 + e_{N-1})) / s_{N-1}``, ``z_N = eps_N(zhat_N) = zhat_N``, and ``e_N`` is
the model's own data prediction there (:mod:`diffinv.algebra`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..algebra import fixed_point_coefficients, predict_data, transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels

# Which data prediction of a step its error reads (see the module docstring).
ErrorReading = Literal["estimate", "transfer"]


def ife(eps: EpsFn, z0: Tensor, sched: Schedule, *, error_approximation: bool = True, compute_e0: bool = False,
        error_from: ErrorReading = "estimate", callback: Callback = None, disable: bool = True) -> Tensor:
    error = torch.zeros_like(z0)
    if error_approximation and compute_e0 and sched.s(0) > 0:
        error = predict_data(sched, 0, z0, eps(z0, 0)) - z0
    z = z0
    for i in levels(sched, disable=disable, desc="ife"):
        if sched.s(i - 1) == 0:   # no fixed point to write down: plain DDIM step
            estimate = z
            noise = eps(estimate, i)
            z_new = transfer(sched, i - 1, i, z, noise)
            new_error = predict_data(sched, i - 1, z, noise) - z0   # = x(i; z_new, noise): Phi keeps it
        else:
            ratio, kappa = fixed_point_coefficients(sched, i)
            estimate = ratio * z + kappa * (z0 + error)
            noise = eps(estimate, i)
            z_new = transfer(sched, i - 1, i, z, noise)
            if error_from == "estimate":
                new_error = predict_data(sched, i, estimate, noise) - z0
            else:   # the pair Phi keeps, read below the top level (a_{i-1} > 0 on every grid)
                new_error = predict_data(sched, i - 1, z, noise) - z0
        if not error_approximation:
            new_error = torch.zeros_like(z0)
        if callback is not None:
            callback({"i": i, "z_prev": z, "z": z_new, "estimate": estimate, "error": new_error,
                      "error_prev": error})
        z, error = z_new, new_error
    return z


def ife_noerr(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None,
              disable: bool = True) -> Tensor:
    """Ablation of :func:`ife` without the error approximation: ``e_{i-1} := 0`` at every step."""
    return ife(eps, z0, sched, error_approximation=False, callback=callback, disable=disable)

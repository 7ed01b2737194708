"""O-BELM, the bidirectional explicit linear multi-step sampler with locally optimal coefficients
(Wang et al., NeurIPS 2024, arXiv 2410.07273).

With ``h_i = s_i / a_i - s_{i-1} / a_{i-1}`` and ``eps_i = eps_i(z_i)``, reconstruction is
``z_{i-1} = (h_i^2 / h_{i+1}^2)(a_{i-1} / a_{i+1}) z_{i+1} + ((h_{i+1}^2 - h_i^2) / h_{i+1}^2)(a_{i-1} / a_i) z_i
- (h_i (h_i + h_{i+1}) / h_{i+1}) a_{i-1} eps_i`` and inversion is its exact algebraic inverse. The first
inversion step is plain DDIM; the state is the pair ``(z_N, z_{N-1})``. No free parameters; 1 NFE per
step (N to invert, N - 1 to reconstruct). Level 0 keeps this project's alpha-bar (the official code uses 1).
On a grid whose top level is ``sigma = 1`` (rectified flows, ``a_N = 0``, so ``h_N`` is infinite) the
chain stops one level below it (``exact_top``): N - 1 network calls to invert, N - 2 to reconstruct.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import noise_of, transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, exact_top, levels


def _h(sched: Schedule, i: int) -> float:
    return sched.s(i) / sched.a(i) - sched.s(i - 1) / sched.a(i - 1)


def belm(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None,
         disable: bool = True) -> tuple[Tensor, Tensor]:
    older, z = None, z0
    for i in levels(sched, top=exact_top(sched, "belm"), disable=disable, desc="belm"):
        k = i - 1
        if older is None:
            z_new = transfer(sched, 0, 1, z, eps(z, 1))
        else:
            h0, h1 = _h(sched, k), _h(sched, i)
            a_prev, a, a_next = sched.a(k - 1), sched.a(k), sched.a(i)
            z_new = ((h1 ** 2 / h0 ** 2) * (a_next / a_prev) * older
                     + ((h0 ** 2 - h1 ** 2) / h0 ** 2) * (a_next / a) * z
                     + (h1 * (h0 + h1) / h0) * a_next * noise_of(eps(z, k)))
        if callback is not None:
            callback({"i": i, "z_prev": z, "z": z_new, "estimate": z})
        older, z = z, z_new
    return z, older


def belm_reconstruct(eps: EpsFn, state: tuple[Tensor, Tensor], sched: Schedule, *, callback: Callback = None,
                     disable: bool = True) -> Tensor:
    newer, z = state
    for k in levels(sched, reverse=True, top=exact_top(sched, "belm") - 1, disable=disable, desc="belm"):
        h0, h1 = _h(sched, k), _h(sched, k + 1)
        a_prev, a, a_next = sched.a(k - 1), sched.a(k), sched.a(k + 1)
        z_new = ((h0 ** 2 / h1 ** 2) * (a_prev / a_next) * newer
                 + ((h1 ** 2 - h0 ** 2) / h1 ** 2) * (a_prev / a) * z
                 - (h0 * (h0 + h1) / h1) * a_prev * noise_of(eps(z, k)))
        if callback is not None:
            callback({"i": k, "z_prev": z, "z": z_new})
        newer, z = z, z_new
    return z

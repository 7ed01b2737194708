"""The shared DDIM algebra (``shared/design/methods.md``, "Notation"): every method calls these.

``z`` may be a tensor of any dtype; coefficients are float64 scalars, so results keep z's dtype.
"""

from __future__ import annotations

from torch import Tensor

from .schedule import Schedule


def transfer(sched: Schedule, i: int, j: int, z: Tensor, eps: Tensor) -> Tensor:
    """``Phi(i -> j; z, eps)``: the DDIM map from level i to level j with a fixed noise estimate."""
    a_i, s_i, a_j, s_j = sched.a(i), sched.s(i), sched.a(j), sched.s(j)
    return (a_j / a_i) * z + (s_j - a_j * s_i / a_i) * eps


def predict_data(sched: Schedule, i: int, z: Tensor, eps: Tensor) -> Tensor:
    """``x(i; z, eps) = (z - s_i * eps) / a_i``: the clean latent implied by ``eps`` at level i."""
    return (z - sched.s(i) * eps) / sched.a(i)


def fixed_point_coefficients(sched: Schedule, i: int) -> tuple[float, float]:
    """``(s_i / s_{i-1}, kappa_i)`` of the explicit fixed point ``z_i* = r z_{i-1} + kappa x*``.

    From eliminating eps between ``z_{i-1} = a_{i-1} x* + s_{i-1} eps*`` and ``z_i = a_i x* + s_i eps*``.
    Needs ``s_{i-1} > 0``.
    """
    ratio = sched.s(i) / sched.s(i - 1)
    return ratio, sched.a(i) - sched.a(i - 1) * ratio

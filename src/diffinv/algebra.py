"""The shared algebra of a Gaussian path (``docs/methods.md``, "Notation"): every method calls these.

``z`` may be a tensor of any dtype; coefficients are float64 scalars, so results keep z's dtype.

Nothing here needs ``a^2 + s^2 = 1``: the same maps serve VP grids (DDIM) and rectified flows, where
``Phi`` with ``eps = z + (1 - sigma) v`` is exactly the flow's Euler step (``diffinv.schedule``).

The level ``sigma = 1`` (``a = 0``), the top of every flow pipeline's grid. There ``z = eps``: the noise
prediction is the input itself (``eps = z + (1 - sigma) v``) and says nothing about the velocity, so
``(z - s eps) / a`` cannot give the data prediction, and ``Phi`` from that level, written with
``a_j / a_i``, divides by zero. The same map written through the predictions,
``z_j = a_j x_hat + s_j eps_hat``, is well defined when ``x_hat`` is the network's own data prediction
*at z*. So:

- Every map *into* a level with ``a = 0`` is ordinary (its ``a_j / a_i`` is 0), and every map *from* a
  level with ``a > 0`` keeps its old arithmetic, so VP results are unchanged bit for bit.
- A method's ``eps(z, i)`` returns a :class:`Prediction`: the noise, and at a level with ``a = 0`` also the
  network's data prediction there (``x_hat = z - sigma v``) with the latent it was made at, in plain fields,
  so nothing that copies or converts the noise loses it unseen. :func:`transfer` and :func:`predict_data`
  take a Prediction or a plain noise tensor; from a level with ``a = 0`` they need a Prediction made at the
  very ``z`` they map (the same tensor, or an equal one): reconstruction's first step ``Phi(N -> N-1; z_N,
  eps_N(z_N))``, IFE's last data prediction and the velocity the flow solvers read there (:func:`velocity`:
  Uni-Inv's top step, FireFlow's and RF-Solver's first step down) are such self-consistent uses. Arithmetic
  on noise (an average, a regulariser) takes :func:`noise_of` a prediction, a plain tensor, explicitly.
  Methods stay functions of ``eps(z, i)`` and never see the backend.
- A map from ``a = 0`` with a noise estimate made elsewhere (EDICT's and ERDDCI's coupled chains), or
  combined (averaged, regularised), is not defined: for a fixed ``eps`` the map ``z -> Phi(i -> j; z,
  eps)`` has slope ``a_j / a_i``, and its inverse ``Phi(j -> i)`` sends every ``z`` to ``eps`` itself.
  It raises :class:`SingularLevel`; the exact methods stop their chain below ``sigma = 1``
  (:func:`diffinv.methods.base.exact_top`) instead of reaching it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .schedule import Schedule


class SingularLevel(ValueError):
    """A map from a level with ``a = 0`` without the network's data prediction at that very latent."""


@dataclass(frozen=True)
class Prediction:
    """What the network predicts at one latent and level: the noise ``eps``, and where the noise says nothing
    of the data (``a = 0``) the data prediction ``x`` too, with the latent ``at`` both were made at."""

    eps: Tensor
    x: Tensor | None = None
    at: Tensor | None = None


def noise_of(prediction: Prediction | Tensor) -> Tensor:
    """The noise tensor of a prediction (a plain tensor is a noise estimate already)."""
    return prediction.eps if isinstance(prediction, Prediction) else prediction


def _data_prediction_at(prediction: Prediction | Tensor, z: Tensor, i) -> Tensor:
    """The network's data prediction at a level with ``a = 0``, which ``prediction`` must carry for ``z``."""
    x = prediction.x if isinstance(prediction, Prediction) else None
    if x is None or not (prediction.at is z or torch.equal(prediction.at, z)):
        made = "made at another latent" if x is not None else "without one (an epsilon model's, or combined)"
        raise SingularLevel(
            f"level {i} has a = 0 (sigma = 1), where the latent is the noise and a noise estimate says nothing "
            f"about the data: a map from it needs the network's data prediction at that latent; this estimate "
            f"comes {made}")
    return x


def transfer(sched: Schedule, i: int, j: int, z: Tensor, eps: Prediction | Tensor) -> Tensor:
    """``Phi(i -> j; z, eps)``: the DDIM map from level i to level j with a fixed noise estimate.

    From a level with ``a_i = 0`` it is ``a_j x_hat + s_j eps`` with the model's data prediction at ``z``
    (see the module docstring); elsewhere ``(a_j / a_i) z + (s_j - a_j s_i / a_i) eps``.
    """
    a_i, s_i, a_j, s_j = sched.a(i), sched.s(i), sched.a(j), sched.s(j)
    if a_i == 0:
        return a_j * _data_prediction_at(eps, z, i) + s_j * noise_of(eps)
    return (a_j / a_i) * z + (s_j - a_j * s_i / a_i) * noise_of(eps)


def predict_data(sched: Schedule, i: int, z: Tensor, eps: Prediction | Tensor) -> Tensor:
    """``x(i; z, eps) = (z - s_i * eps) / a_i``: the clean latent implied by ``eps`` at level i (at a level
    with ``a_i = 0``: the model's own data prediction at ``z``)."""
    if sched.a(i) == 0:
        return _data_prediction_at(eps, z, i)
    return (z - sched.s(i) * noise_of(eps)) / sched.a(i)


def velocity(sched: Schedule, i, z: Tensor, eps: Prediction | Tensor) -> Tensor:
    """``v = eps - x(i; z, eps)``: the rectified flow's velocity ``dz/dsigma`` that a noise estimate at level i
    (a grid level or a half level) implies at ``z``; for the model's own estimate at ``z``, its velocity
    output (``eps = z + a v``), at ``sigma = 1`` too (through :func:`predict_data`)."""
    return noise_of(eps) - predict_data(sched, i, z, eps)


def euler_step(sched: Schedule, i, j, z: Tensor, v: Tensor) -> Tensor:
    """``z + (sigma_j - sigma_i) v``: the flow's Euler step from level i to level j with the velocity held fixed.

    With ``v = velocity(sched, i, z, eps)`` it is :func:`transfer` (``Phi`` holds the noise fixed, which on a
    flow is the same step); the midpoint solvers apply a velocity found elsewhere. Flow path only.
    """
    if sched.path != "flow":
        raise ValueError(f"an Euler step with a fixed velocity is a rectified-flow step; this schedule is on the "
                         f"{sched.path} path")
    return z + (sched.s(j) - sched.s(i)) * v


def fixed_point_coefficients(sched: Schedule, i: int) -> tuple[float, float]:
    """``(s_i / s_{i-1}, kappa_i)`` of the explicit fixed point ``z_i* = r z_{i-1} + kappa x*``.

    From eliminating eps between ``z_{i-1} = a_{i-1} x* + s_{i-1} eps*`` and ``z_i = a_i x* + s_i eps*``
    (no ``a^2 + s^2 = 1`` needed). Needs ``s_{i-1} > 0``.
    """
    ratio = sched.s(i) / sched.s(i - 1)
    return ratio, sched.a(i) - sched.a(i - 1) * ratio

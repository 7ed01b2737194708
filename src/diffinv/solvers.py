"""Fixed-point solvers shared by AIDI-A and the Figure 2 statistics.

Every function works per image on a batch: the leading dimension is the image, the rest is
flattened for norms and least squares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def relative_residual(u: Tensor, fu: Tensor) -> Tensor:
    """Per image ``||F(u) - u|| / ||F(u)||`` (float64)."""
    diff = (fu - u).flatten(1).double().norm(dim=1)
    return diff / fu.flatten(1).double().norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)


def anderson_weights(residuals: list[Tensor], ridge: float = 0.0) -> Tensor:
    """Type-II Anderson mixing weights ``gamma = argmin ||sum_j gamma_j r_j||`` with ``sum_j gamma_j = 1``.

    Solved per image through the Gram matrix; ``ridge`` adds ``ridge * mean(diag G)`` to its diagonal.
    A singular Gram matrix is handled by the pseudo-inverse; if every residual vanishes the newest
    iterate gets all the weight.
    """
    r = torch.stack([x.flatten(1).double() for x in residuals], dim=1)   # (B, m, D)
    gram = r @ r.transpose(1, 2)
    m = gram.shape[-1]
    if ridge > 0:
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]
        gram = gram + ridge * scale * torch.eye(m, dtype=gram.dtype, device=gram.device)
    y = (torch.linalg.pinv(gram, hermitian=True) @ torch.ones(gram.shape[0], m, 1, dtype=gram.dtype,
                                                             device=gram.device)).squeeze(-1)
    total = y.sum(-1, keepdim=True)
    newest = torch.zeros_like(y)
    newest[:, -1] = 1.0
    return torch.where(total.abs() > 0, y / torch.where(total == 0, 1.0, total), newest)


@dataclass
class AndersonResult:
    solution: Tensor          # the last mixed iterate, or F(u) at convergence
    last_evaluated: Tensor    # the last point F was evaluated at
    evaluations: int
    residual: Tensor          # per image relative residual at the last evaluation
    converged: bool


def anderson(f: Callable[[Tensor], Tensor], u0: Tensor, *, iterations: int, window: int,
             ridge: float = 0.0, tol: float | None = None) -> AndersonResult:
    """Anderson acceleration (type II, mixing 1) of ``u = f(u)``; ``window`` past differences, 0 = Picard.

    Evaluates ``f`` at most ``iterations`` times. Without ``tol`` it always uses all of them and
    returns the mixed iterate after the last evaluation (the AIDI-A step). With ``tol`` it stops as
    soon as every image's relative residual is below it and returns ``f(u)`` there.
    """
    if iterations < 1 or window < 0:
        raise ValueError("anderson needs iterations >= 1 and window >= 0")
    u = u0
    values: list[Tensor] = []
    residuals: list[Tensor] = []
    for k in range(iterations):
        fu = f(u)
        residual = relative_residual(u, fu)
        if tol is not None and bool((residual < tol).all()):
            return AndersonResult(fu, u, k + 1, residual, True)
        values = (values + [fu])[-(window + 1):]
        residuals = (residuals + [fu - u])[-(window + 1):]
        gamma = anderson_weights(residuals, ridge).to(u.dtype)
        evaluated, u = u, sum(g.view(-1, *[1] * (u.ndim - 1)) * v for g, v in zip(gamma.unbind(1), values))
    return AndersonResult(u, evaluated, iterations, residual, tol is None)

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

    Solved per image as the unconstrained least-squares problem ``min ||r_new - D alpha||`` over the
    differences ``D_j = r_new - r_j`` (then ``gamma_j = alpha_j``, ``gamma_new = 1 - sum alpha``), by
    pseudo-inverse, so rank-deficient histories (converged or collinear residuals) are handled.
    ``ridge > 0`` instead solves ``(D^T D + ridge * mean(diag D^T D) I) alpha = D^T r_new``.
    """
    r = torch.stack([x.flatten(1).double() for x in residuals], dim=2)   # (B, D, m + 1), newest last
    # One image at a time: a batched matmul sums in another order than a single one, and an image's
    # weights must not depend on the batch it was inverted in.
    return torch.cat([_one_image_weights(r[b:b + 1], ridge) for b in range(r.shape[0])])


def _one_image_weights(r: Tensor, ridge: float) -> Tensor:
    newest, diffs = r[:, :, -1:], r[:, :, -1:] - r[:, :, :-1]
    if ridge > 0 and diffs.shape[2] > 0:
        gram = diffs.transpose(1, 2) @ diffs
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        alpha = torch.linalg.pinv(gram + ridge * scale * eye, hermitian=True) @ (diffs.transpose(1, 2) @ newest)
    else:
        alpha = torch.linalg.pinv(diffs) @ newest
    alpha = alpha.squeeze(-1)
    return torch.cat([alpha, 1 - alpha.sum(-1, keepdim=True)], dim=1)


@dataclass
class AndersonResult:
    solution: Tensor          # the last mixed iterate, or F(u) at convergence
    last_evaluated: Tensor    # the last point F was evaluated at
    evaluations: int
    residual: Tensor          # per image relative residual at the last evaluation
    converged: bool           # always True without a tolerance (all iterations were asked for)


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

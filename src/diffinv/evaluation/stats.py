"""Fixed-point estimation error per step: the quantities of the IFE paper's Figure 2.

For step i the method's own ``z_{i-1}`` is taken as given and ``z = F_i(z)`` is solved to a relative
residual ``tol`` (Anderson acceleration, started at the method's ``z_i``). The estimation error is
``estimate - z_i*``, where ``estimate`` is the latent the method's last network call was made at
(``zhat_i`` for IFE, ``z_{i-1}`` for DDIM). Per image and step we report its sample mean and variance
over the latent's elements, and the same for ``e_i - e_{i-1}`` where the method keeps an error (IFE).

At a level with ``a_i = 0`` (``sigma = 1``, the top of a rectified flow's grid) ``F_i`` is the identity
(``eps_i(z) = z`` there), so every point would count as its fixed point. The step is solved in the
fixed point's data form instead, ``z = (s_i / s_{i-1}) z_{i-1} + kappa_i x_i(z)`` with the model's data
prediction ``x_i(z)``: the same condition (reconstruction maps ``z`` back to ``z_{i-1}``), and at
``a_i > 0`` the same fixed points as ``F_i``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..algebra import fixed_point_coefficients, predict_data, transfer
from ..api import InversionResult, guided_eps
from ..models.base import Conditioning, DiffusionModel, Prompt
from ..solvers import anderson


def _mean_var(x: Tensor) -> tuple[list[float], list[float]]:
    flat = x.flatten(1).double()
    return flat.mean(1).tolist(), flat.var(1).tolist()


def fixed_point_errors(model: DiffusionModel, result: InversionResult, cond: Conditioning | Prompt = None, *,
                       tol: float = 1e-8, max_iter: int = 200, window: int = 5) -> list[dict[str, Any]]:
    """One row per (image, step) from an inversion run with ``trajectory=True``.

    Rows: ``image, i, err_mean, err_var, derr_mean, derr_var`` (NaN without an error term),
    ``converged``, ``iterations``, ``residual`` (the solver's relative residual).
    """
    if result.trajectory is None:
        raise ValueError("fixed_point_errors needs an inversion run with trajectory=True")
    sched = result.schedule
    batch = result.latent.shape[0]
    eps = guided_eps(model, sched, model.as_conditioning(cond, batch), result.guidance)
    rows: list[dict[str, Any]] = []
    for step in result.trajectory:
        i, z_prev = step["i"], step["z_prev"]
        if sched.a(i) == 0:
            ratio, kappa = fixed_point_coefficients(sched, i)
            step_map = lambda u: ratio * z_prev + kappa * predict_data(sched, i, u, eps(u, i))  # noqa: E731
        else:
            step_map = lambda u: transfer(sched, i - 1, i, z_prev, eps(u, i))  # noqa: E731
        solve = anderson(step_map, step["z"], iterations=max_iter, window=window, tol=tol)
        err_mean, err_var = _mean_var(step["estimate"] - solve.solution)
        if "error" in step:
            de_mean, de_var = _mean_var(step["error"] - step["error_prev"])
        else:
            de_mean = de_var = [math.nan] * batch
        residual = solve.residual.tolist()
        for b in range(batch):
            rows.append({"image": b, "i": i, "err_mean": err_mean[b], "err_var": err_var[b],
                         "derr_mean": de_mean[b], "derr_var": de_var[b], "converged": bool(residual[b] < tol),
                         "iterations": solve.evaluations, "residual": residual[b]})
    return rows

"""EasyInv (Zhang, Lin, Yan, Ji, ICML 2025, arXiv 2408.05159): DDIM inversion whose base latent is
blended with the previous base inside a window of steps.

At 0-based loop index ``j`` (step from level j to j+1) the noise is predicted on the un-blended
``z_j``; if ``s*N < j < (s+l)*N`` the step starts from ``base_j = eta * z_j + (1 - eta) * base_{j-1}``
instead of ``z_j`` (order of the official SD 1.4 notebook). ``order="after"`` is the official
``example.py`` variant, which blends the new latent with the old one after the step so the next
network call sees it. 1 NFE per step; reconstruction is DDIM. Defaults are the official SD 1.4 ones
(eta 0.5, s 0.05, l 0.2: j = 3..12 at N = 50); :data:`SDXL_DEFAULTS` are the official SDXL ones.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels
from .params import UnitInterval

SDXL_DEFAULTS = {"eta": 0.8, "s": 0.85, "l": 0.1}


def easyinv(eps: EpsFn, z0: Tensor, sched: Schedule, *, eta: UnitInterval = 0.5, s: UnitInterval = 0.05,
            l: UnitInterval = 0.2, order: Literal["notebook", "after"] = "notebook",  # noqa: E741
            callback: Callback = None, disable: bool = True) -> Tensor:
    n = sched.num_steps
    z, base = z0, z0
    for i in levels(sched, disable=disable, desc="easyinv"):
        j = i - 1
        in_window = s * n < j < (s + l) * n
        noise = eps(z, i)
        if order == "notebook":
            base = eta * z + (1 - eta) * base if in_window else z
            z_new = transfer(sched, j, i, base, noise)
        else:
            z_new = transfer(sched, j, i, z, noise)
            z_new = eta * z_new + (1 - eta) * z if in_window else z_new
        if callback is not None:
            callback({"i": i, "z_prev": z, "z": z_new, "estimate": z})
        z = z_new
    return z

"""ERDDCI, exact reversible diffusion via dual-chain inversion (Dai, Zhang, Chen, Yang, Luo,
arXiv 2410.14247).

The main chain is DDIM inversion, ``m_i = Phi(i-1 -> i; m_{i-1}, eps_i(m_{i-1}))``. The auxiliary chain
is driven by the noise predicted on the main chain's new latent, ``b_i = Phi(i-1 -> i; b_{i-1},
eps_i(m_i))``. Reconstruction re-predicts that noise on the stored main chain,
``b_{i-1} = Phi(i -> i-1; b_i, eps_i(m_i))``, so it undoes each auxiliary step exactly when guidance and
prompt match the inversion (the released code uses guidance 1 both ways; the paper's "dynamic
control strategy" for large guidance is not released and not implemented). 2 NFE per inversion
step, 1 per reconstruction step; the state is ``b_N`` plus the N + 1 main-chain latents. On a grid whose
top level is ``sigma = 1`` (rectified flows) both chains stop one level below it (``exact_top``): there
``b_N = eps_N(m_N)`` whatever ``b_{N-1}`` was.
"""

from __future__ import annotations

from torch import Tensor

from ..algebra import transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, exact_top, levels


def erddci(eps: EpsFn, z0: Tensor, sched: Schedule, *, callback: Callback = None,
           disable: bool = True) -> tuple[Tensor, tuple[Tensor, ...]]:
    main, b = [z0], z0
    for i in levels(sched, top=exact_top(sched, "erddci"), disable=disable, desc="erddci"):
        main.append(transfer(sched, i - 1, i, main[-1], eps(main[-1], i)))
        b_new = transfer(sched, i - 1, i, b, eps(main[-1], i))
        if callback is not None:
            callback({"i": i, "z_prev": b, "z": b_new, "estimate": main[-1]})
        b = b_new
    return b, tuple(main)


def erddci_reconstruct(eps: EpsFn, state: tuple[Tensor, tuple[Tensor, ...]], sched: Schedule, *,
                       callback: Callback = None, disable: bool = True) -> Tensor:
    b, main = state
    top = exact_top(sched, "erddci")
    if len(main) != top + 1:
        raise ValueError(f"erddci state holds {len(main) - 1} steps, the schedule takes {top}")
    for i in levels(sched, reverse=True, top=top, disable=disable, desc="erddci"):
        b_prev = transfer(sched, i, i - 1, b, eps(main[i], i))
        if callback is not None:
            callback({"i": i, "z_prev": b, "z": b_prev})
        b = b_prev
    return b

"""What every method shares: the signature types, the progress loop and DDIM reconstruction.

A method is a pure function ``invert(eps, z0, sched, *, callback=None, disable=True, **params)``.
``eps(z, i)`` is the guided noise prediction at level i (the method never sees the backend), a grid level
or, on the flow path, a half level ``sched.midpoint(i)`` between grid levels i - 1 and i;
``callback`` receives one dict per step with at least ``i``, ``z_prev`` (z_{i-1}), ``z`` (z_i) and
``estimate`` (the latent the last network call of the step was made at).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import Tensor
from tqdm import tqdm  # not tqdm.auto: in a notebook it warns, naming this machine's paths

from ..algebra import Prediction, transfer
from ..schedule import Schedule

# eps(z, level) -> the network's Prediction at a grid level (int) or a half level; a plain noise tensor will do
# wherever the level has a > 0 (diffinv.algebra)
EpsFn = Callable[[Tensor, Any], Prediction | Tensor]
Callback = Callable[[dict[str, Any]], None] | None


def levels(sched: Schedule, *, reverse: bool = False, top: int | None = None, disable: bool = True,
           desc: str = "") -> Iterable[int]:
    """Levels ``1..top`` (or ``top..1``; ``top`` defaults to N) with an optional progress bar."""
    top = sched.num_steps if top is None else top
    order = range(top, 0, -1) if reverse else range(1, top + 1)
    return tqdm(order, desc=desc, disable=disable, leave=False)


def exact_top(sched: Schedule, method: str) -> int:
    """The top level an exact method's chain reaches: N, or N - 1 when level N has ``a = 0`` (``sigma = 1``,
    the top of a rectified-flow pipeline's grid).

    There ``z_N = Phi(N-1 -> N; z, eps) = eps`` for every ``z``: a step into ``sigma = 1`` with a noise
    estimate held fixed keeps nothing of the chain it moves, so no coupled or auxiliary chain (EDICT,
    ERDDCI) can be undone from there, and BELM's step sizes ``s / a`` are infinite. Such a method inverts
    to level N - 1 instead (its state is that level's; NFE counts N - 1 steps) and reconstructs from it.
    """
    top = sched.num_steps - (sched.a(sched.num_steps) == 0)
    if top < 1:
        raise ValueError(f"{method} needs a level between 0 and sigma = 1; this grid has only those two")
    return top


def flow_only(sched: Schedule, method: str) -> None:
    """Refuse a VP schedule before any network call: ``method`` steps through half levels with a velocity
    held fixed, which a VP grid (integer timesteps, eps-predicting networks) does not define."""
    if sched.path != "flow":
        raise ValueError(f"{method} is defined on the rectified-flow path only (SD3, FLUX.1, a flow mixture): it "
                         f"evaluates the network between grid levels with the velocity held fixed; this schedule "
                         f"is on the {sched.path} path")


def ddim_reconstruct(eps: EpsFn, zN: Tensor, sched: Schedule, *, callback: Callback = None,
                     disable: bool = True) -> Tensor:
    """DDIM sampling from level N to 0: ``z_{i-1} = Phi(i -> i-1; z_i, eps_i(z_i))`` (Song et al., 2021)."""
    z = zN
    for i in levels(sched, reverse=True, disable=disable, desc="reconstruct"):
        z_prev, z = z, transfer(sched, i, i - 1, z, eps(z, i))
        if callback is not None:
            callback({"i": i, "z": z, "z_prev": z_prev})
    return z

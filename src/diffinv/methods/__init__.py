"""The method registry: name -> inversion function, its reconstruction, defaults and NFE.

Every inversion function has the signature described in :mod:`diffinv.methods.base`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..schedule import Schedule
from .aidi_a import aidi_a
from .aidi_e import aidi_e
from .base import Callback, EpsFn, ddim_reconstruct, exact_top, levels
from .params import ParamError, check, describe, hints, parse_text
from .bdia import bdia, bdia_reconstruct
from .belm import belm, belm_reconstruct
from .ddim import ddim
from .easyinv import easyinv
from .edict import edict, edict_reconstruct
from .erddci import erddci, erddci_reconstruct
from .euler import euler
from .fireflow import fireflow, fireflow_reconstruct
from .fpi import fpi
from .ife import ife, ife_noerr
from .renoise import renoise
from .rf_solver import rf_solver, rf_solver_reconstruct
from .uni_inv import uni_inv

_NOT_PARAMS = {"eps", "z0", "sched", "callback", "disable"}


@dataclass(frozen=True)
class Method:
    name: str
    invert: Callable[..., Any]
    reconstruct: Callable[..., Any]
    nfe: Callable[[dict[str, Any], Schedule], int]
    """Network evaluations of the inversion (before CFG doubling), from the parameters and schedule."""
    state: str = "latent"
    reconstruct_nfe: Callable[[Schedule], int] = lambda s: s.num_steps
    paths: tuple[str, ...] = ("vp", "flow")
    """The Gaussian paths (``Schedule.path``) the method is defined on; elsewhere it raises before any call."""
    defaults: dict[str, Any] = field(init=False)
    types: dict[str, Any] = field(init=False, repr=False)
    """Each parameter's annotation (type and range: :mod:`diffinv.methods.params`)."""

    def __post_init__(self) -> None:
        params = inspect.signature(self.invert).parameters.values()
        defaults = {p.name: p.default for p in params if p.name not in _NOT_PARAMS}
        annotations = hints(self.invert)
        untyped = sorted(set(defaults) - set(annotations))
        if untyped:
            raise TypeError(f"method {self.name!r}: parameters {untyped} have no type annotation")
        object.__setattr__(self, "defaults", defaults)
        object.__setattr__(self, "types", {name: annotations[name] for name in defaults})

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.invert) or inspect.getdoc(inspect.getmodule(self.invert)) or ""
        return doc.split("\n\n")[0].replace("\n", " ")

    def reconstruct_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The inversion parameters the reconstruction needs too (e.g. BDIA's gamma)."""
        wanted = inspect.signature(self.reconstruct).parameters
        return {k: v for k, v in params.items() if k in wanted and k not in _NOT_PARAMS}

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``params``, each checked against its annotation (:class:`ParamError`
        names the parameter); an unknown name is a TypeError naming the method's parameters."""
        self._known(params)
        return {**self.defaults, **{name: check(name, self.types[name], value) for name, value in params.items()}}

    def parse(self, name: str, text: str) -> Any:
        """A parameter's value from command-line text (``--param K=5``), typed and checked."""
        self._known([name])
        return parse_text(name, self.types[name], text)

    def _known(self, names) -> None:
        unknown = set(names) - set(self.defaults)
        if unknown:
            raise TypeError(f"method {self.name!r} has no parameter {sorted(unknown)}; "
                            f"its parameters are {self.defaults or 'none'}")

    def describe(self, name: str) -> str:
        """What the parameter ``name`` must be, in words."""
        return describe(self.types[name])


def _renoise_nfe(p: dict[str, Any], s: Schedule) -> int:
    early = sum(t < p["first_timestep"] for t in s.timesteps[1:])
    per_step_reference = int(p["reg_steps"] > 0)
    return (early * (min(p["max_first"], p["K"]) + 1) + (s.num_steps - early) * (p["K"] + 1)
            + s.num_steps * per_step_reference)


def _ife_nfe(p: dict[str, Any], s: Schedule) -> int:
    return s.num_steps + int(p["error_approximation"] and p["compute_e0"] and s.s(0) > 0)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("ddim", ddim, ddim_reconstruct, lambda p, s: s.num_steps),
    Method("euler", euler, ddim_reconstruct, lambda p, s: s.num_steps),
    Method("fpi", fpi, ddim_reconstruct, lambda p, s: p["K"] * s.num_steps),
    Method("aidi_e", aidi_e, ddim_reconstruct, lambda p, s: p["K"] * s.num_steps),
    Method("aidi_a", aidi_a, ddim_reconstruct, lambda p, s: p["K"] * s.num_steps),
    Method("ife", ife, ddim_reconstruct, _ife_nfe),
    Method("ife_noerr", ife_noerr, ddim_reconstruct, lambda p, s: s.num_steps),
    Method("renoise", renoise, ddim_reconstruct, _renoise_nfe),
    Method("easyinv", easyinv, ddim_reconstruct, lambda p, s: s.num_steps),
    Method("bdia", bdia, bdia_reconstruct, lambda p, s: s.num_steps, "pair", lambda s: s.num_steps - 1),
    # below: on a grid topped by sigma = 1 the exact chain stops at N - 1 (methods.base.exact_top)
    Method("belm", belm, belm_reconstruct, lambda p, s: exact_top(s, "belm"), "pair",
           lambda s: exact_top(s, "belm") - 1),
    Method("edict", edict, edict_reconstruct, lambda p, s: 2 * exact_top(s, "edict"), "pair",
           lambda s: 2 * exact_top(s, "edict")),
    Method("erddci", erddci, erddci_reconstruct, lambda p, s: 2 * exact_top(s, "erddci"), "latent + main trajectory",
           lambda s: exact_top(s, "erddci")),
    # the 1-NFE rivals: one extra call at the start (uni_inv, fireflow), two calls a step (rf_solver)
    Method("uni_inv", uni_inv, ddim_reconstruct, lambda p, s: s.num_steps + 1),
    Method("fireflow", fireflow, fireflow_reconstruct, lambda p, s: s.num_steps + 1,
           reconstruct_nfe=lambda s: s.num_steps + 1, paths=("flow",)),
    Method("rf_solver", rf_solver, rf_solver_reconstruct, lambda p, s: 2 * s.num_steps,
           reconstruct_nfe=lambda s: 2 * s.num_steps, paths=("flow",)),
]}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "ParamError", "get_method", "EpsFn", "Callback", "levels", "ddim_reconstruct",
           "ddim", "euler", "fpi", "aidi_e", "aidi_a", "ife", "ife_noerr", "renoise", "easyinv", "bdia", "belm",
           "edict", "erddci", "uni_inv", "fireflow", "rf_solver"]

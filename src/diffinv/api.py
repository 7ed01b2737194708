"""The public entry points: ``invert`` and ``reconstruct`` any registered method on any model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .methods import EpsFn, get_method
from .models.base import Conditioning, DiffusionModel, Prompt
from .schedule import Schedule


@dataclass(frozen=True)
class Run:
    """One inversion setting: a method and its parameters, N and the guidance of both directions.

    ``Run("fpi", {"K": 5})`` is FPI with K = 5 at N = 50 without guidance. ``params`` are checked against the
    method's signature and completed with its defaults; ``reconstruction_guidance`` defaults to ``guidance``,
    ``name`` to the method; ``dtype`` is the network's dtype for this run only (a precision ablation; None:
    the model's). :attr:`signature` is every setting that can change a result, and nothing else.
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    num_steps: int = 50
    guidance: float = 1.0
    reconstruction_guidance: float | None = None
    dtype: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", get_method(self.method).resolve(dict(self.params)))
        if self.reconstruction_guidance is None:
            object.__setattr__(self, "reconstruction_guidance", self.guidance)
        if not self.name:
            object.__setattr__(self, "name", self.method)

    @property
    def signature(self) -> str:
        own_dtype = [self.dtype] if self.dtype else []  # unset, a run keeps the signature it always had
        return json.dumps([self.method, self.params, self.num_steps, self.guidance, self.reconstruction_guidance,
                           *own_dtype], sort_keys=True, default=str)

    def as_dict(self) -> dict[str, Any]:
        """A row of ``runs.csv`` (:meth:`from_dict` reads it back)."""
        return {"run": self.name, "method": self.method, "params": json.dumps(self.params, sort_keys=True),
                "num_steps": self.num_steps, "guidance": self.guidance,
                "reconstruction_guidance": self.reconstruction_guidance, "run_dtype": self.dtype or ""}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Run":
        """The inverse of :meth:`as_dict` (a row of ``runs.csv``, as text or numbers)."""
        return cls(row["method"], json.loads(row["params"] or "{}"), int(row["num_steps"]), float(row["guidance"]),
                   float(row["reconstruction_guidance"]), row.get("run_dtype") or None, row["run"])


@dataclass
class InversionResult:
    method: str
    params: dict[str, Any]
    state: Any                       # what the method's reconstruction starts from
    schedule: Schedule
    guidance: float
    nfe: int                         # network evaluations per image, counted by the model
    trajectory: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def latent(self) -> Tensor:
        """The inverted latent z_N (the first of a pair)."""
        return self.state if isinstance(self.state, Tensor) else self.state[0]


def guided_eps(model: DiffusionModel, schedule: Schedule, cond: Conditioning, guidance: float) -> EpsFn:
    """``eps(z, i)``: the model's guided prediction (:class:`~diffinv.algebra.Prediction`) at schedule level i (its
    label and ``(a_i, s_i)``), a grid level or, on the flow path, a half level ``i - 1/2`` (:meth:`Schedule.midpoint`)."""
    return lambda z, i: model.predict(z, schedule.label(i), cond, guidance, level=(schedule.a(i), schedule.s(i)))


def _setup(model: DiffusionModel, latent: Tensor, cond: Conditioning | Prompt, schedule: Schedule | None,
           num_steps: int) -> tuple[Schedule, Conditioning]:
    schedule = schedule or model.schedule(num_steps, tuple(latent.shape))
    model.check_schedule(schedule)
    return schedule, model.as_conditioning(cond, latent.shape[0])


def invert(method: str, model: DiffusionModel, z0: Tensor, cond: Conditioning | Prompt = None, *,
           schedule: Schedule | None = None, num_steps: int = 50, guidance: float = 1.0,
           trajectory: bool = False, progress: bool = False, **params: Any) -> InversionResult:
    """Invert clean latents ``z0`` (B, ...) to level N with ``method`` and its ``params``.

    ``cond`` is a prompt, one prompt per image, ``None`` (the empty prompt) or a Conditioning.
    ``trajectory=True`` keeps the per-step dicts the method reports (see ``diffinv.methods.base``).
    """
    spec = get_method(method)
    params = spec.resolve(params)
    schedule, conditioning = _setup(model, z0, cond, schedule, num_steps)
    steps: list[dict[str, Any]] | None = [] if trajectory else None
    start = model.nfe
    with torch.no_grad():
        state = spec.invert(guided_eps(model, schedule, conditioning, guidance), z0, schedule,
                            callback=None if steps is None else steps.append, disable=not progress, **params)
    return InversionResult(method, params, state, schedule, guidance, model.nfe - start, steps)


def reconstruct(method: str, model: DiffusionModel, result: InversionResult, cond: Conditioning | Prompt = None,
                *, schedule: Schedule | None = None, guidance: float | None = None,
                progress: bool = False) -> Tensor:
    """Map an inversion back to level 0 with the method's own reconstruction.

    Schedule and guidance default to those of the inversion (exact methods need them equal).
    """
    if method != result.method:
        raise ValueError(f"result was inverted with {result.method!r}, not {method!r}")
    spec = get_method(method)
    schedule, conditioning = _setup(model, result.latent, cond, schedule or result.schedule, result.schedule.num_steps)
    guidance = result.guidance if guidance is None else guidance
    with torch.no_grad():
        return spec.reconstruct(guided_eps(model, schedule, conditioning, guidance), result.state, schedule,
                                disable=not progress, **spec.reconstruct_params(result.params))

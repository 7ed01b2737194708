"""The time grid: levels 0..N of a Gaussian path ``z = a_i x + s_i eps``, from a diffusers scheduler config.

Every method is written with ``(a_i, s_i)`` alone (``docs/methods.md``, "Notation" and "Two paths, one
algebra"), so one grid object serves two families:

- VP / DDIM (Stable Diffusion 1.x, 2.x, SDXL): ``a_i = sqrt(alpha_bar_i)``, ``s_i = sqrt(1 - alpha_bar_i)``,
  the grid of diffusers' ``DDIMScheduler.set_timesteps``. Level 0 is the clean latent; its alpha-bar is
  the scheduler's ``final_alpha_cumprod`` (``alphas_cumprod[0]`` when ``set_alpha_to_one`` is False, as
  in Stable Diffusion). Level i >= 1 has the integer timestep ``tau_i``; ``tau`` ascends with i.
- Rectified flow (SD3, FLUX.1): ``a_i = 1 - sigma_i``, ``s_i = sigma_i``, the grid of diffusers'
  ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (its ``shift``, or with ``use_dynamic_shifting``
  the shift ``mu`` for the image's token count, as FLUX's pipeline computes it). Level 0 is the
  scheduler's terminal ``sigma = 0``; level i >= 1 has the scheduler's float timestep
  ``sigma_i * num_train_timesteps``, the label the pipelines pass to their transformer. The top level of
  the pipelines' grids is ``sigma = 1``, where ``a = 0``: :mod:`diffinv.algebra` says what that means.

Half levels. The flows' midpoint solvers (FireFlow, RF-Solver) evaluate the network halfway between two
grid levels. ``i - 1/2`` (a :class:`~fractions.Fraction`, as :meth:`Schedule.midpoint` returns, or the float)
is such a level on the flow path: its sigma is the mean of the two sigmas and its label the mean of the two
labels (``sigma * num_train_timesteps`` to the labels' own float32 precision), as the official code passes
``t + (t_next - t) / 2``. A VP grid has no half levels: a network trained on integer timesteps has no label
between two of them that is not a choice of ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping

# The scheduler config shipped with CompVis/stable-diffusion-v1-4 (scheduler/scheduler_config.json).
# The analytic model uses it too, so both presets walk the same grid.
STABLE_DIFFUSION_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# The scheduler config shipped with stabilityai/stable-diffusion-3-medium-diffusers (and SD3.5): a
# rectified flow with a fixed shift of 3. The analytic model's flow path uses it by default.
SD3_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}

SIGMA_GRIDS = ("scheduler", "flux")

# Keys of Stable Diffusion 1.x/2.x scheduler configs (PNDMScheduler's) that DDIMScheduler does not take;
# from_config drops them silently too.
_PNDM_ONLY_KEYS = frozenset({"skip_prk_steps"})


def ddim_scheduler(config: Mapping[str, Any]):
    """``DDIMScheduler.from_config(config)``, built directly when every key is one DDIM takes (or PNDM's
    ``skip_prk_steps``): ``from_config`` imports every compatible scheduler class to sort the keys,
    about 1.2 s of a job's start. Any other key goes through ``from_config``, its filtering and warning."""
    import inspect

    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    accepted = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    if set(config) <= accepted | _PNDM_ONLY_KEYS:
        return DDIMScheduler(**{k: v for k, v in config.items() if k in accepted})
    return DDIMScheduler.from_config(config)


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """Does this scheduler config describe a rectified flow (``FlowMatch*`` schedulers)?"""
    return str(config.get("_class_name", "")).startswith("FlowMatch")


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """``mu`` for an image of ``image_seq_len`` tokens: linear from ``base_shift`` at ``base_seq_len`` to
    ``max_shift`` at ``max_seq_len``. A copy of ``diffusers.pipelines.flux.pipeline_flux.calculate_shift``
    (pipeline code, whose module imports transformers; ``tests/test_flow.py`` checks the two agree)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


@dataclass(frozen=True)
class Schedule:
    """Levels ``0..N``: ``timesteps[i]`` (the network's label) and ``(a_i, s_i)``, from ``alpha_bar`` (VP)
    or ``sigmas`` (rectified flow), exactly one of them.

    Coefficients are Python floats (float64) so that the math keeps the latent's dtype.
    """

    timesteps: tuple[float, ...]
    alpha_bar: tuple[float, ...] | None = None
    sigmas: tuple[float, ...] | None = None
    signal: tuple[float, ...] = field(init=False, repr=False, compare=False)   # a_i
    noise: tuple[float, ...] = field(init=False, repr=False, compare=False)    # s_i

    def __post_init__(self) -> None:
        if (self.alpha_bar is None) == (self.sigmas is None):
            raise ValueError("a schedule has alpha_bar (VP) or sigmas (rectified flow), exactly one of them")
        values = self.alpha_bar if self.sigmas is None else self.sigmas
        if len(self.timesteps) != len(values) or len(self.timesteps) < 2:
            raise ValueError("a schedule needs matching timesteps and alpha_bar (or sigmas) for levels 0..N, N >= 1")
        if self.sigmas is None:
            if any(not 0.0 < ab <= 1.0 for ab in values):
                raise ValueError("alpha_bar must lie in (0, 1]")
            signal = tuple(math.sqrt(ab) for ab in values)
            noise = tuple(math.sqrt(1.0 - ab) for ab in values)
        else:
            if not (0.0 <= values[0] and all(a < b for a, b in zip(values, values[1:])) and values[-1] <= 1.0):
                raise ValueError(f"sigmas must rise strictly from level 0 within [0, 1], got {values}")
            signal, noise = tuple(1.0 - sigma for sigma in values), tuple(values)
        object.__setattr__(self, "signal", signal)
        object.__setattr__(self, "noise", noise)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    @property
    def path(self) -> str:
        """``"vp"`` (``a^2 + s^2 = 1``) or ``"flow"`` (``a + s = 1``)."""
        return "vp" if self.sigmas is None else "flow"

    def a(self, i: int | Fraction | float) -> float:
        return 1.0 - self._half_sigma(i) if isinstance(i, (Fraction, float)) else self.signal[i]

    def s(self, i: int | Fraction | float) -> float:
        return self._half_sigma(i) if isinstance(i, (Fraction, float)) else self.noise[i]

    def label(self, i: int | Fraction | float) -> float:
        """The network's timestep at level i (a grid level's ``timesteps[i]``, or a half level's mean label)."""
        if isinstance(i, (Fraction, float)):
            below, above = self._half_bounds(i)
            return (self.timesteps[below] + self.timesteps[above]) / 2
        return self.timesteps[i]

    def midpoint(self, i: int) -> Fraction:
        """The half level ``i - 1/2`` between grid levels i - 1 and i (flow path only; see the module docstring)."""
        level = i - Fraction(1, 2)
        self._half_bounds(level)
        return level

    def _half_bounds(self, level: Fraction | float) -> tuple[int, int]:
        if self.path != "flow":
            raise ValueError(f"level {level} lies between grid levels, which only the rectified-flow path has; "
                             f"this schedule is on the {self.path} path")
        above = level + 0.5 if isinstance(level, float) else level + Fraction(1, 2)
        if above != int(above) or not 1 <= above <= self.num_steps:
            raise ValueError(f"level {level} is not halfway between two of the grid levels 0..{self.num_steps}")
        return int(above) - 1, int(above)

    def _half_sigma(self, level: Fraction | float) -> float:
        below, above = self._half_bounds(level)
        return (self.sigmas[below] + self.sigmas[above]) / 2

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any], num_steps: int, *, image_seq_len: int | None = None,
                              sigmas: str = "scheduler") -> "Schedule":
        """The grid of a diffusers scheduler config, computed by that scheduler's own ``set_timesteps``.

        A ``FlowMatch*`` config (by ``_class_name``) gives a rectified-flow grid, any other a DDIM grid.
        Flow options, as the pipelines set them: ``image_seq_len`` (the transformer's image tokens) gives
        ``mu`` when the config has ``use_dynamic_shifting`` and is ignored otherwise; ``sigmas`` is what the
        pipeline passes to ``set_timesteps``: ``"scheduler"`` nothing (the scheduler's own grid, as
        ``StableDiffusion3Pipeline``), ``"flux"`` ``np.linspace(1, 1 / N, N)`` (as ``FluxPipeline``).
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if sigmas not in SIGMA_GRIDS:
            raise ValueError(f"sigmas must be one of {SIGMA_GRIDS}, got {sigmas!r}")
        flow = is_flow_config(config)
        config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        if flow:
            return cls._flow(config, num_steps, image_seq_len, sigmas)
        if sigmas != "scheduler":
            raise ValueError(f"sigmas={sigmas!r} is a rectified-flow option; this scheduler config is a DDIM one")
        return cls._ddim(config, num_steps)

    @classmethod
    def _ddim(cls, config: dict[str, Any], num_steps: int) -> "Schedule":
        """Spacing, ``steps_offset`` and ``set_alpha_to_one`` carry over from the config; clipping and
        thresholding do not apply (the transfer map is always the plain DDIM one)."""
        config["clip_sample"] = False
        scheduler = ddim_scheduler(config)
        scheduler.set_timesteps(num_steps)
        taus = sorted(int(t) for t in scheduler.timesteps)
        step = scheduler.config.num_train_timesteps // num_steps
        if any(b - a != step for a, b in zip(taus, taus[1:])):
            raise ValueError(f"unsupported timestep grid {taus[:3]}... (uneven); use 'leading' or 'trailing' spacing")
        if taus[0] - step >= 0:
            # The level-0 alpha-bar below is what DDIMScheduler.step uses for the last step only
            # when tau_1 - step < 0; other grids would need a different level 0.
            raise ValueError(f"{num_steps} steps of {scheduler.config.num_train_timesteps} training timesteps put the "
                             f"first level at timestep {taus[0]}, not below the step {step}: DDIM has no level 0 "
                             f"for that grid; use fewer steps")
        acp = scheduler.alphas_cumprod.double()
        final = float(scheduler.final_alpha_cumprod)
        return cls(timesteps=(0, *taus), alpha_bar=(final, *(float(acp[t]) for t in taus)))

    @classmethod
    def _flow(cls, config: dict[str, Any], num_steps: int, image_seq_len: int | None, grid: str) -> "Schedule":
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        c = scheduler.config
        if c.invert_sigmas:
            raise ValueError("invert_sigmas (a path from data at sigma = 1) is not a rectified flow's grid here")
        options: dict[str, Any] = {}
        if c.use_dynamic_shifting:
            if image_seq_len is None:
                raise ValueError("this flow scheduler shifts with the image size (use_dynamic_shifting): the "
                                 "schedule needs image_seq_len, the transformer's image tokens")
            options["mu"] = calculate_shift(image_seq_len, c.base_image_seq_len, c.max_image_seq_len,
                                            c.base_shift, c.max_shift)
        if grid == "flux":
            options["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)
        scheduler.set_timesteps(num_steps, **options)
        # descending, N timesteps and N + 1 sigmas (the terminal 0 appended); levels ascend
        taus = [float(t) for t in scheduler.timesteps.flip(0)]
        levels = [float(s) for s in scheduler.sigmas.flip(0)]
        if len(taus) != num_steps or len(levels) != num_steps + 1 or levels[0] != 0.0:
            raise ValueError(f"unexpected flow grid: {len(taus)} timesteps, sigmas from {levels[0]}")
        return cls(timesteps=(0.0, *taus), sigmas=tuple(levels))

    @classmethod
    def stable_diffusion(cls, num_steps: int = 50) -> "Schedule":
        return cls.from_scheduler_config(STABLE_DIFFUSION_SCHEDULER_CONFIG, num_steps)

    @classmethod
    def rectified_flow(cls, num_steps: int = 50, shift: float = 3.0) -> "Schedule":
        """The SD3 grid (:data:`SD3_SCHEDULER_CONFIG`), optionally with another fixed ``shift``."""
        return cls.from_scheduler_config({**SD3_SCHEDULER_CONFIG, "shift": shift}, num_steps)

"""The DDIM time grid: levels 0..N with their alpha-bar, built from a diffusers scheduler config.

Level 0 is the clean latent; its alpha-bar is the scheduler's ``final_alpha_cumprod``
(``alphas_cumprod[0]`` when ``set_alpha_to_one`` is False, as in Stable Diffusion). Level i >= 1
has timestep ``tau_i``; ``tau`` ascends with i. See ``shared/design/methods.md``, "Notation".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Schedule:
    """Levels ``0..N``: ``timesteps[i]`` (the network's label) and ``alpha_bar[i]``.

    Coefficients are Python floats (float64) so that the math keeps the latent's dtype.
    """

    timesteps: tuple[int, ...]
    alpha_bar: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.timesteps) != len(self.alpha_bar) or len(self.timesteps) < 2:
            raise ValueError("a schedule needs matching timesteps and alpha_bar for levels 0..N, N >= 1")
        if any(not 0.0 < ab <= 1.0 for ab in self.alpha_bar):
            raise ValueError("alpha_bar must lie in (0, 1]")

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    def a(self, i: int) -> float:
        return math.sqrt(self.alpha_bar[i])

    def s(self, i: int) -> float:
        return math.sqrt(1.0 - self.alpha_bar[i])

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any], num_steps: int) -> "Schedule":
        """DDIM grid of a diffusers scheduler config, computed by diffusers' own ``set_timesteps``.

        Spacing, ``steps_offset`` and ``set_alpha_to_one`` carry over from the config; clipping
        and thresholding do not apply (the transfer map is always the plain DDIM one).
        """
        from diffusers import DDIMScheduler

        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        config["clip_sample"] = False
        scheduler = DDIMScheduler.from_config(config)
        scheduler.set_timesteps(num_steps)
        taus = sorted(int(t) for t in scheduler.timesteps)
        step = scheduler.config.num_train_timesteps // num_steps
        if any(b - a != step for a, b in zip(taus, taus[1:])) or taus[0] - step >= 0:
            # The level-0 alpha-bar below is what DDIMScheduler.step uses for the last step only
            # when tau_1 - step < 0; other grids would need a different level 0.
            raise ValueError(f"unsupported timestep grid {taus[:3]}...; use 'leading' or 'trailing' spacing")
        acp = scheduler.alphas_cumprod.double()
        final = float(scheduler.final_alpha_cumprod)
        return cls(timesteps=(0, *taus), alpha_bar=(final, *(float(acp[t]) for t in taus)))

    @classmethod
    def stable_diffusion(cls, num_steps: int = 50) -> "Schedule":
        return cls.from_scheduler_config(STABLE_DIFFUSION_SCHEDULER_CONFIG, num_steps)

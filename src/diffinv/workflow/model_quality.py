"""How good a trained network is: its noise-prediction MSE at given timesteps against the true noise, beside
the exact posterior mean of a Gaussian-mixture prior (Bayes-optimal when the data follow that prior, which
photographs do not) and trivial predictors, with the paired per-image difference to the mixture.

Rule ``model_quality`` writes it as ``tables/<preset>/model_quality``; the network is trained by
:mod:`diffinv.workflow.training`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from ..models.base import Conditioning
from .results import mean_ci
from .tables import verdict


def noise_prediction_errors(models: Mapping[str, Any], images: Tensor, timesteps: Sequence[int], *,
                            prior_mean: Tensor | None = None, draws: int = 4, seed: int = 0,
                            reference: str | None = None) -> list[dict[str, Any]]:
    """Per timestep and predictor, the noise-prediction MSE over ``images`` (B, 3, H, W) in [-1, 1] and
    ``draws`` noise draws each: ``z = a x + s n``, the MSE of ``eps_hat(z)`` against ``n`` per image (mean
    over draws and elements), then its mean and 95% CI over images.

    ``models``: name -> a :class:`~diffinv.models.DiffusionModel` (its guided noise prediction at the level
    ``(a, s)``; all on the same training schedule). Trivial predictors beside them: ``zero`` (``eps_hat = 0``,
    MSE about 1) and, given ``prior_mean`` (an image), ``prior_mean``: ``eps_hat = (z - a m) / s``, the
    noise if the data were the prior mean. Given ``reference`` (a key of ``models``), each other model also gets
    a row ``<name>-<reference>``: the paired per-image difference of their MSEs, with its CI and what the CI
    supports (``lower``: the model's error is below the reference's)."""

    first = next(iter(models.values()))
    acp = first.alphas_cumprod
    for name, model in models.items():
        if not torch.equal(model.alphas_cumprod, acp):
            raise ValueError(f"model {name!r} has another training schedule than {next(iter(models))!r}")
    x = images.double()
    generator = torch.Generator().manual_seed(seed)
    unconditional = Conditioning(None, None)
    rows = []
    for t in timesteps:
        alpha_bar = float(acp[t])
        a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        errors: dict[str, Tensor] = {}
        for _ in range(draws):
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            z = a * x + s * noise
            predictions = {name: model.eps(z.to(model.latent_dtype), t, unconditional, level=(a, s)).double()
                           for name, model in models.items()}
            predictions["zero"] = torch.zeros_like(z)
            if prior_mean is not None:
                predictions["prior_mean"] = (z - a * prior_mean.double()) / s
            for name, prediction in predictions.items():
                per_image = (prediction - noise).pow(2).flatten(1).mean(1)
                errors[name] = errors.get(name, 0) + per_image / draws
        if reference is not None:
            errors |= {f"{name}-{reference}": errors[name] - errors[reference] for name in models if name != reference}
        for name, per_image in errors.items():
            series = pd.Series(per_image.numpy())
            mean, ci = mean_ci(series)
            rows.append({"timestep": t, "alpha_bar": alpha_bar, "predictor": name, "mse": mean, "mse_ci95": ci,
                         "images": len(per_image), "draws": draws,
                         **({"verdict": verdict(series, mean, ci)} if name.endswith(f"-{reference}") else {})})
    return rows


def error_table(rows: Sequence[Mapping[str, Any]], reference: str = "mixture") -> pd.DataFrame:
    """:func:`noise_prediction_errors`' rows as one line per (dataset, timestep): each predictor's MSE with its
    CI, each model's MSE over ``reference``'s (1: as good as the Bayes-optimal predictor for its prior), and,
    where the rows hold them, the paired difference to ``reference`` with its CI and verdict."""
    frame = pd.DataFrame(rows)
    keys = [k for k in ("dataset", "timestep", "alpha_bar") if k in frame]
    out = frame[keys].drop_duplicates().reset_index(drop=True)
    names = list(dict.fromkeys(frame["predictor"]))
    paired = [n for n in names if n.endswith(f"-{reference}")]
    predictors = [n for n in names if n not in paired]
    for name in predictors:
        part = frame[frame["predictor"] == name].set_index(keys)[["mse", "mse_ci95"]]
        part.columns = [name, f"{name}_ci95"]
        out = out.join(part, on=keys)
    for name in predictors:
        if name not in (reference, "zero", "prior_mean"):
            out[f"{name}_over_{reference}"] = out[name] / out[reference]
    for name in paired:
        model = name[: -len(reference) - 1]
        part = frame[frame["predictor"] == name].set_index(keys)[["mse", "mse_ci95", "verdict"]]
        part.columns = [f"{model}_minus_{reference}", f"{model}_minus_{reference}_ci95", f"{model}_vs_{reference}"]
        out = out.join(part, on=keys)
    out["images"] = frame.groupby(keys, sort=False)["images"].first().to_numpy()
    out["draws"] = frame.groupby(keys, sort=False)["draws"].first().to_numpy()
    return out

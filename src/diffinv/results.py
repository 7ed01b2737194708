"""Aggregates of the workflow's per-image rows: means with 95% confidence intervals per run."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from .config import Run, nfe_estimate

QUALITY = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "mse", "latent_mse")
COST = ("nfe_inversion", "nfe_reconstruction", "seconds_inversion", "seconds_reconstruction", "peak_mem_mb")


def mean_ci(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (NaN below two finite values).

    An infinite PSNR (bit-exact reconstruction) keeps the mean infinite and the interval NaN.
    """
    x = values.to_numpy(dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    mean = float(np.mean(x))
    if len(x) < 2 or not np.isfinite(x).all():
        return mean, float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))
    return mean, float(half)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, run): counts, mean and ci95 of every metric present, mean costs."""
    out = []
    for (dataset, run), group in rows.groupby(["dataset", "run"], sort=False):
        ok = group[group["status"] == "ok"]
        entry: dict[str, Any] = {"dataset": dataset, "run": run, "method": group["method"].iloc[0],
                                 "params": group["params"].iloc[0], "num_steps": group["num_steps"].iloc[0],
                                 "images": len(group), "errors": len(group) - len(ok)}
        for metric in (m for base in QUALITY for m in (base, f"{base}_vae") if m in rows):
            entry[metric], entry[f"{metric}_ci95"] = mean_ci(ok[metric])
        for cost in COST:
            entry[cost] = float(ok[cost].mean()) if len(ok) else float("nan")
        out.append(entry)
    return pd.DataFrame(out)


def run_table(runs: dict[str, Run], aliases: dict[str, str],
              model: Mapping[str, Any] | str = "stable_diffusion") -> pd.DataFrame:
    """The settings of every run, with the sweep names that alias an identical run (NFE on the configured
    ``model``: :func:`diffinv.config.nfe_estimate`)."""
    table = [{**run.as_dict(), "alias_of": "", "nfe_per_image": nfe_estimate(run, model)} for run in runs.values()]
    table += [{**runs[target].as_dict(), "run": alias, "alias_of": target,
               "nfe_per_image": nfe_estimate(runs[target], model)} for alias, target in aliases.items()]
    return pd.DataFrame(table)

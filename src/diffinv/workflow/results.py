"""Aggregates of the workflow's per-image rows: means with 95% confidence intervals per run."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..api import Run
from .config import nfe_estimate

QUALITY = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "mse", "latent_mse")
COST = ("nfe_inversion", "nfe_reconstruction", "seconds_inversion", "seconds_reconstruction", "peak_mem_mb")


def read_shard(path: str | Path, ids: Sequence[str], run: str, dataset: str) -> pd.DataFrame:
    """A finished shard's rows, checked against what it must hold: ``ids`` (its slice of the manifest, in
    order), one complete row each, all of ``run`` on ``dataset``. A file cut short, a row with fields
    missing, or rows of other images raise ValueError naming the file: it must be made again."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    remedy = "delete it and rerun the workflow to make it again"
    records = list(csv.reader(io.StringIO(text, newline="")))
    if not text.endswith("\n") or not records:
        raise ValueError(f"{path}: cut short (no final line end); {remedy}")
    header = records[0]
    short = [n + 2 for n, record in enumerate(records[1:]) if len(record) != len(header)]
    if short:
        raise ValueError(f"{path}: line {short[0]} has not the header's {len(header)} fields; {remedy}")
    rows = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=["nan"], dtype={"id": str})
    found = list(rows["id"]) if "id" in rows else []
    if found != list(ids):
        missing, extra = sorted(set(ids) - set(found)), sorted(set(found) - set(ids))
        raise ValueError(f"{path}: {len(found)} rows for the {len(ids)} images of its slice of the manifest "
                         f"(missing {missing[:5]}, not in the slice {extra[:5]}); {remedy}")
    if not ((rows["run"] == run).all() and (rows["dataset"] == dataset).all()):
        raise ValueError(f"{path}: rows of another run or dataset than {run!r} on {dataset!r}; {remedy}")
    return rows


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
    ``model``: :func:`diffinv.workflow.config.nfe_estimate`)."""
    table = [{**run.as_dict(), "alias_of": "", "nfe_per_image": nfe_estimate(run, model)} for run in runs.values()]
    table += [{**runs[target].as_dict(), "run": alias, "alias_of": target,
               "nfe_per_image": nfe_estimate(runs[target], model)} for alias, target in aliases.items()]
    return pd.DataFrame(table)

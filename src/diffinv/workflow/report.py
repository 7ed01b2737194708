"""What the report notebooks read and compute: figure inputs from the workflow's results and the cost
of the paper preset (``diffinv.workflow.notebooks`` executes the notebooks).

The notebooks stay thin: they call these functions and ``diffinv.workflow.figures``/``diffinv.workflow.tables``, so
every number they show is computed by tested library code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..api import Run
from .config import expand_runs, nfe_estimate
from .data.captions import read_manifest
from ..evaluation.images import load_image

# ---------------------------------------------------------------- images for Figures 3 and 4


def recon_path(results: str | Path, dataset: str, run: str, image_id: str) -> Path:
    """The saved reconstruction of one image (the qualitative subset only), whatever its shard."""
    found = sorted(p for p in (Path(results) / "recon" / dataset / run).glob("*/*.png") if p.stem == image_id)
    if not found:
        raise FileNotFoundError(f"no reconstruction of {image_id!r} for run {run!r} in "
                                f"{Path(results) / 'recon' / dataset / run} (is it in the qualitative subset?)")
    return found[0]


def originals(manifest: str | Path, images_dir: str | Path, resolution: int, count: int) -> dict[str, np.ndarray]:
    """The first ``count`` usable images of a manifest, cropped and resized as the runs saw them."""
    from .data.captions import inside

    out: dict[str, np.ndarray] = {}
    for item in read_manifest(manifest, strict=False):
        if len(out) == count:
            break
        if item.get("status", "ok") == "ok" and not item.get("manifest_error"):
            out[item["id"]] = load_image(inside(images_dir, item["file"]), size=resolution)
    return out


def reconstruction_cell(results: str | Path, rows: pd.DataFrame, dataset: str, run: str,
                        image_id: str) -> tuple[Any, str]:
    """One run's cell for one image and its caption: the saved reconstruction and its PSNR, or, for an
    error row, a :class:`~diffinv.workflow.figures.FailedCell` with the row's reason (a figure shows the failure
    instead of failing). A row that is ``ok`` must have its reconstruction."""
    from .figures import FailedCell

    row = rows[(rows["dataset"] == dataset) & (rows["run"] == run) & (rows["id"].astype(str) == image_id)]
    if len(row) != 1:
        raise ValueError(f"{len(row)} rows of {image_id!r} for run {run!r} on {dataset!r} in results.csv, not one")
    status = str(row["status"].iloc[0])
    if status != "ok":
        reason = status.removeprefix("error: ")
        return FailedCell(reason), f"failed: {reason[:40]}"
    return load_image(recon_path(results, dataset, run, image_id)), _psnr_text(float(row["psnr"].iloc[0]))


def grid_cells(results: str | Path, rows: pd.DataFrame, dataset: str, images: dict[str, np.ndarray],
               runs: Sequence[str | None]) -> tuple[list[list[np.ndarray | None]], list[list[str]]]:
    """Per image: the original, then each run's reconstruction (``None`` leaves a blank cell); the
    caption under each reconstruction is that image's PSNR from ``results.csv``."""
    cells, captions = [], []
    for image_id, original in images.items():
        row, text = [original], [""]
        for run in runs:
            cell, caption = (None, "") if run is None else reconstruction_cell(results, rows, dataset, run, image_id)
            row.append(cell)
            text.append(caption)
        cells.append(row)
        captions.append(text)
    return cells, captions


def iteration_grid(results: str | Path, rows: pd.DataFrame, sweep: pd.DataFrame, dataset: str,
                   images: dict[str, np.ndarray], methods: Sequence[str]) -> dict[str, Any]:
    """Figure 4's cells from Table 4's rows (``tables.iteration_sensitivity``): per image a block of
    one row per method, one column per K; the first column holds the original and IFE."""
    from .figures import name

    sweep = sweep[sweep["dataset"] == dataset]
    ks = sorted({int(k) for k in sweep["K"].dropna()})
    ife = sweep[sweep["method"] == "ife"]["run"].tolist()
    methods = [m for m in methods if (sweep["method"] == m).any()]
    cells, captions, row_titles = [], [], []
    for image_id, original in images.items():
        for index, method in enumerate(methods):
            first: Any = None
            first_caption = ""
            if index == 0:
                first = original
                first_caption = f"original ({image_id})"
            elif index == 1 and ife:
                first, caption = reconstruction_cell(results, rows, dataset, ife[0], image_id)
                first_caption = f"IFE ({ife[0]}): {caption}"
            row, text = [first], [first_caption]
            by_k = sweep[sweep["method"] == method].set_index("K")["run"]
            for k in ks:
                run = by_k.get(k)
                cell, caption = (None, "") if run is None else reconstruction_cell(results, rows, dataset, run,
                                                                                  image_id)
                row.append(cell)
                text.append(caption)
            cells.append(row)
            captions.append(text)
            row_titles.append(name(method))
    return {"cells": cells, "captions": captions, "row_titles": row_titles,
            "column_titles": ["reference", *[f"K = {k}" for k in ks]]}


def _psnr_text(value: float) -> str:
    return "exact (∞ dB)" if np.isposinf(value) else f"{value:.1f} dB"


# ---------------------------------------------------------------- quality against cost


def cost_points(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One point per computed run, pooled over datasets: mean inversion NFE and seconds, mean quality."""
    computed = runs[runs["alias_of"].fillna("") == ""].set_index("run")
    ok = rows[(rows["status"] == "ok") & rows["run"].isin(computed.index)]
    grouped = ok.groupby("run", sort=False)
    points = pd.DataFrame({"method": grouped["method"].first(), "nfe": grouped["nfe_inversion"].mean(),
                           "seconds": grouped["seconds_inversion"].mean(), "psnr": grouped["psnr"].mean(),
                           "ssim": grouped["ssim"].mean(), "images": grouped.size()})
    for metric in ("lpips_alex", "lpips_vgg"):
        if metric in ok:
            points[metric] = grouped[metric].mean()
    points["num_steps"] = computed.loc[points.index, "num_steps"]
    points["params"] = computed.loc[points.index, "params"]
    return points.reset_index()


# ---------------------------------------------------------------- the paper preset's budget

# The diffusers documentation ("Speed up inference", v0.33.1): 3.51 s for 50 DDIM steps of SD v1.x at
# 512 px on an A100 in float16 with classifier-free guidance, i.e. 100 UNet image-passes. This project
# counts one image-pass as one NFE, so the rate is 3.51 / 100 s per NFE.
ASSUMED_SOURCE = ("assumed: 3.51 s for 50 guided DDIM steps (100 UNet image-passes) of SD at 512 px on an "
                  "A100 in float16, diffusers docs 'Speed up inference' v0.33.1")


@dataclass(frozen=True)
class Rate:
    """Seconds per NFE (one UNet image-pass) and where the figure comes from; VAE seconds per image
    where measured."""

    seconds_per_nfe: float
    source: str
    vae_encode_seconds: float | None = None
    vae_decode_seconds: float | None = None


def budget_rate(preset: dict[str, Any], throughput: str | Path | None = None, device: str | None = None) -> Rate:
    """The rate to price ``preset`` at: the measurement of ``device`` at the preset's dtype and UNet batch
    (``batch_size`` images, twice that when any run is guided) from the throughput file
    (``benchmarks/sd_throughput.py``), or else the documented rate ``report.seconds_per_nfe``, labelled
    as an assumption. ``device=None``: the preset's device on this machine, if it has one."""
    from . import throughput as bench

    model = preset["model"]
    runs, _ = expand_runs(preset)
    guided = any(r.guidance != 1 or r.reconstruction_guidance != 1 for r in runs.values())
    rows = preset["batch_size"] * (2 if guided else 1)
    if device is None and model["device"].startswith("cuda"):
        import torch

        device = bench.device_name(model["device"]) if torch.cuda.is_available() else None
    entry = bench.lookup(throughput, device, model["dtype"], rows) if throughput and device else None
    if entry is None:
        return Rate(float(preset["report"]["seconds_per_nfe"]), ASSUMED_SOURCE)
    return Rate(float(entry["unet_seconds_per_pass"]),
                f"measured on {device} ({model['dtype']}, {rows} UNet rows per call; benchmarks/sd_throughput.py)",
                entry.get("vae_encode_seconds"), entry.get("vae_decode_seconds"))


def preset_budget(config: dict[str, Any], measured: pd.DataFrame, measured_runs: pd.DataFrame,
                  rate: Rate | float) -> pd.DataFrame:
    """Network evaluations and GPU-hours of every run of a preset (normally the paper's).

    NFE per image (inversion + reconstruction, a guided call counted as two image-passes) is taken
    from ``measured`` rows of a run with the same method, parameters, step count and guidance, since
    NFE does not depend on the network; a run without such a measurement falls back to the method
    registry's formula, and the ``nfe_source`` column says which. GPU-hours = images x NFE x the
    rate's seconds per NFE / 3600. ``vae_hours``: each image of a run is encoded once and decoded
    twice (its reconstruction and the VAE round trip the ``*_vae`` metrics compare with), an error-
    statistics image encoded once; NaN where the rate has no VAE measurement.
    """
    rate = rate if isinstance(rate, Rate) else Rate(float(rate), "given")
    runs, _ = expand_runs(config)
    images = sum(spec.get("count", 0) for spec in config["datasets"].values())
    by_setting = _measured_nfe(measured, measured_runs)
    encode = rate.vae_encode_seconds if rate.vae_encode_seconds is not None else math.nan
    decode = rate.vae_decode_seconds if rate.vae_decode_seconds is not None else math.nan
    out = []
    for run in runs.values():
        nfe = by_setting.get(run.signature)
        out.append({"run": run.name, "method": run.method, "images": images,
                    "nfe_round_trip": nfe if nfe is not None else float(nfe_estimate(run, config["model"])),
                    "nfe_source": "measured" if nfe is not None else "formula",
                    "vae_seconds_per_image": encode + 2 * decode})
    stats = config["error_stats"]
    for name in stats["runs"]:
        run = runs[name]
        # The reference solve may take up to max_iter evaluations per step: an upper bound.
        out.append({"run": f"error statistics: {name}", "method": run.method,
                    "images": stats["images"] * len(config["datasets"]),
                    "nfe_round_trip": float(nfe_estimate(run, config["model"]) + run.num_steps * stats["max_iter"]),
                    "nfe_source": "bound", "vae_seconds_per_image": encode})
    table = pd.DataFrame(out)
    table["nfe_all_images"] = table["images"] * table["nfe_round_trip"]
    table["gpu_hours"] = table["nfe_all_images"] * rate.seconds_per_nfe / 3600.0
    table["vae_hours"] = table["images"] * table.pop("vae_seconds_per_image") / 3600.0
    total = {"run": "total", "method": "", "nfe_source": "", "nfe_all_images": table["nfe_all_images"].sum(),
             "gpu_hours": table["gpu_hours"].sum(), "vae_hours": table["vae_hours"].sum(min_count=len(table))}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def _measured_nfe(rows: pd.DataFrame, runs: pd.DataFrame) -> dict[str, float]:
    ok = rows[rows["status"] == "ok"]
    per_run = (ok["nfe_inversion"] + ok["nfe_reconstruction"]).groupby(ok["run"]).mean()
    out = {}
    for _, spec in runs[runs["alias_of"].fillna("") == ""].iterrows():
        if spec["run"] in per_run:
            out[Run.from_dict(spec).signature] = float(per_run[spec["run"]])
    return out

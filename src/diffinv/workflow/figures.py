"""The paper's figures from the workflow's results, in one seaborn style, saved byte-stable.

Every function takes plain frames or image arrays and returns a matplotlib ``Figure``; ``save``
writes it as PNG and PDF with no timestamp, so rebuilding unchanged results changes no file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; a notebook still shows the returned figure inline

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# One name and one colour per method across every figure.
NAMES = {"ddim": "DDIM", "ife": "IFE", "ife_noerr": "IFE w/o error approx.", "easyinv": "EasyInv", "fpi": "FPI",
         "aidi_a": "AIDI-A", "aidi_e": "AIDI-E", "renoise": "ReNoise", "bdia": "BDIA", "edict": "EDICT",
         "erddci": "ERDDCI", "belm": "BELM", "euler": "Euler", "uni_inv": "Uni-Inv", "fireflow": "FireFlow",
         "rf_solver": "RF-Solver"}  # new methods go last: colours stay
_PALETTE = dict(zip(NAMES, sns.color_palette("tab20", 20)[::2] + sns.color_palette("tab20", 20)[1::2]))
DPI = 200
# An RMS error below one 16-bit grey level: a reconstruction no image format can tell from its input
EXACT_PSNR = 20 * math.log10(2**16 - 1)   # 96.3 dB


def name(method: str) -> str:
    return NAMES.get(method, method)


def color(method: str):
    return _PALETTE.get(method, (0.4, 0.4, 0.4))


def theme() -> None:
    """The house style; fonts fixed so another machine renders the same glyphs."""
    sns.set_theme(context="paper", style="whitegrid", font="DejaVu Sans",
                  rc={"figure.dpi": 100, "savefig.dpi": DPI, "axes.titlesize": 9, "axes.labelsize": 9,
                      "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7, "svg.hashsalt": "diffinv"})


def save(fig: Figure, stem: str | Path) -> dict[str, Path]:
    """``<stem>.png`` and ``<stem>.pdf`` without creation dates (same results, same bytes)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"png": stem.with_suffix(".png"), "pdf": stem.with_suffix(".pdf")}
    fig.savefig(paths["png"], dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths["pdf"], bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None})
    return paths


def _footer(fig: Figure, label: str) -> None:
    if label:
        fig.text(0.5, -0.01, label, ha="center", va="top", fontsize=7, style="italic", color="0.3")


# ---------------------------------------------------------------- Figure 2

def error_histograms(stats: pd.DataFrame, runs: Sequence[str], *, label: str = "", bins: int = 30) -> Figure:
    """Figure 2: histograms over images and steps of the fixed-point estimation error's sample mean
    (top) and sample variance (bottom, log axis shared), one column per run (IFE, IFE without error
    approximation, DDIM). Rows whose reference solve did not converge are left out and counted."""
    theme()
    runs = [r for r in runs if (stats["run"] == r).any()]
    if not runs:
        raise ValueError("no error-statistics rows for any of the requested runs")
    fig, axes = plt.subplots(2, len(runs), figsize=(2.9 * len(runs), 4.6), squeeze=False)
    variances = stats.loc[stats["converged"] & (stats["err_var"] > 0), "err_var"]
    var_range = (math.log10(variances.min()), math.log10(variances.max())) if len(variances) else None
    for col, run in enumerate(runs):
        rows = stats[stats["run"] == run]
        ok = rows[rows["converged"]]
        method = rows["method"].iloc[0]
        top, bottom = axes[0, col], axes[1, col]
        sns.histplot(ok["err_mean"], bins=bins, ax=top, color=color(method), edgecolor="white", linewidth=0.3)
        top.axvline(0, color="0.2", linewidth=0.6)
        top.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        dropped = f"; {len(rows) - len(ok)} not converged" if len(ok) < len(rows) else ""
        top.set_title(f"{name(method)} ({run})\n{len(ok)} image-steps{dropped}")
        top.set_xlabel("sample mean of the error", labelpad=9)  # room for the axis' 1e-n offset
        positive = ok[ok["err_var"] > 0]["err_var"]
        sns.histplot(positive, bins=bins, ax=bottom, log_scale=True, binrange=var_range, color=color(method),
                     edgecolor="white", linewidth=0.3)
        if len(positive):
            bottom.axvline(positive.median(), color="0.2", linewidth=0.8, linestyle="--")
        bottom.set_xlabel("sample variance (median dashed)")
        for ax in (top, bottom):
            ax.set_ylabel("count" if col == 0 else "")
    if var_range is not None:
        for ax in axes[1]:
            ax.set_xlim(10 ** (var_range[0] - 0.2), 10 ** (var_range[1] + 0.2))
    fig.tight_layout()
    _footer(fig, label)
    return fig


# ---------------------------------------------------------------- Figures 3 and 4

@dataclass(frozen=True)
class FailedCell:
    """A grid cell whose image failed (an error row): drawn as a grey square saying so."""

    reason: str


def image_grid(cells: Sequence[Sequence[np.ndarray | FailedCell | None]], *, column_titles: Sequence[str] = (),
               row_titles: Sequence[str] = (), captions: Sequence[Sequence[str]] | None = None,
               label: str = "", size: float = 1.35) -> Figure:
    """A grid of uint8 images (``None`` leaves a cell blank, a :class:`FailedCell` is marked failed), titled
    by column and row, each cell with an optional caption under it (e.g. its PSNR)."""
    theme()
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, (size + 0.25) * n_rows), squeeze=False)
    for r, row in enumerate(cells):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = row[c] if c < len(row) else None
            if isinstance(image, FailedCell):
                ax.set_facecolor("0.85")
                ax.text(0.5, 0.5, "failed", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            elif image is not None:
                ax.imshow(image, interpolation="nearest")
            if captions is not None and c < len(captions[r]) and captions[r][c]:
                ax.set_xlabel(captions[r][c], fontsize=7, labelpad=2)
            if r == 0 and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0 and r < len(row_titles):
                ax.set_ylabel(row_titles[r], fontsize=8)
    fig.tight_layout(pad=0.3, h_pad=0.4, w_pad=0.2)
    _footer(fig, label)
    return fig


def placeholder(text: str, *, label: str = "") -> Figure:
    """A figure that says why there is nothing to draw (e.g. a preset without the runs it needs)."""
    theme()
    fig, ax = plt.subplots(figsize=(4.5, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9)
    _footer(fig, label)
    return fig


# ---------------------------------------------------------------- quality against cost

def quality_vs_cost(points: pd.DataFrame, *, metric: str = "psnr", metric_label: str = "PSNR (dB)",
                    costs: Sequence[tuple[str, str]] = (("nfe", "network evaluations per image (inversion)"),
                                                        ("seconds", "seconds per image (inversion)")),
                    label: str = "") -> Figure:
    """One panel per cost: each run is a point (mean over images), a run joined by one line to its K
    variants and by another to its N variants. An exact quality is drawn as a triangle on a dotted top
    line: an infinite one (8-bit scores of a bit-exact method), or a PSNR above :data:`EXACT_PSNR` (float
    scores of an exact method sit at float64 round-off, near 300 dB, and would flatten every other point).
    ``points`` has ``run``, ``method``, the metric and each cost (``diffinv.workflow.report.cost_points``)."""
    theme()
    fig, axes = plt.subplots(1, len(costs), figsize=(4.2 * len(costs), 3.4), squeeze=False)
    values = points[metric].astype(float)
    is_exact = np.isposinf(values) | ((metric == "psnr") & (values >= EXACT_PSNR))
    finite = values[~is_exact].replace(-np.inf, np.nan).dropna()
    span = (finite.max() - finite.min()) if len(finite) else 1.0
    ceiling = (finite.max() + 0.08 * span) if len(finite) else 1.0
    # A family is a configured run and its K and N sweep variants: one legend entry, a line per sweep (IFE
    # with a computed e_0 is its own family, not a point on IFE's line).
    families = points["run"].str.replace(r"-[KN]\d+$", "", regex=True)
    rank = {m: i for i, m in enumerate(NAMES)}
    order = sorted(families.unique(), key=lambda f: (rank.get(points.loc[families == f, "method"].iloc[0], 99), f))
    for ax, (cost, cost_label) in zip(axes[0], costs):
        for family in order:
            group = points[families == family].sort_values("nfe")
            method = group["method"].iloc[0]
            legend = name(method) if family == method else f"{name(method)} ({family})"
            y = group[metric].to_numpy(dtype=float)
            exact = is_exact[group.index].to_numpy()
            if (~exact).any():
                # one line per swept setting: the run with its K variants, the run with its N variants
                sweep = group["run"].str.extract(r"-([KN])\d+$")[0]
                for kind in sweep.dropna().unique():
                    on_line = ((sweep == kind) | sweep.isna()).to_numpy() & ~exact
                    if on_line.sum() > 1:
                        ax.plot(group[cost][on_line], y[on_line], color=color(method), linewidth=1, alpha=0.7,
                                linestyle="-" if family == method else "--")
                ax.scatter(group[cost][~exact], y[~exact], color=color(method), s=16, label=legend, zorder=3,
                           marker="o" if family == method else "s")
            if exact.any():
                top = "∞" if np.isposinf(y[exact]).all() else f"≥ {EXACT_PSNR:.0f} dB"
                ax.scatter(group[cost][exact], np.full(exact.sum(), ceiling), marker="^", color=color(method), s=22,
                           zorder=3, label=f"{legend}: exact ({top})")
        ax.set_xscale("log")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(metric_label)
        if is_exact.any():
            ax.axhline(ceiling, color="0.6", linewidth=0.5, linestyle=":")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    _footer(fig, label)
    return fig


# ---------------------------------------------------------------- the trained network

def training_loss(losses: pd.DataFrame, *, label: str = "", window: int = 50) -> Figure:
    """A trained network's loss curve: the noise-prediction MSE of every step's batch (light) and its mean
    over consecutive ``window``-step chunks (dark), log axis, with the learning rate on a second axis."""
    theme()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    ax.plot(losses["step"], losses["loss"], color="0.75", linewidth=0.6, label="per step")
    chunks = losses.groupby(losses["step"] // window)
    ax.plot(chunks["step"].mean(), chunks["loss"].mean(), color="C0", linewidth=1.5, marker="o", markersize=2,
            label=f"mean of {window} steps")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("noise-prediction MSE")
    rate = ax.twinx()
    rate.plot(losses["step"], losses["lr"], color="C3", linewidth=0.8, linestyle="--", label="learning rate")
    rate.set_ylabel("learning rate", color="C3")
    rate.tick_params(axis="y", colors="C3")
    rate.grid(False)
    handles = ax.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", frameon=False)
    fig.tight_layout()
    _footer(fig, label)
    return fig

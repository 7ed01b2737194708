"""The paper's tables from the workflow's ``results.csv`` (per-image rows) and ``runs.csv`` (settings).

Each builder returns a DataFrame whose numbers stay numeric (``<metric>`` and ``<metric>_ci95``), so the CSV
can be analysed again; ``write_table`` renders the same frame as CSV, Markdown and LaTeX with its caption.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..methods import get_method
from .results import mean_ci

MISSING = "–"
PM = " ± "

# Human headers for the rendered tables; the CSV keeps the machine names.
LABELS = {
    "dataset": "Dataset", "run": "Run", "method": "Method", "lpips_alex": "LPIPS (Alex)", "lpips_vgg": "LPIPS (VGG)",
    "ssim": "SSIM", "psnr": "PSNR", "latent_mse": "Latent MSE", "nfe_per_image": "NFE", "nfe_total": "NFE (inv+rec)",
    "images": "Images", "errors": "Errors", "seconds_inversion": "Inversion s", "seconds_total": "Total s",
    "batch_size": "Batch", "peak_mem_mb": "Peak MB", "peak_mem_kind": "Memory", "images_per_hour": "Images/h",
    "error_approximation": "Error approx.", "error_from": "Error from", "e0": "e0", "N": "N", "K": "K",
    "difference": "Difference",
    "better": "Images better", "reference": "Reference", "reference_nfe_total": "Reference NFE (inv+rec)",
    "reference_psnr": "Reference PSNR",
    "nfe_round_trip": "NFE per image (inv+rec)",
    "nfe_source": "NFE from", "nfe_all_images": "NFE, all images", "gpu_hours": "GPU-hours",
    "vae_hours": "VAE hours", "dtype": "dtype", "latent_dtype": "Latent dtype", "verdict": "95% CI says",
}
TEX_LABELS = {"e0": "$e_0$"}  # math the escaper must not touch
# Decimals per metric so a column reads uniformly; other floats: integers plain, else 4 significant digits.
DECIMALS = {"psnr": 2, "ssim": 3, "lpips_alex": 3, "lpips_vgg": 3, "seconds_inversion": 2, "seconds_total": 2,
            "peak_mem_mb": 0, "images_per_hour": 1, "gpu_hours": 1, "vae_hours": 2, "difference": 2,
            "reference_psnr": 2}


# ---------------------------------------------------------------- selecting runs and rows

def _params(text: Any) -> dict[str, Any]:
    return json.loads(text) if isinstance(text, str) and text else {}


def _canonical(runs: pd.DataFrame, name: str) -> str:
    """The run whose rows hold ``name``'s results: a sweep alias such as ``fpi-K3`` is never computed itself."""
    match = runs[runs["run"] == name]
    if match.empty:
        raise KeyError(f"run {name!r} is not in runs.csv; known: {', '.join(runs['run'])}")
    alias = match["alias_of"].iloc[0]
    return name if pd.isna(alias) or alias == "" else str(alias)


def _computed(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that have rows of their own (an alias would repeat its target's line)."""
    return runs[runs["alias_of"].fillna("") == ""]


def _groups(results: pd.DataFrame, runs: pd.DataFrame, names: Iterable[str]):
    """(dataset, requested name, that run's per-image rows) for each dataset that computed the run."""
    names = list(names)
    targets = {name: _canonical(runs, name) for name in names}
    for dataset in results["dataset"].drop_duplicates():
        rows = results[results["dataset"] == dataset]
        for name in names:
            group = rows[rows["run"] == targets[name]]
            if len(group):  # a dataset may list only some runs (e.g. error_stats)
                yield dataset, name, group


def _ok(group: pd.DataFrame) -> pd.DataFrame:
    return group[group["status"] == "ok"]


def _with_ci(ok: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in metrics:
        values = ok[metric] if metric in ok else pd.Series(dtype=float)  # an LPIPS net may not be configured
        out[metric], out[f"{metric}_ci95"] = mean_ci(values)
    return out


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _peak(ok: pd.DataFrame) -> dict[str, Any]:
    # Peak memory is a high-water mark, so the table reports the worst image, not an average.
    kinds = sorted(str(k) for k in ok["peak_mem_kind"].dropna().unique())
    return {"peak_mem_mb": float(ok["peak_mem_mb"].max()) if len(ok) else float("nan"),
            "peak_mem_kind": ", ".join(kinds) if kinds else float("nan")}


# ---------------------------------------------------------------- the tables

def reconstruction(results: pd.DataFrame, runs: pd.DataFrame, run_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Quality per dataset and run (mean and 95% CI over ok images), inversion NFE, image and error counts."""
    names = list(_computed(runs)["run"]) if run_names is None else run_names
    scored = [m for m in ("lpips_alex", "lpips_vgg") if m in results] + ["ssim", "psnr", "latent_mse"]  # nets run
    out = []
    for dataset, name, group in _groups(results, runs, names):
        ok = _ok(group)
        out.append({"dataset": dataset, "run": name, **_with_ci(ok, scored),
                    "nfe_per_image": _mean(ok["nfe_inversion"]), "images": len(group), "errors": len(group) - len(ok)})
    return pd.DataFrame(out)


def efficiency(results: pd.DataFrame, runs: pd.DataFrame, run_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Cost per dataset and run: NFE and seconds of a full round trip, the batch size they were measured
    at (the largest; seconds per image fall as batches grow), peak memory, throughput. Seconds are the
    mean and CI over batches, each timed once for its images together (over images at batch size 1)."""
    names = list(_computed(runs)["run"]) if run_names is None else run_names
    out = []
    for dataset, name, group in _groups(results, runs, names):
        ok = _ok(group)
        # images of a batch share one timing: the batches are the independent measurements
        timed = ok.groupby("batch_id", sort=False)[["seconds_inversion", "seconds_reconstruction"]].first()
        seconds, seconds_ci = mean_ci(timed["seconds_inversion"] + timed["seconds_reconstruction"])
        inv, inv_ci = mean_ci(timed["seconds_inversion"])
        out.append({"dataset": dataset, "run": name,
                    "nfe_total": _mean(ok["nfe_inversion"] + ok["nfe_reconstruction"]),
                    "seconds_inversion": inv, "seconds_inversion_ci95": inv_ci,
                    "seconds_total": seconds, "seconds_total_ci95": seconds_ci,
                    # seconds are a batch's divided by its images; a shard's last batch may be smaller
                    "batch_size": int(ok["batch_size"].max()) if len(ok) else float("nan"), **_peak(ok),
                    "images_per_hour": 3600.0 / seconds if seconds > 0 else float("nan")})
    return pd.DataFrame(out)


def ablation(results: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """IFE's components: error approximation on/off, where the error is read (``error_from``), e_0 zero or
    computed, each step count N; and Uni-Inv beside them, which on a VP model is IFE reading the error from
    the transfer with e_0 computed (its own method on a flow: its switches are not IFE's and show as missing)."""
    chosen = _computed(runs)
    chosen = chosen[chosen["method"].isin(["ife", "ife_noerr", "uni_inv"])]
    settings = {}
    for _, run in chosen.iterrows():
        params = {**get_method(run["method"]).defaults, **_params(run["params"])}
        if run["method"] == "uni_inv":
            settings[run["run"]] = {"method": "uni_inv", "error_approximation": MISSING, "error_from": MISSING,
                                    "e0": MISSING, "N": int(run["num_steps"])}
            continue
        corrects = run["method"] == "ife" and bool(params.get("error_approximation", True))
        # e_0 and the error's reading only matter when the error is approximated.
        e0 = ("computed" if params.get("compute_e0") else "zero") if corrects else MISSING
        settings[run["run"]] = {"method": run["method"], "error_approximation": "yes" if corrects else "no",
                                "error_from": params.get("error_from", "estimate") if corrects else MISSING,
                                "e0": e0, "N": int(run["num_steps"])}
    out = []
    for dataset, name, group in _groups(results, runs, settings):
        ok = _ok(group)
        out.append({"dataset": dataset, "run": name, **settings[name],
                    **_with_ci(ok, ("psnr", "ssim", "lpips_alex")), "nfe_per_image": _mean(ok["nfe_inversion"])})
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    # Variant order: plain fixed point first, then IFE with e_0 = 0 (the paper's default), then computed e_0,
    # the same with the transfer's reading, then Uni-Inv.
    variant = (frame["error_approximation"].map({"no": 0, "yes": 2, MISSING: 6}) + (frame["e0"] == "computed")
               + 2 * (frame["error_from"] == "transfer"))
    order = pd.DataFrame({"d": frame["dataset"].map({d: i for i, d in enumerate(frame["dataset"].unique())}),
                          "v": variant, "n": frame["N"]})
    return frame.loc[order.sort_values(["d", "v", "n"], kind="stable").index].reset_index(drop=True)


def iteration_sensitivity(results: pd.DataFrame, runs: pd.DataFrame,
                          methods: Sequence[str] = ("fpi", "aidi_a", "aidi_e", "renoise")) -> pd.DataFrame:
    """Quality against the iteration count K of the fixed-point methods at each method's largest N (a
    ``num_steps`` sweep of such a method is Table 3's business), with default IFE at the largest N."""
    chosen: dict[str, tuple[str, float]] = {}  # computed run -> (method, K)
    largest = runs.groupby("method")["num_steps"].max()
    for _, run in runs.iterrows():  # aliases count: ``fpi`` with K=3 is the K=3 point whatever the sweep called it
        params = _params(run["params"])
        if run["method"] in methods and "K" in params and run["num_steps"] == largest[run["method"]]:
            chosen.setdefault(_canonical(runs, run["run"]), (run["method"], params["K"]))
    computed = _computed(runs)
    ife = computed[(computed["method"] == "ife")
                   & computed["params"].map(lambda p: {**get_method("ife").defaults, **_params(p)}
                                            == get_method("ife").defaults)]
    if len(ife):
        chosen[ife.loc[ife["num_steps"].idxmax(), "run"]] = ("ife", float("nan"))  # reference, no K
    out = []
    for dataset, name, group in _groups(results, runs, chosen):
        ok = _ok(group)
        method, k = chosen[name]
        out.append({"dataset": dataset, "method": method, "run": name, "K": k,
                    "nfe_per_image": _mean(ok["nfe_inversion"]), **_with_ci(ok, ("psnr", "ssim", "lpips_alex"))})
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    frame["K"] = frame["K"].astype("Int64")  # K is a count; the IFE row has none
    rank = {m: i for i, m in enumerate([*methods, "ife"])}
    order = pd.DataFrame({"d": frame["dataset"].map({d: i for i, d in enumerate(frame["dataset"].unique())}),
                          "m": frame["method"].map(rank), "k": frame["K"].astype(float)})
    return frame.loc[order.sort_values(["d", "m", "k"], kind="stable").index].reset_index(drop=True)


def exact_family(results: pd.DataFrame, runs: pd.DataFrame,
                 methods: Sequence[str] = ("bdia", "edict", "erddci", "belm")) -> pd.DataFrame:
    """The exactly invertible methods: quality, NFE and the memory their extra state costs."""
    computed = _computed(runs)
    names = list(computed[computed["method"].isin(methods)]["run"])
    out = []
    for dataset, name, group in _groups(results, runs, names):
        ok = _ok(group)
        out.append({"dataset": dataset, "run": name, **_with_ci(ok, ("psnr", "ssim", "lpips_alex", "latent_mse")),
                    "nfe_per_image": _mean(ok["nfe_inversion"]), **_peak(ok)})
    return pd.DataFrame(out)


def verdict(diff: pd.Series, mean: float, ci: float) -> str:
    """What a paired difference supports: ``higher`` or ``lower`` only when its 95% CI excludes 0
    (``exact`` when every image's difference is +inf: an exact method against a finite one)."""
    if len(diff) and np.isposinf(diff).all():
        return "higher (exact)"
    if not np.isfinite(mean) or not np.isfinite(ci):
        return "not resolved"
    return "higher" if mean - ci > 0 else "lower" if mean + ci < 0 else "not resolved"


def reference_runs(runs: pd.DataFrame, reference: str) -> dict[str, str]:
    """For each computed run, the run it is compared with: among ``reference`` and its variants that differ from
    it only in N (its num_steps sweep), the one with the NFE per image closest to the run's (ties: the same N,
    then ``reference`` itself). So a sweep at N = 10 meets IFE at N = 10, and RF-Solver at N / 2 steps (2 calls a
    step) meets IFE at N: every comparison is at equal (or the nearest) cost. The variants themselves are
    compared with ``reference``."""
    computed = _computed(runs).set_index("run")
    setting = computed.reindex(columns=["method", "params", "guidance", "reconstruction_guidance", "run_dtype"])
    setting = setting.astype(object).fillna("").astype(str)  # an older runs.csv has no run_dtype
    base = computed.loc[_canonical(runs, reference)]
    same = computed[(setting == setting.loc[base.name]).all(axis=1)]
    out = {}
    for name, run in computed.iterrows():
        if name in same.index:
            if name != base.name:
                out[name] = base.name
            continue
        cost = (same["nfe_per_image"] - run["nfe_per_image"]).abs()
        order = sorted(same.index, key=lambda r: (cost[r], same.loc[r, "num_steps"] != run["num_steps"], r != base.name))
        out[name] = order[0]
    return out


def _nfe_total(rows: pd.DataFrame) -> float:
    """Counted network calls per image, inversion and reconstruction, over the rows without error."""
    ok = _ok(rows)
    return _mean(ok["nfe_inversion"] + ok["nfe_reconstruction"])


def paired_against(results: pd.DataFrame, runs: pd.DataFrame, reference: str, metric: str = "psnr") -> pd.DataFrame:
    """Per dataset and computed run: the mean per-image difference ``run - reference`` in ``metric`` over
    the images both inverted without error, its 95% CI, on how many images the run is higher, and the
    :func:`verdict` the CI supports; ``reference`` at the run's cost (:func:`reference_runs`), named in the
    ``reference`` column. ``nfe_total`` and ``reference_nfe_total``: the network calls the model counted per
    image, inversion plus reconstruction (as Table 2's "NFE (inv+rec)")."""
    references = reference_runs(runs, reference)
    out = []
    for dataset, name, group in _groups(results, runs, references):
        ref_name = references[name]
        rows = results[results["dataset"] == dataset]
        ref = _ok(rows[rows["run"] == ref_name]).set_index("id")[metric]
        own = _ok(group).set_index("id")[metric]
        common = own.index.intersection(ref.index)
        with np.errstate(invalid="ignore"):  # inf - inf (two exact methods) is undefined, not zero
            diff = own[common] - ref[common]
        mean, ci = mean_ci(diff)
        out.append({"dataset": dataset, "run": name, "nfe_total": _nfe_total(group), metric: own[common].mean(),
                    "reference": ref_name, "reference_nfe_total": _nfe_total(rows[rows["run"] == ref_name]),
                    f"reference_{metric}": ref[common].mean(), "images": len(common), "difference": mean,
                    "difference_ci95": ci, "better": int((diff > 0).sum()), "verdict": verdict(diff, mean, ci)})
    return pd.DataFrame(out)


def precision(results: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that differ only in their network dtype (a run's own ``dtype``; EasyInv's Table 2 compares
    half and full precision): quality per dtype, and the per-image PSNR difference to the run at the
    model's own dtype with its 95% CI (over the images both inverted without error)."""
    computed = _computed(runs)
    dtype_of = computed["run_dtype"] if "run_dtype" in computed else pd.Series("", index=computed.index)
    setting = ["method", "params", "num_steps", "guidance", "reconstruction_guidance"]
    out = []
    for _, members in computed.assign(run_dtype=dtype_of.fillna("")).groupby(setting, sort=False):
        base = members[members["run_dtype"] == ""]["run"]
        if len(members) < 2 or base.empty:
            continue
        base = base.iloc[0]
        for dataset, name, group in _groups(results, runs, members["run"]):
            ok = _ok(group)
            rows = results[results["dataset"] == dataset]
            ref = _ok(rows[rows["run"] == base]).set_index("id")["psnr"]
            own = ok.set_index("id")["psnr"]
            common = own.index.intersection(ref.index)
            with np.errstate(invalid="ignore"):
                diffs = own[common] - ref[common]
                diff, ci = mean_ci(diffs) if name != base else (math.nan, math.nan)
            actual = {c: ok[c].iloc[0] if c in ok and len(ok) else MISSING for c in ("dtype", "latent_dtype")}
            out.append({"dataset": dataset, "method": members["method"].iloc[0], "run": name, **actual,
                        **_with_ci(ok, ("psnr", "ssim", "lpips_alex", "latent_mse")),
                        "difference": diff, "difference_ci95": ci, "reference": base,
                        "verdict": verdict(diffs, diff, ci) if name != base else MISSING})
    return pd.DataFrame(out)


CAPTIONS = {
    "table1_reconstruction": "Reconstruction quality",
    "table2_efficiency": "Efficiency per image",
    "table3_ablation": "IFE ablation: error approximation, where the error is read, e_0 and N; with Uni-Inv (on a "
                       "VP model IFE reading the error from the transfer with e_0 computed)",
    "table4_iterations": "Iteration sensitivity of fixed-point methods",
    "table5_exact": "Exact-inversion methods",
    "table6_precision": "Precision ablation: the same runs with another network dtype (PSNR difference to the "
                        "model's own dtype on the same images)",
}


def build_all(results: pd.DataFrame, runs: pd.DataFrame, base_runs: Sequence[str] | None,
              label: str) -> dict[str, tuple[pd.DataFrame, str]]:
    """Tables 1-5 by file name, each with its caption (which carries ``label``, e.g. "demo model")."""
    frames = {
        "table1_reconstruction": reconstruction(results, runs, base_runs),
        "table2_efficiency": efficiency(results, runs, base_runs),
        "table3_ablation": ablation(results, runs),
        "table4_iterations": iteration_sensitivity(results, runs),
        "table5_exact": exact_family(results, runs),
        "table6_precision": precision(results, runs),
    }
    spread = {name: "mean ± 95% CI over images" for name in frames}
    spread["table2_efficiency"] = "seconds: mean ± 95% CI over batches of images inverted together"
    return {name: (frame, f"{CAPTIONS[name]}; {label}; {spread[name]}") for name, frame in frames.items()}


# ---------------------------------------------------------------- rendering

def _number(value: float, column: str, tex: bool) -> str:
    if math.isinf(value):
        return ("-" if value < 0 else "") + (r"$\infty$" if tex else "∞")
    if column in DECIMALS:
        return f"{value:.{DECIMALS[column]}f}"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"


def _escape_tex(text: str) -> str:
    return "".join({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}.get(c, c)
                   for c in text)


def _cell(value: Any, column: str, tex: bool) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _number(float(value), column, tex)
    text = str(value)
    return _escape_tex(text) if tex else text.replace("|", r"\|")


def _display(frame: pd.DataFrame, tex: bool) -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, cell strings and right-alignment per shown column; ``x`` and ``x_ci95`` merge into "x ± ci"."""
    columns = [c for c in frame.columns if not (c.endswith("_ci95") and c[:-5] in frame.columns)]
    headers = [(TEX_LABELS.get(c) or _escape_tex(LABELS.get(c, c))) if tex else LABELS.get(c, c) for c in columns]
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            text = _cell(row[c], c, tex)
            ci = row.get(f"{c}_ci95")
            # A missing interval (one image, or an infinite mean) shows the mean alone rather than "± –".
            if ci is not None and not pd.isna(ci) and not pd.isna(row[c]):
                text += PM + _cell(ci, c, tex)
            cells.append(text)
        rows.append(cells)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]
    return headers, rows, numeric


def to_markdown(frame: pd.DataFrame, caption: str) -> str:
    headers, rows, numeric = _display(frame, tex=False)
    lines = [f"*{caption}*", "", "| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    headers, rows, numeric = _display(frame, tex=True)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_escape_tex(caption)}}}",
             rf"\label{{tab:{label}}}", r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}",
             r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, folder: str | Path, name: str, caption: str) -> dict[str, Path]:
    """``<name>.csv`` (caption as a leading ``#`` line, then plain numbers), ``<name>.md`` and ``<name>.tex``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    with open(paths["csv"], "w", encoding="utf-8", newline="") as f:
        f.write(f"# {caption}\n")
        frame.to_csv(f, index=False)
    paths["md"].write_text(to_markdown(frame, caption), encoding="utf-8")
    paths["tex"].write_text(to_latex(frame, caption, name), encoding="utf-8")
    return paths


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV ``write_table`` wrote, numbers as numbers (``inf`` included), the caption line skipped."""
    with open(path, encoding="utf-8") as f:
        skip = 1 if f.readline().startswith("#") else 0
    return pd.read_csv(path, skiprows=skip)

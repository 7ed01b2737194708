"""The paper's tables: numbers equal the per-image means and CIs, aliases resolve, renderings are well formed."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from diffinv.workflow import tables
from diffinv.workflow.results import mean_ci


# name, method, params, num_steps, alias_of
RUNS = [
    ("ddim", "ddim", {}, 50, ""),
    ("ife", "ife", {"error_approximation": True, "compute_e0": False}, 50, ""),
    ("ife_e0", "ife", {"error_approximation": True, "compute_e0": True}, 50, ""),
    ("ife_noerr", "ife_noerr", {}, 50, ""),
    ("ife_transfer", "ife", {"error_approximation": True, "compute_e0": True, "error_from": "transfer"}, 50, ""),
    ("uni_inv", "uni_inv", {}, 50, ""),
    ("ife-N10", "ife", {"error_approximation": True, "compute_e0": False}, 10, ""),
    ("ife-N50", "ife", {"error_approximation": True, "compute_e0": False}, 50, "ife"),
    ("fpi", "fpi", {"K": 3}, 50, ""),
    ("fpi-K2", "fpi", {"K": 2}, 50, ""),
    ("fpi-K3", "fpi", {"K": 3}, 50, "fpi"),
    ("bdia", "bdia", {}, 50, ""),
    ("edict", "edict", {}, 50, ""),
]
NFE = {"ddim": 50, "ife": 50, "ife_e0": 51, "ife_noerr": 50, "ife_transfer": 51, "uni_inv": 51, "ife-N10": 10,
       "fpi": 150, "fpi-K2": 100, "bdia": 50, "edict": 100}


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return pd.DataFrame([{"run": n, "method": m, "params": json.dumps(p, sort_keys=True), "num_steps": s,
                          "guidance": 1.0, "reconstruction_guidance": 1.0, "alias_of": a, "nfe_per_image": 0}
                         for n, m, p, s, a in RUNS])


@pytest.fixture(scope="module")
def results(runs) -> pd.DataFrame:
    """Four images per run and dataset; image 3 of every run failed (its numbers must not enter the means)."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("coco", "photos"):
        for _, run in runs[runs["alias_of"] == ""].iterrows():
            for i in range(4):
                rows.append({"dataset": dataset, "run": run["run"], "method": run["method"], "params": run["params"],
                             "num_steps": run["num_steps"], "guidance": 1.0, "reconstruction_guidance": 1.0,
                             "index": i, "id": f"img{i}", "status": "ok" if i < 3 else "error: out of memory",
                             "nfe_inversion": NFE[run["run"]], "nfe_reconstruction": run["num_steps"],
                             "seconds_inversion": rng.uniform(1, 2), "seconds_reconstruction": rng.uniform(0.5, 1),
                             "peak_mem_mb": rng.uniform(100, 200) if i < 3 else 1e6,
                             "peak_mem_kind": "process_max_rss", "batch_size": 4 if i < 2 else 2,
                             "batch_id": i,
                             # the failed image carries outlandish numbers so including it would show
                             **{m: (rng.uniform(0, 1) if i < 3 else 1e3) for m in
                                ("mse", "ssim", "lpips_alex", "lpips_vgg", "latent_mse")},
                             "psnr": rng.uniform(20, 40) if i < 3 else -1e3})
    frame = pd.DataFrame(rows)
    exact = (frame["run"] == "bdia") & (frame["status"] == "ok")
    frame.loc[exact, "psnr"] = math.inf  # bit-exact reconstructions
    return frame


def ok_rows(results, dataset, run):
    return results[(results["dataset"] == dataset) & (results["run"] == run) & (results["status"] == "ok")]


def test_reconstruction_values_are_means_and_cis_of_ok_rows(results, runs):
    table = tables.reconstruction(results, runs, ["ddim", "ife", "fpi"])
    assert list(zip(table["dataset"], table["run"])) == [(d, r) for d in ("coco", "photos")
                                                        for r in ("ddim", "ife", "fpi")]
    for _, row in table.iterrows():
        ok = ok_rows(results, row["dataset"], row["run"])
        for metric in ("lpips_alex", "lpips_vgg", "ssim", "psnr", "latent_mse"):
            mean, ci = mean_ci(ok[metric])
            assert row[metric] == pytest.approx(mean) and row[f"{metric}_ci95"] == pytest.approx(ci)
            assert ci > 0
        assert row["nfe_per_image"] == NFE[row["run"]]
        assert row["images"] == 4 and row["errors"] == 1


def test_error_rows_counted_but_not_averaged(results, runs):
    row = tables.reconstruction(results, runs, ["ddim"]).iloc[0]
    assert row["psnr"] > 0 and row["ssim"] < 1  # the failed image's -1000 dB / 1000 would drag these
    assert (row["images"], row["errors"]) == (4, 1)
    eff = tables.efficiency(results, runs, ["ddim"]).iloc[0]
    assert eff["peak_mem_mb"] < 1e6  # the failed image's memory is not the run's peak


def test_alias_resolves_to_its_target(results, runs):
    table = tables.reconstruction(results, runs, ["fpi-K3", "fpi"])
    alias, target = table[table["dataset"] == "coco"].iloc[0], table[table["dataset"] == "coco"].iloc[1]
    assert alias["run"] == "fpi-K3" and target["run"] == "fpi"
    assert alias.drop("run").equals(target.drop("run"))
    with pytest.raises(KeyError, match="nope"):
        tables.reconstruction(results, runs, ["nope"])


def test_default_tables_skip_aliases(results, runs):
    names = set(tables.reconstruction(results, runs)["run"])
    assert names == set(NFE) and "fpi-K3" not in names


def test_efficiency(results, runs):
    table = tables.efficiency(results, runs, ["fpi-K2", "ife-N10"])
    for _, row in table.iterrows():
        ok = ok_rows(results, row["dataset"], row["run"])
        total = ok["seconds_inversion"] + ok["seconds_reconstruction"]
        assert row["nfe_total"] == NFE[row["run"]] + ok["num_steps"].iloc[0]
        assert (row["seconds_total"], row["seconds_total_ci95"]) == pytest.approx(mean_ci(total))
        assert (row["seconds_inversion"], row["seconds_inversion_ci95"]) == pytest.approx(
            mean_ci(ok["seconds_inversion"]))
        assert row["images_per_hour"] == pytest.approx(3600 / total.mean())
        assert row["peak_mem_mb"] == ok["peak_mem_mb"].max() and row["peak_mem_kind"] == "process_max_rss"
        assert row["batch_size"] == 4  # the configured size, not a shard's smaller last batch


def test_efficiency_seconds_are_measured_per_batch(results, runs):
    """Images timed together are one measurement: the CI comes from the batches, not the images."""
    batched = results.copy()
    chosen = (batched["run"] == "ddim") & (batched["dataset"] == "coco")
    batched.loc[chosen, "batch_id"] = [0, 0, 2, 3]  # images 0 and 1 shared a batch (image 3 failed)
    first = batched.loc[chosen].iloc[0]
    batched.loc[chosen & (batched["index"] == 1), ["seconds_inversion", "seconds_reconstruction"]] = (
        first["seconds_inversion"], first["seconds_reconstruction"])
    row = tables.efficiency(batched, runs, ["ddim"]).iloc[0]
    timed = batched[chosen & (batched["index"].isin([0, 2]))]
    total = timed["seconds_inversion"] + timed["seconds_reconstruction"]
    assert (row["seconds_total"], row["seconds_total_ci95"]) == pytest.approx(mean_ci(total))


def test_ablation_flags_from_params(results, runs):
    table = tables.ablation(results, runs)
    coco = table[table["dataset"] == "coco"]
    # variant, then N; no alias, no ddim; Uni-Inv last, beside the reading it equals on VP
    assert list(coco["run"]) == ["ife_noerr", "ife-N10", "ife", "ife_e0", "ife_transfer", "uni_inv"]
    flags = {r: (a, f, e, n) for r, a, f, e, n in zip(coco["run"], coco["error_approximation"], coco["error_from"],
                                                      coco["e0"], coco["N"])}
    assert flags == {"ife_noerr": ("no", "–", "–", 50), "ife-N10": ("yes", "estimate", "zero", 10),
                     "ife": ("yes", "estimate", "zero", 50), "ife_e0": ("yes", "estimate", "computed", 50),
                     "ife_transfer": ("yes", "transfer", "computed", 50), "uni_inv": ("–", "–", "–", 50)}
    assert list(coco["method"]) == ["ife_noerr", "ife", "ife", "ife", "ife", "uni_inv"]
    row = coco[coco["run"] == "ife_e0"].iloc[0]
    assert row["nfe_per_image"] == 51
    assert (row["ssim"], row["ssim_ci95"]) == pytest.approx(mean_ci(ok_rows(results, "coco", "ife_e0")["ssim"]))


def test_iteration_sensitivity_counts_an_alias_k(results, runs):
    table = tables.iteration_sensitivity(results, runs, methods=("fpi",))
    coco = table[table["dataset"] == "coco"]
    # fpi (K=3, also reached as the alias fpi-K3) is the K=3 point, once; IFE at its largest N is the reference.
    assert list(zip(coco["method"], coco["run"], coco["K"].astype(object))) == [
        ("fpi", "fpi-K2", 2), ("fpi", "fpi", 3), ("ife", "ife", pd.NA)]
    k3 = coco.iloc[1]
    assert k3["nfe_per_image"] == 150
    assert (k3["psnr"], k3["psnr_ci95"]) == pytest.approx(mean_ci(ok_rows(results, "coco", "fpi")["psnr"]))


def test_exact_family(results, runs):
    table = tables.exact_family(results, runs)
    assert set(table["run"]) == {"bdia", "edict"}
    bdia = table[(table["dataset"] == "photos") & (table["run"] == "bdia")].iloc[0]
    ok = ok_rows(results, "photos", "bdia")
    assert bdia["psnr"] == math.inf and math.isnan(bdia["psnr_ci95"])
    assert (bdia["latent_mse"], bdia["latent_mse_ci95"]) == pytest.approx(mean_ci(ok["latent_mse"]))
    assert bdia["peak_mem_mb"] == ok["peak_mem_mb"].max() and bdia["nfe_per_image"] == 50


def test_formatting_of_mean_ci_inf_and_missing():
    frame = pd.DataFrame({"run": ["a_b", "exact"], "psnr": [35.7312, math.inf], "psnr_ci95": [0.8361, math.nan],
                          "latent_mse": [math.nan, 1e-5]})
    md = tables.to_markdown(frame, "cap")
    assert "| a_b | 35.73 ± 0.84 | – |" in md
    assert "| exact | ∞ | 1e-05 |" in md
    tex = tables.to_latex(frame, "cap", "t")
    assert r"a\_b & 35.73 ± 0.84 & – \\" in tex
    assert r"exact & $\infty$ & 1e-05 \\" in tex


def test_write_table_files(results, runs, tmp_path):
    frame = tables.reconstruction(results, runs, ["ife_noerr", "ife"])
    paths = tables.write_table(frame, tmp_path / "tables", "recon_table", "Reconstruction of ife_noerr & co")
    assert {p.name for p in paths.values()} == {"recon_table.csv", "recon_table.md", "recon_table.tex"}

    md = paths["md"].read_text(encoding="utf-8").splitlines()
    assert md[0] == "*Reconstruction of ife_noerr & co*"
    header, separator, body = md[2], md[3], md[4:]
    assert re.fullmatch(r"\|(:?-{3,}:?\|)+", separator)
    assert header.count("|") == separator.count("|") and all(r.count("|") == header.count("|") for r in body)
    assert len(body) == len(frame)

    tex = paths["tex"].read_text(encoding="utf-8")
    assert r"\caption{Reconstruction of ife\_noerr \& co}" in tex
    assert re.search(r"\\begin\{tabular\}\{l+r+\}", tex) and tex.index(r"\begin{tabular}") < tex.index(
        r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule") < tex.index(r"\end{tabular}")
    # Outside math and the \label key (where LaTeX takes "_" as is) every underscore is escaped.
    assert r"ife\_noerr" in tex and not re.search(r"(?<!\\)_", re.sub(r"\\label\{[^}]*\}", "", tex))
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(rows) == len(frame) + 1 and len({r.count("&") for r in rows}) == 1  # header + rows, same width

    back = tables.read_table(paths["csv"])
    assert paths["csv"].read_text(encoding="utf-8").startswith("# Reconstruction")
    pd.testing.assert_frame_equal(back, frame, check_exact=False, rtol=1e-12)


def test_csv_keeps_infinity(results, runs, tmp_path):
    frame = tables.exact_family(results, runs)
    back = tables.read_table(tables.write_table(frame, tmp_path, "exact", "Exact")["csv"])
    assert np.isinf(back["psnr"]).sum() == 2 and back["psnr_ci95"].isna().sum() == 2
    pd.testing.assert_frame_equal(back, frame, check_exact=False, rtol=1e-12)


def test_paired_differences_are_per_image_and_skip_failed_images(results, runs):
    table = tables.paired_against(results, runs, "ife", "psnr")
    assert "ife" not in set(table["run"]) and "fpi-K3" not in set(table["run"])  # no self, no alias
    row = table[(table["dataset"] == "coco") & (table["run"] == "ddim")].iloc[0]
    ddim, ife = (ok_rows(results, "coco", r).set_index("id")["psnr"] for r in ("ddim", "ife"))
    diff = ddim - ife
    assert row["images"] == 3  # the failed image 3 is in neither
    assert row["difference"] == pytest.approx(diff.mean())
    assert row["difference_ci95"] == pytest.approx(mean_ci(diff)[1])
    assert row["better"] == (diff > 0).sum()
    counted = ok_rows(results, "coco", "ddim")  # the cost is the model's count, inversion plus reconstruction
    assert row["nfe_total"] == (counted["nfe_inversion"] + counted["nfe_reconstruction"]).mean()
    exact = table[(table["dataset"] == "coco") & (table["run"] == "bdia")].iloc[0]
    assert exact["difference"] == math.inf and exact["better"] == 3
    assert exact["verdict"] == "higher (exact)"


@pytest.mark.parametrize("diffs, expected", [([-3.0, -2.5, -3.2, -2.9], "lower"), ([1.0, 1.2, 0.9], "higher"),
                                             ([-3.0, 4.0, -1.0, 2.5], "not resolved"), ([2.0], "not resolved"),
                                             ([math.inf, 1.0], "not resolved")])
def test_a_verdict_needs_a_paired_interval_that_excludes_zero(diffs, expected):
    diff = pd.Series(diffs)
    mean, ci = mean_ci(diff)
    assert tables.verdict(diff, mean, ci) == expected


def test_build_all_labels_every_caption(results, runs):
    built = tables.build_all(results, runs, ["ddim", "ife"], "demo model, not the paper's numbers")
    assert list(built) == list(tables.CAPTIONS)
    assert all("demo model, not the paper's numbers" in caption for _, caption in built.values())
    assert list(built["table1_reconstruction"][0]["run"].unique()) == ["ddim", "ife"]


def test_each_run_meets_the_reference_at_its_own_cost():
    """A sweep at N = 10 is compared with IFE at N = 10, RF-Solver at N / 2 steps (2 calls a step) with IFE at
    N, a run at 3x IFE's cost with the nearest IFE; IFE's own variants with IFE."""
    def run(name, method, steps, nfe, params="{}", alias=""):
        return {"run": name, "method": method, "params": params, "num_steps": steps, "guidance": 1.0,
                "reconstruction_guidance": 1.0, "run_dtype": "", "alias_of": alias, "nfe_per_image": nfe}

    runs = pd.DataFrame([run("ife", "ife", 50, 100, '{"compute_e0": false}'),
                         run("ife-N10", "ife", 10, 20, '{"compute_e0": false}'),
                         run("ife_e0", "ife", 50, 101, '{"compute_e0": true}'),
                         run("ddim-N10", "ddim", 10, 20), run("uni_inv-N10", "uni_inv", 10, 21),
                         run("rf_solver_half", "rf_solver", 25, 100), run("fpi", "fpi", 50, 200),
                         run("fpi-K3", "fpi", 50, 200, alias="fpi")])
    assert tables.reference_runs(runs, "ife") == {"ife-N10": "ife", "ife_e0": "ife", "ddim-N10": "ife-N10",
                                                  "uni_inv-N10": "ife-N10", "rf_solver_half": "ife", "fpi": "ife"}

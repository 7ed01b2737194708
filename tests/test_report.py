"""Figure inputs, the paper preset's budget and notebook execution (diffinv.workflow.report)."""

import json
import math

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from diffinv.workflow import notebooks, report
from diffinv.workflow.config import expand_runs, nfe_estimate, validate
from snakemake_runner import ROOT, load_config
from test_tables import NFE, results, runs  # noqa: F401  (fixtures)


def test_cost_points_pool_datasets_and_skip_aliases_and_errors(results, runs):  # noqa: F811
    points = report.cost_points(results, runs).set_index("run")
    assert "fpi-K3" not in points.index and set(points.index) == set(results["run"])
    ok = results[(results["run"] == "fpi-K2") & (results["status"] == "ok")]
    assert points.loc["fpi-K2", "nfe"] == NFE["fpi-K2"]
    assert points.loc["fpi-K2", "seconds"] == pytest.approx(ok["seconds_inversion"].mean())
    assert points.loc["fpi-K2", "psnr"] == pytest.approx(ok["psnr"].mean())
    assert points.loc["fpi-K2", "images"] == 6  # 3 ok images in each of 2 datasets
    assert points.loc["bdia", "psnr"] == math.inf


def measured_rows(nfe_by_run):
    """runs.csv and results.csv of a run set whose counted NFE is ``nfe_by_run`` (inversion + reconstruction)."""
    config = load_config("demo.yaml")
    runs, _ = expand_runs(config)
    table = pd.DataFrame([{**runs[name].as_dict(), "alias_of": ""} for name in nfe_by_run])
    rows = pd.DataFrame([{"run": name, "status": "ok", "nfe_inversion": nfe - 50, "nfe_reconstruction": 50}
                         for name, nfe in nfe_by_run.items()] + [{"run": "ddim", "status": "error: x",
                                                                   "nfe_inversion": 0, "nfe_reconstruction": 0}])
    return rows, table


def test_budget_uses_measured_nfe_of_the_same_setting_else_the_formula():
    paper = validate(load_config("config.yaml"), ROOT / "config" / "schema.yaml")
    # an odd measured count for ife proves the measurement, not the formula, is used
    rows, table = measured_rows({"ife": 123, "ddim": 100})
    budget = report.preset_budget(paper, rows, table, 0.5).set_index("run")
    images = sum(d["count"] for d in paper["datasets"].values())
    assert budget.loc["ife", "nfe_source"] == "measured" and budget.loc["ife", "nfe_round_trip"] == 123
    assert budget.loc["ddim", "nfe_round_trip"] == 100  # the error row does not dilute the mean
    paper_runs, _ = expand_runs(paper)
    assert budget.loc["fpi-K10", "nfe_source"] == "formula"
    assert budget.loc["fpi-K10", "nfe_round_trip"] == nfe_estimate(paper_runs["fpi-K10"])
    assert budget.loc["ife", "gpu_hours"] == pytest.approx(images * 123 * 0.5 / 3600)
    stats = paper["error_stats"]
    bound = budget.loc["error statistics: ife"]
    assert bound["nfe_source"] == "bound"
    assert bound["images"] == stats["images"] * len(paper["datasets"])
    assert bound["nfe_round_trip"] == nfe_estimate(paper_runs["ife"]) + 50 * stats["max_iter"]
    body = budget.drop(index="total")
    assert len(body) == len(paper_runs) + len(stats["runs"])
    assert budget.loc["total", "gpu_hours"] == pytest.approx(body["gpu_hours"].sum())


def test_a_measured_rate_overrides_the_assumption_and_prices_the_vae(tmp_path):
    import json

    paper = validate(load_config("config.yaml"), ROOT / "config" / "schema.yaml")
    assumed = report.budget_rate(paper, None, None)
    assert assumed.seconds_per_nfe == paper["report"]["seconds_per_nfe"] == pytest.approx(3.51 / 100)
    assert assumed.source.startswith("assumed") and assumed.vae_encode_seconds is None
    path = tmp_path / "throughput.json"
    entry = {"unet_seconds_per_pass": 0.02, "vae_encode_seconds": 0.05, "vae_decode_seconds": 0.1}
    batch = str(paper["batch_size"])  # the layout benchmarks/sd_throughput.py writes: device, dtype, batch
    path.write_text(json.dumps({"model": "sd", "resolution": 512, "unet_flops_per_pass": 1, "devices": {"Some GPU": {
        paper["model"]["dtype"]: {batch: entry}, "float32": {batch: {**entry, "unet_seconds_per_pass": 9}}}}}))
    rate = report.budget_rate(paper, path, "Some GPU")
    assert rate.seconds_per_nfe == 0.02 and rate.source.startswith("measured on Some GPU (float16")
    assert report.budget_rate(paper, path, "Another GPU") == assumed  # unmeasured device: the assumption
    rows, table = measured_rows({"ife": 100})
    budget = report.preset_budget(paper, rows, table, rate).set_index("run")
    images = sum(d["count"] for d in paper["datasets"].values())
    assert budget.loc["ife", "gpu_hours"] == pytest.approx(images * 100 * 0.02 / 3600)
    assert budget.loc["ife", "vae_hours"] == pytest.approx(images * (0.05 + 2 * 0.1) / 3600)
    unmeasured = report.preset_budget(paper, rows, table, assumed)
    assert unmeasured["vae_hours"].isna().all()  # not measured under the assumption: no number
    guided = {**paper, "inversion": {**paper["inversion"], "guidance": 7.5, "reconstruction_guidance": 7.5}}
    assert report.budget_rate(guided, path, "Some GPU") == assumed  # 8 UNet rows per call: not measured


def test_a_guided_call_is_priced_as_two_passes():
    paper = validate(load_config("config.yaml"), ROOT / "config" / "schema.yaml")
    guided = {**paper, "inversion": {**paper["inversion"], "guidance": 7.5, "reconstruction_guidance": 7.5}}
    empty = pd.DataFrame(columns=["run", "status", "nfe_inversion", "nfe_reconstruction"])
    no_runs = pd.DataFrame(columns=["run", "alias_of"])
    plain = report.preset_budget(paper, empty, no_runs, 1.0).set_index("run")
    twice = report.preset_budget(guided, empty, no_runs, 1.0).set_index("run")
    assert twice.loc["ddim", "nfe_round_trip"] == 2 * plain.loc["ddim", "nfe_round_trip"] == 200
    assert twice.loc["ddim", "gpu_hours"] == pytest.approx(2 * plain.loc["ddim", "gpu_hours"])


def test_budget_matches_settings_not_names():
    paper = validate(load_config("config.yaml"), ROOT / "config" / "schema.yaml")
    rows, table = measured_rows({"ife": 123})
    table.loc[0, "num_steps"] = 20  # a run called ife, but at N = 20: not the paper's ife
    budget = report.preset_budget(paper, rows, table, 1.0).set_index("run")
    assert budget.loc["ife", "nfe_source"] == "formula"
    assert budget.loc["ife-N20", "nfe_source"] == "measured" and budget.loc["ife-N20", "nfe_round_trip"] == 123


@pytest.fixture
def saved(tmp_path):
    """Two images, each saved by runs ddim (shard 000) and fpi-K2 (shard 001); a manifest of three."""
    rng = np.random.default_rng(0)
    images = {f"im{k}": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for k in range(2)}
    for run, shard in (("ddim", "000"), ("fpi-K2", "001"), ("ife", "000")):
        for image_id, image in images.items():
            path = tmp_path / "recon" / "photos" / run / shard / f"{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(255 - image).save(path)
    rows = pd.DataFrame([{"dataset": "photos", "run": r, "id": i, "psnr": p, "status": "ok"}
                         for r, p in (("ddim", 20.0), ("fpi-K2", 25.0), ("ife", math.inf), ("aidi_a", 30.0))
                         for i in images])
    return tmp_path, images, rows


def test_grid_cells_read_each_runs_png_and_caption_its_psnr(saved):
    results, images, rows = saved
    cells, captions = report.grid_cells(results, rows, "photos", images, ["ddim", None, "ife"])
    assert len(cells) == 2 and [len(r) for r in cells] == [4, 4]
    np.testing.assert_array_equal(cells[1][0], images["im1"])
    np.testing.assert_array_equal(cells[1][1], 255 - images["im1"])
    assert cells[0][2] is None
    assert captions[0] == ["", "20.0 dB", "", "exact (∞ dB)"]
    # an ok row must have its PNG: a missing one is a workflow fault, not an error row to draw
    with pytest.raises(FileNotFoundError, match="no reconstruction of 'im0' for run 'aidi_a'"):
        report.grid_cells(results, rows, "photos", images, ["aidi_a"])
    with pytest.raises(ValueError, match="0 rows of 'im0' for run 'renoise'"):
        report.grid_cells(results, rows, "photos", images, ["renoise"])


def test_an_error_row_is_a_failed_cell_with_its_reason_and_the_figure_draws(saved):
    from diffinv.workflow.figures import FailedCell, image_grid

    results, images, rows = saved
    rows.loc[(rows["run"] == "aidi_a") & (rows["id"] == "im0"), "status"] = "error: non-finite reconstruction"
    cells, captions = report.grid_cells(results, rows, "photos", dict(list(images.items())[:1]), ["ddim", "aidi_a"])
    assert cells[0][2] == FailedCell("non-finite reconstruction")
    assert captions[0][2] == "failed: non-finite reconstruction"
    figure = image_grid(cells, column_titles=["original", "DDIM", "AIDI-A"], captions=captions)
    assert "failed" in [t.get_text() for t in figure.axes[2].texts]


def test_iteration_grid_lays_out_methods_by_k(saved):
    results, images, rows = saved
    sweep = pd.DataFrame([{"dataset": "photos", "method": "fpi", "run": "ddim", "K": 1},
                          {"dataset": "photos", "method": "fpi", "run": "fpi-K2", "K": 2},
                          {"dataset": "photos", "method": "aidi_a", "run": "ddim", "K": 1},
                          {"dataset": "photos", "method": "ife", "run": "ife", "K": pd.NA}])
    sweep["K"] = sweep["K"].astype("Int64")
    grid = report.iteration_grid(results, rows, sweep, "photos", images, ["fpi", "aidi_a", "renoise"])
    assert grid["column_titles"] == ["reference", "K = 1", "K = 2"]
    assert grid["row_titles"] == ["FPI", "AIDI-A"] * 2  # renoise was not run: no row
    np.testing.assert_array_equal(grid["cells"][0][0], images["im0"])  # original, then IFE below it
    np.testing.assert_array_equal(grid["cells"][1][0], 255 - images["im0"])
    assert grid["cells"][1][2] is None  # AIDI-A has no K = 2 run
    assert grid["captions"][0] == ["original (im0)", "20.0 dB", "25.0 dB"]
    assert grid["captions"][1][0] == "IFE (ife): exact (∞ dB)"


def test_originals_skip_unacquired_items_and_resize(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(folder / "a.png")
    Image.new("RGB", (30, 30), (1, 2, 3)).save(folder / "c.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,file,url,caption,sha256,status\n"
                        "a,a.png,u,c,s,ok\nb,b.png,u,c,s,error: 404\nc,c.png,u,c,s,ok\n")
    shown = report.originals(manifest, folder, resolution=16, count=2)
    assert list(shown) == ["a", "c"] and shown["a"].shape == (16, 16, 3)
    assert tuple(shown["c"][0, 0]) == (1, 2, 3)


def tiny_notebook(path):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("assert x == 2, 'x must be 2'\nprint('x is', x)")]
    nbformat.write(nb, path)


def test_execute_notebook_injects_parameters_and_renders_html(tmp_path):
    tiny_notebook(tmp_path / "nb.ipynb")
    notebooks.execute_notebook(tmp_path / "nb.ipynb", tmp_path / "out" / "nb.ipynb", tmp_path / "nb.html",
                            parameters={"x": 2}, cwd=tmp_path)
    executed = nbformat.read(tmp_path / "out" / "nb.ipynb", as_version=4)
    assert any("x is 2" in o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "x is 2" in (tmp_path / "nb.html").read_text()
    # a failing cell raises and leaves the executed copy, error included, for reading
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError, match="x must be 2"):
        notebooks.execute_notebook(tmp_path / "nb.ipynb", tmp_path / "failed.ipynb", parameters={"x": 3}, cwd=tmp_path)
    failed = json.loads((tmp_path / "failed.ipynb").read_text())
    assert any(o.get("output_type") == "error" for c in failed["cells"] for o in c.get("outputs", []))


def test_execute_notebook_refuses_an_undeclared_parameter(tmp_path):
    tiny_notebook(tmp_path / "nb.ipynb")
    with pytest.raises(ValueError, match=r"no parameter named \['y'\].*it has \['x'\]"):
        notebooks.execute_notebook(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", parameters={"y": 1})
    assert not (tmp_path / "out.ipynb").exists()

"""The Snakemake workflow without running it: lint, the paper preset's DAG, config errors."""

from __future__ import annotations

import math
import shutil

import pytest
import yaml

from diffinv.workflow.config import expand_runs
from snakemake_runner import ROOT, job_counts, load_config, snakemake

@pytest.mark.parametrize("preset", ["config.yaml", "demo.yaml", "demo-flow.yaml", "quick.yaml", "sdxl.yaml",
                                    "sd3.yaml", "flux.yaml", "demo-learned.yaml", "ddpm-cifar10.yaml"])
def test_lint_is_clean(preset):
    out = snakemake("--lint", "--configfile", str(ROOT / "config" / preset))
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr


def test_paper_dry_run_lists_every_job(tmp_path):
    config = load_config("config.yaml")
    runs, aliases = expand_runs(config)
    out = snakemake("-n", cwd=tmp_path)  # no --configfile: the paper preset is the default
    counts = job_counts(out.stdout)
    shards = {name: math.ceil(spec["count"] / config["shard_size"]) for name, spec in config["datasets"].items()}
    assert counts["invert"] == len(runs) * sum(shards.values())
    assert counts["error_stats"] == len(config["datasets"]) * len(config["error_stats"]["runs"])
    for rule in ("fetch_weights", "fetch_coco_captions", "fetch_nocaps_captions", "collect", "collect_error_stats",
                 "tables"):
        assert counts[rule] == 1, rule
    assert counts["acquire"] == 2 and counts["fetch_torchvision_trunk"] == 2
    # every sweep the paper needs is there, and no duplicate of an identical setting
    for name in ("fpi-K1", "fpi-K10", "aidi_a-K5", "aidi_e-K2", "renoise-K10", "ife-N10", "ddim-N20", "ife_e0"):
        assert f"results/paper/runs/coco/{name}/009.csv" in out.stdout
    assert aliases == {"fpi-K3": "fpi", "aidi_e-K3": "aidi_e", "aidi_a-K3": "aidi_a", "renoise-K1": "renoise"}
    assert "results/paper/runs/coco/fpi-K3/" not in out.stdout
    assert "runtime=" in out.stdout and "gpu=1" in out.stdout


def test_quick_dry_run_plans_every_job(tmp_path):
    config = load_config("quick.yaml")
    runs, aliases = expand_runs(config)
    counts = job_counts(snakemake("-n", "--configfile", str(ROOT / "config" / "quick.yaml"), cwd=tmp_path).stdout)
    assert counts["invert"] == len(runs) * len(config["datasets"]) == 16 and not aliases
    assert counts["error_stats"] == len(config["datasets"]) * 3
    for rule in ("tables", "error_figure", "qualitative_figures", "efficiency_figure", "all"):
        assert counts[rule] == 1, rule


@pytest.mark.parametrize("preset", ["sdxl", "sd3", "flux"])
def test_each_model_preset_plans_every_job_with_its_weights(preset, tmp_path):
    config = load_config(f"{preset}.yaml")
    runs, _ = expand_runs(config)
    out = snakemake("-n", "--configfile", str(ROOT / "config" / f"{preset}.yaml"), cwd=tmp_path).stdout
    counts = job_counts(out)
    shards = {name: math.ceil(spec["count"] / config["shard_size"]) for name, spec in config["datasets"].items()}
    assert counts["invert"] == len(runs) * sum(shards.values())
    assert counts["fetch_weights"] == 1 and "fit_model" not in counts
    repo = config["model"]["repo_id"].replace("/", "--")
    assert f"data/weights/{repo}-{config['model']['revision']}.json" in out
    assert f"results/{preset}/runs/coco/ife/000.csv" in out


def test_demo_flow_dry_run_plans_every_job_in_its_own_folders(tmp_path):
    """The rectified-flow demo: the demo's DAG, one shard per run, under results/demo-flow/."""
    shutil.copytree(ROOT / "data" / "manifests", tmp_path / "data" / "manifests")
    runs, _ = expand_runs(load_config("demo-flow.yaml"))
    out = snakemake("-n", "--configfile", str(ROOT / "config" / "demo-flow.yaml"), cwd=tmp_path).stdout
    counts = job_counts(out)
    assert counts["invert"] == len(runs) and counts["fit_model"] == 1 and counts["error_stats"] == 3
    for rule in ("tables", "error_figure", "qualitative_figures", "efficiency_figure", "all"):
        assert counts[rule] == 1, rule
    for name in ("ddim-N10", "ife-N20", "fpi-N10", "fpi-K10", "edict"):
        assert f"results/demo-flow/runs/photos/{name}/000.csv" in out
    assert "results/demo-flow/model/gmm.npz" in out and "tables/demo-flow/paired_psnr_vs_ife.md" in out
    assert "results/demo/" not in out and "tables/demo/" not in out


@pytest.mark.parametrize("preset", ["demo-learned", "ddpm-cifar10"])
def test_pixel_presets_plan_every_job_with_their_model_source(preset, tmp_path):
    """The learned demo trains its network (and scores it against the demo's mixture); the pretrained DDPM
    is fetched at its pinned commit. Both evaluate the demo's photographs, one shard per run."""
    shutil.copytree(ROOT / "data" / "manifests", tmp_path / "data" / "manifests")
    config = load_config(f"{preset}.yaml")
    runs, _ = expand_runs(config)
    out = snakemake("-n", "--configfile", str(ROOT / "config" / f"{preset}.yaml"), cwd=tmp_path).stdout
    counts = job_counts(out)
    assert counts["invert"] == len(runs) and counts["error_stats"] == 3 and "fit_model" not in counts
    for rule in ("tables", "error_figure", "qualitative_figures", "efficiency_figure", "all"):
        assert counts[rule] == 1, rule
    assert f"results/{preset}/runs/photos/ife-N10/000.csv" in out and "results/demo/" not in out
    if preset == "demo-learned":
        assert counts["train_model"] == counts["fit_reference"] == counts["model_quality"] == 1
        assert "fetch_weights" not in counts and "results/demo-learned/model/pixel" in out
        for artefact in ("tables/demo-learned/model_quality.md", "figures/demo-learned/training_loss.png"):
            assert artefact in out
    else:
        assert counts["fetch_weights"] == 1 and "train_model" not in counts and "model_quality" not in counts
        assert f"data/weights/google--ddpm-cifar10-32-{config['model']['revision']}.json" in out


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    """The workflow runs diffinv.workflow.config.prepare at parse time (its cases: tests/test_config.py)."""
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["runs"]["fpi"]["params"] = {"Q": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--configfile", str(path), cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert "config key runs.fpi.params: method 'fpi' has no parameter ['Q']" in out.stdout + out.stderr
    assert "Job stats" not in out.stdout

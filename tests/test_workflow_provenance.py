"""Regenerating after a change never serves a stale number.

One tiny workflow run (runs ``ddim`` and ``ife``, two photographs, no LPIPS) in a temporary copy of
the repository, made a git checkout so that captions name a commit; then each kind of change is
checked with a dry run against that run's metadata: code reruns exactly the jobs that import it,
settings rerun the jobs they describe, and what cannot change a row (a docstring, a comment,
``batch_size``, the checkout's folder) reruns nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

from snakemake_runner import ROOT, job_counts, load_config, snakemake

_ANYWHERE = shutil.ignore_patterns(".git", ".venv", ".snakemake", "__pycache__", "*.egg-info", ".pytest_cache")
_AT_ROOT = {"results", "logs", "report.zip", ".cache"}  # the workflow's outputs, not benchmarks/results
_IN_DATA = {"downloads", "weights"}


def COPIED(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out: caches, the environment, and every output of an earlier run."""
    skipped = set(_ANYWHERE(folder, names))
    if Path(folder) == ROOT:
        skipped |= _AT_ROOT & set(names)
    if Path(folder) == ROOT / "data":
        skipped |= _IN_DATA & set(names)
    return skipped
IFE = Path("src/diffinv/methods/ife.py")


def tiny_config(**changes) -> dict:
    config = load_config("demo.yaml")
    config.update(preset="tiny", datasets={"tiny": {"source": "photos"}}, shard_size=2, batch_size=1,
                  qualitative=1, sweeps=[], runs={"ddim": {"method": "ddim"}, "ife": {"method": "ife"}})
    config["model"]["fit"].update(photos=["astronaut", "coffee"], size=64, components=4)
    config["inversion"]["num_steps"] = 10
    config["metrics"]["lpips"] = []
    config["error_stats"].update(runs=["ife", "ddim"], images=1)
    config["report"].update(images=1, qualitative_runs=["ddim", "ife"], iteration_methods=["fpi"])
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    return config


def write_config(work: Path, name: str, **changes) -> str:
    (work / name).write_text(yaml.safe_dump(tiny_config(**changes), sort_keys=False))
    return name


def run(work: Path, *args: str, configfile: str = "tiny.yaml"):
    return snakemake("--cores", "2", "--configfile", configfile, *args, cwd=work, snakefile=work / "Snakefile")


def planned(work: Path, configfile: str = "tiny.yaml") -> tuple[dict[str, int], set[str]]:
    """Job counts of a dry run, and the (rule, run) of every planned invert and error_stats job."""
    out = run(work, "-n", configfile=configfile).stdout
    if "Nothing to be done" in out:
        return {}, set()
    jobs = set(re.findall(r"^(?:local)?rule (invert|error_stats):\n(?:.*\n)*?\s+wildcards: [^\n]*run=(\w+)", out, re.M))
    return job_counts(out), {f"{rule}:{name}" for rule, name in jobs}


@contextmanager
def edited(path: Path, old: str, new: str):
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    try:
        yield
    finally:
        path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The repository copied to a fresh folder, committed, and the tiny workflow run once."""
    work = tmp_path_factory.mktemp("provenance") / "checkout"
    shutil.copytree(ROOT, work, ignore=COPIED)
    (work / "data" / "manifests" / "tiny.csv").write_text(
        "".join((ROOT / "data" / "manifests" / "photos.csv").read_text().splitlines(keepends=True)[:3]))
    write_config(work, "tiny.yaml")
    git = ["git", "-C", str(work), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tiny"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short=10", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    run(work)
    return work, commit


def test_the_run_records_its_provenance(tiny):
    work, commit = tiny
    rows = pd.read_csv(work / "results" / "tiny" / "results.csv")
    assert len(rows) == 4 and (rows["status"] == "ok").all()
    assert rows["code"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert rows.groupby("run")["code"].nunique().eq(1).all() and rows["code"].nunique() == 2  # one per method
    assert (rows["torch_version"] == __import__("torch").__version__).all()
    for column in ("diffusers_version", "transformers_version", "lpips_version"):
        assert rows[column].notna().all() and (rows[column] != "absent").all(), column
    assert (rows["model"] == "gaussian_mixture").all() and rows["weights_sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert (rows["dtype"] == "float64").all() and (rows["device"] == "cpu").all()
    line = f"diffinv 0.1.0, git {commit}"
    for table in (work / "tables" / "tiny").glob("*.md"):
        caption = table.read_text().splitlines()[0]
        assert f"{line};" in caption or caption.endswith(f"{line}*"), (table.name, caption)


def test_editing_a_methods_code_reruns_exactly_its_runs(tiny):
    work, _ = tiny
    with edited(work / IFE, "    return z", "    z = z + 0\n    return z"):
        counts, jobs = planned(work)
    assert jobs == {"invert:ife", "error_stats:ife"}
    assert counts["collect"] == counts["tables"] == counts["error_figure"] == 1


def test_docstrings_and_comments_rerun_nothing(tiny):
    work, _ = tiny
    with edited(work / IFE, '"""', '"""A changed docstring. '), \
            edited(work / "src/diffinv/algebra.py", "\n", "\n# a new comment\n"):
        assert planned(work) == ({}, set())


def test_editing_figure_code_reruns_only_the_figure_notebooks(tiny):
    work, _ = tiny
    with edited(work / "src/diffinv/figures.py", "def theme() -> None:", "def theme() -> None:\n    pass\n"):
        counts, jobs = planned(work)
    assert not jobs
    assert counts == {"error_figure": 1, "qualitative_figures": 1, "efficiency_figure": 1, "all": 1}


@pytest.mark.parametrize("change", [{"model": {**tiny_config()["model"], "dtype": "float32"}},
                                    {"inversion": {**tiny_config()["inversion"], "prompt": "empty"}}],
                         ids=["dtype", "prompt"])
def test_a_changed_setting_reruns_every_job_it_describes(tiny, change):
    work, _ = tiny
    counts, jobs = planned(work, write_config(work, "changed.yaml", **change))
    assert {"invert:ddim", "invert:ife", "error_stats:ddim", "error_stats:ife"} == jobs
    assert counts["invert"] == 2


def test_batch_size_and_the_checkouts_folder_rerun_nothing(tiny):
    work, _ = tiny
    assert planned(work, write_config(work, "batched.yaml", batch_size=2)) == ({}, set())
    moved = work.parent / "moved"
    work.rename(moved)
    try:
        assert planned(moved) == ({}, set())
    finally:
        moved.rename(work)


def absolute_paths(text: str, roots: list[str]) -> list[str]:
    return [root for root in roots if root in text]


def test_no_artefact_names_a_path_of_the_machine_that_built_it(tiny):
    work, _ = tiny
    roots = [str(work), str(ROOT), str(Path.home())]
    made = [*(work / "tables" / "tiny").iterdir(), *(work / "figures" / "tiny").iterdir(),
            *(work / "results" / "tiny" / "notebooks").iterdir()]
    committed = [*(ROOT / "tables").rglob("*.*"), *(ROOT / "figures").rglob("*.*")]
    assert made and committed
    for path in made + committed:
        text = path.read_bytes().decode("latin-1")
        assert not absolute_paths(text, roots), path
    committed_text = "".join(p.read_bytes().decode("latin-1") for p in committed if p.suffix in (".csv", ".md", ".tex"))
    assert not re.search(r"(?<![\w.:/])/(?:home|root|tmp|work|Users|mnt|opt|var)/", committed_text)
    # Snakemake's record of every job's parameters
    for record in (work / ".snakemake" / "metadata").iterdir():
        recorded = json.loads(record.read_text())
        assert not absolute_paths(json.dumps([recorded.get("params"), recorded.get("input")]), roots), record.name


def test_the_snakemake_report_holds_every_table_and_figure(tiny):
    work, commit = tiny
    run(work, "--report", "report.zip")
    with zipfile.ZipFile(work / "report.zip") as archive:
        names = "\n".join(archive.namelist())
    for stem in ("table1_reconstruction.csv", "paired_psnr_vs_ife.csv", "budget.csv",
                 "figure2_error_statistics.png", "figure3_qualitative_tiny.png", "quality_vs_cost.png",
                 "tables.html"):
        assert stem in names, stem

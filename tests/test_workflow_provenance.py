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
    # targets before --configfile, which takes every value after it
    return snakemake(*args, "--cores", "2", "--configfile", configfile, cwd=work, snakefile=work / "Snakefile")


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
    with edited(work / "src/diffinv/workflow/figures.py", "def theme() -> None:", "def theme() -> None:\n    pass\n"):
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
            *(work / "results" / "tiny" / "notebooks").iterdir(), *(work / "notebooks" / "executed" / "tiny").iterdir()]
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


# ---------------------------------------------------------------- no silent wrong result, from the outside
# Each test below works on its own copy of the tiny run (metadata and time stamps kept), so what it changes
# and reruns leaves the shared run as the tests above expect it.

MEASURED = ["seconds_inversion", "seconds_reconstruction", "peak_mem_mb"]


def copy_of(tiny, tmp_path) -> Path:
    work, _ = tiny
    copy = tmp_path / "checkout"
    shutil.copytree(work, copy, symlinks=True)
    return copy


def rows_of(work: Path, preset: str = "tiny") -> pd.DataFrame:
    rows = pd.read_csv(work / "results" / preset / "results.csv", dtype={"id": str})
    return rows.drop(columns=MEASURED).sort_values(["run", "id"]).reset_index(drop=True)


def manifest_line(work: Path, image_id: str) -> str:
    return next(line for line in (work / "data/manifests/tiny.csv").read_text().splitlines()
                if line.startswith(f"{image_id},"))


def test_a_changed_image_is_recomputed_when_its_shard_resumes(tiny, tmp_path):
    """Kill an invert job after its first image, change that image's crop, rerun: the resumed shard
    recomputes the changed image (its row is a fresh run's) instead of keeping the old row."""
    import os
    import signal
    import sys
    import time

    work = copy_of(tiny, tmp_path)
    slow = write_config(work, "slow.yaml", runs={"fpi": {"method": "fpi", "params": {"K": 5}}},
                        inversion={**tiny_config()["inversion"], "num_steps": 50},
                        report={**tiny_config()["report"], "qualitative_runs": ["fpi"]},
                        error_stats={**tiny_config()["error_stats"], "runs": []})
    target = "results/tiny/runs/tiny/fpi/000.csv"
    first = work / "results/tiny/partial/tiny/fpi/000/000000.json"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", str(work / "Snakefile"), "--directory",
                             str(work), target, "--cores", "1", "--configfile", slow], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not first.exists():
        assert proc.poll() is None, f"the job ended before its first image was recorded: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / target).exists()
    run(work, "--unlock", configfile=slow)  # a killed Snakemake leaves its lock
    killed = json.loads(first.read_text())["row"]
    assert killed["id"] == "cat"

    line = manifest_line(work, "cat")
    box = line.split(",")[-1]
    x0, y0, x1, y1 = map(int, box.split())
    moved = f"{x0 + 10} {y0} {x1 - 10} {y1 - 20}"  # a smaller square inside the same image
    path = work / "data/manifests/tiny.csv"
    path.write_text(path.read_text().replace(line, line.removesuffix(box) + moved))
    run(work, target, configfile=slow)
    log = (work / "logs/tiny/invert/tiny/fpi/000.log").read_text()
    assert "000000.json: saved under other settings, code or input; recomputed" in log
    resumed = pd.read_csv(work / target).set_index("id")
    assert resumed.loc["cat", "psnr"] != killed["psnr"]

    # the resumed row is what a fresh run of the changed input gives
    (work / target).unlink()
    run(work, target, configfile=slow)
    fresh = pd.read_csv(work / target).set_index("id")
    assert fresh.drop(columns=MEASURED).equals(resumed.drop(columns=MEASURED))


def test_two_presets_at_the_same_time_give_the_rows_each_gives_alone(tiny, tmp_path):
    """Two presets on the same dataset, run concurrently in one checkout: each acquires into its own folder and
    gives the rows it gives alone. The second preset is the first under another name, so the tiny run is
    both solo runs (the presets used to share the dataset's image folder as an output)."""
    import sys

    work = copy_of(tiny, tmp_path)
    other = write_config(work, "other.yaml", preset="other")
    alone = {"tiny": rows_of(work, "tiny"), "other": rows_of(work, "tiny")}
    shutil.rmtree(work / "results")
    shutil.rmtree(work / ".snakemake")
    procs = [subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", str(work / "Snakefile"),
                               "--directory", str(work), f"results/{preset}/results.csv", "--cores", "1",
                               "--configfile", config], cwd=work, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for preset, config in (("tiny", "tiny.yaml"), ("other", other))]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    for preset, rows in alone.items():
        together = rows_of(work, preset)
        assert (together["status"] == "ok").all()
        pd.testing.assert_frame_equal(together, rows)
    images = work / "results/other/data/tiny/images"
    assert sorted(p.name for p in images.glob("*.png")) == ["cat.png", "colorwheel.png"]


def test_an_id_that_is_a_path_is_refused_before_any_job(tiny):
    work, _ = tiny
    with edited(work / "data/manifests/tiny.csv", "\ncat,cat.png", "\n../../../../x,cat.png"):
        out = run_unchecked(work, "-n")
    assert out.returncode != 0 and "Job stats" not in out.stdout
    assert "tiny.csv, line 2: id '../../../../x' is not a name" in out.stdout + out.stderr
    assert not (work.parents[3] / "x.png").exists()


@pytest.mark.parametrize("params, key, reason", [
    ({"ife": {"method": "ife", "params": {"compute_e0": "false"}}}, "runs.ife.params.compute_e0",
     "must be true or false, got 'false'"),
    ({"fpi": {"method": "fpi", "params": {"K": 0}}}, "runs.fpi.params.K", "must be an integer >= 1, got 0"),
    ({"fpi": {"method": "fpi", "params": {"K": "abc"}}}, "runs.fpi.params.K", "must be an integer >= 1, got 'abc'"),
    ({"ddim": {"method": "ddim", "num_steps": 600}}, "runs.ddim.num_steps", "no level 0"),
    ({"ddim": {"method": "ddim", "guidance": float("nan")}}, "runs.ddim.guidance", "must be a finite number"),
], ids=["bool-as-text", "K-0", "K-text", "steps-600", "guidance-nan"])
def test_a_mistyped_parameter_stops_the_run_before_any_job_naming_its_key(tiny, params, key, reason):
    work, _ = tiny
    runs = {**tiny_config()["runs"], **params}
    out = run_unchecked(work, "-n", configfile=write_config(work, "typed.yaml", runs=runs))
    assert out.returncode != 0 and "Job stats" not in out.stdout
    assert f"config key {key}: " in out.stdout + out.stderr and reason in out.stdout + out.stderr


def test_an_error_row_among_the_shown_images_still_gives_every_figure(tiny, tmp_path):
    """The first image (shown in Figures 3 and 4) loses its caption, so every run's row for it is an
    error: the figures are still made, the cell marked failed, the error statistics use the next image."""
    import nbformat

    work = copy_of(tiny, tmp_path)
    line = manifest_line(work, "cat")
    path = work / "data/manifests/tiny.csv"
    fields = line.split(",")
    fields[3] = ""
    path.write_text(path.read_text().replace(line, ",".join(fields)))
    figures = [f"figures/tiny/{stem}.png" for stem in ("figure2_error_statistics", "figure3_qualitative_tiny",
                                                       "figure4_iterations_tiny", "quality_vs_cost")]
    run(work, *figures)
    rows = pd.read_csv(work / "results/tiny/results.csv", dtype={"id": str}).set_index(["run", "id"])
    assert (rows.xs("cat", level="id")["status"] == "error: empty caption (prompt: caption)").all()
    for stem in ("figure2_error_statistics", "figure3_qualitative_tiny", "figure4_iterations_tiny", "quality_vs_cost"):
        assert (work / "figures/tiny" / f"{stem}.png").stat().st_mtime > (work / "data/manifests/tiny.csv").stat().st_mtime
    notebook = nbformat.read(work / "notebooks/executed/tiny/qualitative.ipynb", as_version=4)
    assert not [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    stats = pd.read_csv(work / "results/tiny/error_stats.csv", dtype={"id": str})
    assert set(stats["id"]) == {"colorwheel"}


def test_a_shard_cut_short_fails_collect_naming_it(tiny, tmp_path):
    work = copy_of(tiny, tmp_path)
    shard = work / "results/tiny/runs/tiny/ife/000.csv"
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:-1]))  # the last image's row lost
    out = run_unchecked(work, "results/tiny/results.csv")
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "results/tiny/runs/tiny/ife/000.csv: 1 rows for the 2 images of its slice of the manifest" in log
    assert "missing ['colorwheel']" in log and "delete it and rerun" in log


def run_unchecked(work: Path, *args: str, configfile: str = "tiny.yaml"):
    return snakemake(*args, "--cores", "2", "--configfile", configfile, cwd=work, snakefile=work / "Snakefile",
                     check=False)

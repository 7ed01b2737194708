"""Files users run with other tools: the conda environment and the Snakemake profiles."""

import pytest
import yaml

from snakemake_runner import ROOT

TEST_ONLY = {"pytest", "pytest-xdist"}


def pins(lines) -> dict[str, str]:
    return dict(line.strip().split("==") for line in lines if "==" in line and not line.lstrip().startswith("#"))


def test_conda_environment_pins_equal_requirements():
    env = yaml.safe_load((ROOT / "envs" / "diffinv.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    required = pins((ROOT / "requirements.txt").read_text().splitlines())
    assert pins(pip) == {k: v for k, v in required.items() if k not in TEST_ONLY}
    assert "python=3.11" in env["dependencies"]


@pytest.mark.parametrize("profile", ["default", "slurm"])
def test_profile_keys_are_snakemake_options(profile):
    from snakemake.cli import get_argument_parser

    options = {s for action in get_argument_parser()._actions for s in action.option_strings}
    settings = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
    unknown = [key for key in settings if f"--{key}" not in options]
    assert not unknown, f"profiles/{profile}: not Snakemake options: {unknown}"
    if profile == "slurm":
        assert settings["executor"] == "slurm"

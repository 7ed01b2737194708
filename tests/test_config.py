"""The workflow configuration: schema defaults, errors naming their key, run expansion and shards."""

import copy

import pytest
import yaml

from diffinv.api import Run
from diffinv.workflow.config import ConfigError, expand_runs, prepare, shard_ranges
from snakemake_runner import ROOT

SCHEMA = ROOT / "config" / "schema.yaml"


def preset(name: str = "demo.yaml") -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_presets_validate_and_fill_defaults(name):
    config = preset(name)
    runs, aliases = prepare(config, SCHEMA)
    assert config["sources"]["coco_annotations"]["md5"].startswith("f4bbac64")  # a schema default
    assert {"ddim", "ife", "ife_noerr", "renoise", "easyinv", "bdia", "belm", "edict", "erddci"} <= set(runs)
    assert all(target in runs for target in aliases.values())


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["inversion"].update(num_steps=-3), "config key inversion.num_steps: -3 is less than the minimum"),
    (lambda c: c["model"].update(dtype="float8"), "config key model.dtype: 'float8' is not one of"),
    (lambda c: c.update(shard_size="ten"), "config key shard_size: 'ten' is not of type 'integer'"),
    (lambda c: c.update(batch_size=0), "config key batch_size: 0 is less than the minimum of 1"),
    (lambda c: c.update(colour="blue"), "config key <top level>: Additional properties are not allowed"),
    (lambda c: c["runs"].update(ddim={"method": "dddim"}), "config key runs.ddim.method: unknown method 'dddim'"),
    (lambda c: c["runs"].update(fpi={"method": "fpi", "params": {"Q": 1}}), "config key runs.fpi.params"),
    (lambda c: c["error_stats"].update(runs=["easyinv"]), "config key error_stats.runs: 'easyinv'"),
    (lambda c: c["sweeps"].append({"param": "K", "runs": ["ddim"], "values": [2]}), "has no parameter K"),
    (lambda c: c["sweeps"].append({"param": "K", "runs": ["nope"], "values": [2]}), "'nope' is not a configured run"),
    (lambda c: c["runs"].update(bdia={"method": "bdia", "guidance": 3.0}), "runs.bdia: an exact method needs"),
    (lambda c: c["model"]["fit"].update(photos=["nowhere"]), "config key model.fit.photos: unknown photos"),
    (lambda c: c["model"].update(resolution=60), "config key model.resolution: must be a multiple"),
    (lambda c: c["report"].update(qualitative_runs=["ddim", "dim"]), "config key report.qualitative_runs: 'dim'"),
    (lambda c: c["report"].update(images=5), "config key report.images: 5 images are shown but only"),
    (lambda c: c["report"].update(iteration_methods=["ddim"]), "config key report.iteration_methods.0"),
    # method parameters, typed by the method's signature (diffinv.methods.params)
    (lambda c: c["runs"]["fpi"].update(params={"K": 0}), "config key runs.fpi.params.K: must be an integer >= 1, "
                                                          "got 0"),
    (lambda c: c["runs"]["fpi"].update(params={"K": -1}), "runs.fpi.params.K: must be an integer >= 1, got -1"),
    (lambda c: c["runs"]["fpi"].update(params={"K": 2.5}), "runs.fpi.params.K: must be an integer >= 1, got 2.5"),
    (lambda c: c["runs"]["fpi"].update(params={"K": True}), "runs.fpi.params.K: must be an integer >= 1, got True"),
    (lambda c: c["runs"]["ife_e0"].update(params={"compute_e0": "false"}),
     "runs.ife_e0.params.compute_e0: must be true or false, got 'false'"),
    (lambda c: c["runs"]["aidi_a"].update(params={"ridge": float("nan")}), "config key runs.aidi_a.params.ridge: "
                                                                           "must be a finite number, got nan"),
    (lambda c: c["runs"]["easyinv"].update(params={"order": "sideways"}),
     "runs.easyinv.params.order: must be one of 'notebook', 'after', got 'sideways'"),
    (lambda c: c["runs"]["edict"].update(params={"p": 0.0}), "runs.edict.params.p: must be a finite number in (0, 1]"),
    (lambda c: c["sweeps"].append({"param": "K", "runs": ["renoise"], "values": [-1]}), "config key sweeps.3.values"),
    # NaN and infinity anywhere (JSON Schema's minimum lets NaN through)
    (lambda c: c["inversion"].update(guidance=float("nan")), "config key inversion.guidance: must be a finite number"),
    (lambda c: c["error_stats"].update(tol=float("nan")), "config key error_stats.tol: must be a finite number"),
    (lambda c: c["resources"].update(seconds_per_nfe=float("inf")), "config key resources.seconds_per_nfe: must be"),
    # what the model's grid or the metrics cannot take
    (lambda c: c["inversion"].update(num_steps=600), "config key inversion.num_steps: ddim at 600 steps:"),
    (lambda c: c["sweeps"][2].update(values=[10, 600]), "config key sweeps.2.values: ddim-N600 at 600 steps"),
    (lambda c: c["runs"]["ddim"].update(num_steps=501), "config key runs.ddim.num_steps: ddim at 501 steps"),
    (lambda c: c["model"].update(resolution=8), "config key model.resolution: 8 px is below the 31 px that SSIM "
                                                "and LPIPS alex need"),
])
def test_bad_values_name_their_key(edit, message):
    config = copy.deepcopy(preset())
    edit(config)
    with pytest.raises(ConfigError) as err:
        prepare(config, SCHEMA)
    assert message in str(err.value)


def test_sweeps_name_variants_and_alias_identical_settings():
    config = preset()
    config["sweeps"] = [{"param": "K", "runs": ["fpi"], "values": [1, 3]},
                        {"param": "num_steps", "runs": ["ife"], "values": [10, 50]}]
    prepare(config, SCHEMA)
    runs, aliases = expand_runs(config)
    assert runs["fpi-K1"].params == {"K": 1} and runs["ife-N10"].num_steps == 10
    assert runs["ife-N10"].params == runs["ife"].params
    assert aliases == {"fpi-K3": "fpi", "ife-N50": "ife"}  # the defaults K=3 and N=50 are not run twice


def test_shard_ranges_cover_every_image_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(4, 4) == [(0, 4)]
    assert sum(stop - start for start, stop in shard_ranges(1000, 100)) == 1000


def test_a_run_survives_runs_csv():
    """runs.csv stores Run.as_dict(); reading it back as text gives the same settings and signature."""
    import csv
    import io

    runs, _ = prepare(copy.deepcopy(preset()), SCHEMA)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(next(iter(runs.values())).as_dict()))
    writer.writeheader()
    writer.writerows(run.as_dict() for run in runs.values())
    back = [Run.from_dict(row) for row in csv.DictReader(io.StringIO(buffer.getvalue()))]
    assert [r.signature for r in back] == [r.signature for r in runs.values()]
    assert [r.as_dict() for r in back] == [r.as_dict() for r in runs.values()]


def test_a_run_is_made_by_hand_from_a_method_and_its_parameters():
    """Everything but the method is defaulted and checked: N = 50, no guidance, reconstruction guidance that
    of the inversion, the name the method's, parameters completed from the signature."""
    from diffinv.methods import ParamError

    run = Run("fpi", {"K": 5})
    assert (run.name, run.num_steps, run.guidance, run.reconstruction_guidance, run.params) == ("fpi", 50, 1.0, 1.0,
                                                                                              {"K": 5})
    guided = Run("ife", guidance=7.5)
    assert guided.reconstruction_guidance == 7.5 and guided.params["compute_e0"] is False
    assert Run("ddim", name="x").signature == Run("ddim").signature  # a name is not a setting
    with pytest.raises(ParamError, match="K: must be an integer >= 1, got 0"):
        Run("fpi", {"K": 0})

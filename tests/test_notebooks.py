"""The report notebooks as stored in git: no outputs, one parameters cell, each executed by a rule."""

import json

import pytest

from snakemake_runner import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_report_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["efficiency", "error_statistics", "qualitative", "tables"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_and_with_one_parameters_cell(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "strip outputs before committing"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and code[0] is tagged[0]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "papermill" not in nb["metadata"]  # an executed copy committed by mistake


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_is_executed_by_a_rule(path):
    assert f'notebook=notebook("{path.stem}")' in (ROOT / "rules" / "report.smk").read_text()

"""What a job process imports before its work (issue 14): the package's public names load on first use."""

import subprocess
import sys

import pytest

import diffinv


def imported_after(statement: str) -> set[str]:
    """Top-level modules a fresh interpreter holds after ``statement``."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", ["import diffinv", "from diffinv.workflow.notebooks import execute_notebook, provenance_line"])
def test_the_package_and_the_notebook_runner_do_not_import_torch(statement):
    assert "torch" not in imported_after(statement)


def test_public_names_are_the_submodules_objects():
    from diffinv import api, methods, schedule

    assert diffinv.invert is api.invert and diffinv.reconstruct is api.reconstruct
    assert diffinv.InversionResult is api.InversionResult and diffinv.guided_eps is api.guided_eps
    assert diffinv.METHODS is methods.METHODS and diffinv.get_method is methods.get_method
    assert diffinv.Schedule is schedule.Schedule
    assert set(diffinv.__all__) <= set(dir(diffinv))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        diffinv.nonexistent  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'nonexistent'"):
        exec("from diffinv import nonexistent")

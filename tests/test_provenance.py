"""Code fingerprints at the right grain, weights digests, versions and the git line of captions."""

import hashlib
import subprocess
import time

import numpy as np
import pytest

from diffinv import METHODS
from diffinv.workflow import notebooks, provenance
from diffinv.models import GaussianMixtureDenoiser
from snakemake_runner import ROOT

CODE = '''
def f(x):
    """Twice x."""
    return 2 * x
'''


def relative(paths):
    return {p.relative_to(provenance.PACKAGE).as_posix() for p in paths}


def test_docstrings_comments_and_layout_do_not_change_the_normalised_code():
    same = ['\ndef f(x):\n    """Another docstring."""\n    return 2 * x\n',
            "\ndef f(x):  # a comment\n\n    return 2 * x  # another\n",
            '"""A module docstring."""\ndef f(x):\n    return (2 *\n            x)\n']
    assert all(provenance.normalised_code(s) == provenance.normalised_code(CODE) for s in same)
    for changed in ("\ndef f(x):\n    return 3 * x\n", "\ndef f(y):\n    return 2 * y\n",
                    '\ndef f(x):\n    "a string that is not the first statement"\n    x = x\n    return 2 * x\n'):
        assert provenance.normalised_code(changed) != provenance.normalised_code(CODE)


def test_an_invert_job_runs_its_own_methods_module_and_no_other():
    script = ROOT / "rules" / "scripts" / "invert.py"
    ife, fpi = relative(provenance.code_modules(script, "ife")), relative(provenance.code_modules(script, "fpi"))
    assert "methods/ife.py" in ife and "methods/fpi.py" not in ife
    assert "methods/fpi.py" in fpi and "methods/ife.py" not in fpi
    shared = {"algebra.py", "schedule.py", "api.py", "workflow/runs.py", "evaluation/roundtrip.py",
              "evaluation/metrics.py", "evaluation/perceptual.py", "evaluation/images.py", "models/base.py",
              "models/gmm.py", "models/stable_diffusion.py", "methods/base.py", "methods/__init__.py",
              "workflow/provenance.py"}
    assert shared <= ife and shared <= fpi
    assert ife - {"methods/ife.py"} == fpi - {"methods/fpi.py"}
    # the ablation and its method share a module, hence a fingerprint
    assert provenance.code_fingerprint(script, method="ife") == provenance.code_fingerprint(script, method="ife_noerr")
    assert provenance.code_fingerprint(script, method="ife") != provenance.code_fingerprint(script, method="ddim")


def test_an_edit_of_renoise_s_noise_regularizer_changes_renoise_s_fingerprint_only(monkeypatch):
    # not a registered method's module: it is ReNoise's because only methods/renoise.py imports it
    script = ROOT / "rules" / "scripts" / "invert.py"
    jobs = {**{("invert", method): (script, method) for method in METHODS},
            **{entry.name: (entry, None) for entry in [*(ROOT / "rules" / "scripts").glob("*.py"),
                                                       *(ROOT / "notebooks").glob("*.ipynb")]}}

    def fingerprints():
        return {job: provenance.code_fingerprint.__wrapped__(entry, method=method)
                for job, (entry, method) in jobs.items()}

    before, digest = fingerprints(), provenance._module_digest
    modules = sorted((provenance.PACKAGE / "methods" / "noise_regularizer").glob("*.py"))
    assert {"__init__.py", "kl.py", "autocorrelation.py", "reference.py"} <= {m.name for m in modules}
    for module in modules:
        edited = hashlib.sha256(provenance.normalised_code(module.read_text() + "\nEDITED = 1\n").encode()).digest()
        monkeypatch.setattr(provenance, "_module_digest", lambda path: edited if path == module else digest(path))
        changed = {job for job, fingerprint in fingerprints().items() if fingerprint != before[job]}
        # the readable reference runs in the tests and the benchmark only
        assert changed == (set() if module.name == "reference.py" else {("invert", "renoise")}), module.name


def test_notebooks_depend_on_the_modules_they_import():
    notebook = ROOT / "notebooks"
    tables = relative(provenance.code_modules(notebook / "tables.ipynb"))
    figure2 = relative(provenance.code_modules(notebook / "error_statistics.ipynb"))
    assert "workflow/tables.py" in tables and "workflow/figures.py" not in tables
    assert "workflow/figures.py" in figure2 and "workflow/tables.py" not in figure2
    shared = ("methods/__init__.py", "methods/base.py", "methods/params.py")  # every method's, no method's own
    assert not any(name.startswith("methods/") and name not in shared
                   for name in tables | figure2)
    runner = relative(provenance.code_modules(ROOT / "rules" / "scripts" / "run_notebook.py"))
    assert "workflow/notebooks.py" in runner and "workflow/figures.py" not in runner
    assert "workflow/report.py" not in runner


def test_the_weights_digest_follows_the_arrays_not_the_file(tmp_path):
    rng = np.random.default_rng(0)
    model = GaussianMixtureDenoiser(np.ones(2) / 2, rng.normal(size=(2, 3)), np.full(2, 0.1))
    model.save(tmp_path / "a.npz")
    time.sleep(1.1)  # a zip entry's time stamp has a 2-second grain; the file may differ, the digest not
    model.save(tmp_path / "b.npz")
    assert provenance.weights_digest(tmp_path / "a.npz") == provenance.weights_digest(tmp_path / "b.npz")
    GaussianMixtureDenoiser(np.ones(2) / 2, rng.normal(size=(2, 3)), np.full(2, 0.1)).save(tmp_path / "c.npz")
    assert provenance.weights_digest(tmp_path / "c.npz") != provenance.weights_digest(tmp_path / "a.npz")
    manifest = '{"folder": "%s", "files": {"unet/x.safetensors": "%s"}}'
    (tmp_path / "a.json").write_text(manifest % ("/one/place", "0" * 64))
    (tmp_path / "b.json").write_text(manifest % ("/another", "0" * 64))
    (tmp_path / "c.json").write_text(manifest % ("/one/place", "1" * 64))
    digest = {k: provenance.weights_digest(tmp_path / f"{k}.json") for k in "abc"}
    assert digest["a"] == digest["b"] != digest["c"]


def test_versions_name_every_library_a_row_depends_on():
    import torch

    versions = provenance.library_versions()
    assert set(versions) == {provenance.version_column(name) for name in provenance.VERSIONED}
    # what decodes, resizes and scores an image, not only the networks
    assert {"pillow_version", "scikit_image_version", "numpy_version", "scipy_version"} <= set(versions)
    assert versions["torch_version"] == torch.__version__ and "absent" not in versions.values()


def test_the_git_line_marks_uncommitted_code_but_not_new_results(tmp_path):
    assert notebooks.git_description(tmp_path) == "not a git checkout"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "rows.csv").write_text("a\n")  # outputs do not make the code "modified"
    (tmp_path / "src" / "new.py").write_text("y = 1\n")  # nor does a file no tracked code uses yet
    assert notebooks.git_description(tmp_path) == f"git {commit}"
    (tmp_path / "src" / "a.py").write_text("import new\n")
    assert notebooks.git_description(tmp_path) == f"git {commit} + uncommitted changes"
    assert notebooks.provenance_line(tmp_path) == f"diffinv 0.1.0, git {commit} + uncommitted changes"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_row_records_the_dtype_the_model_ran_in_and_refuses_another(dtype):
    import torch

    from diffinv.workflow.config import ModelSpec
    from diffinv.workflow.runs import origin

    model = GaussianMixtureDenoiser(np.ones(2) / 2, np.zeros((2, 3)), np.full(2, 0.1), dtype=getattr(torch, dtype))
    row = origin(model, ModelSpec("gaussian_mixture", dtype, "cpu", 8), code="c", weights_sha256="w")
    assert (row["dtype"], row["device"], row["code"], row["model"]) == (dtype, "cpu", "c", "gaussian_mixture")
    other = "float32" if dtype == "float64" else "float64"
    with pytest.raises(ValueError, match=f"runs in {dtype} on cpu, but the job says {other} on cpu"):
        origin(model, ModelSpec("gaussian_mixture", other, "cpu", 8))

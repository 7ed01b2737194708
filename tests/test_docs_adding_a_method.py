"""docs/adding-a-method.md runs as written: its three ``python`` blocks, in order, are a method's file, its
registration and its test. They are executed here on the exact mixture, with the example registered in
``METHODS`` only while it runs, so no other test sees it; its ``yaml`` block is checked as part of the demo
preset and its commands for the option order; the page's claim about what reruns is checked on the code."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

import diffinv.methods as methods
from conftest import random_mixture
from diffinv import METHODS, invert, reconstruct
from diffinv.workflow import provenance
from diffinv.schedule import SD3_SCHEDULER_CONFIG

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "adding-a-method.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def python_blocks(text: str) -> tuple[str, str, str]:
    found = blocks(text, "python")
    assert len(found) == 3, f"{PAGE.name} should have 3 python blocks (file, registration, test), has {len(found)}"
    return found[0], found[1], found[2]


def _clear_provenance_caches() -> None:
    provenance.code_fingerprint.cache_clear()
    provenance.method_modules.cache_clear()


@contextmanager
def page_method(text: str, folder: Path):
    """The page's method file saved in ``folder`` and loaded as a module of ``diffinv.methods``, its registration
    executed as the registry would, its ``Method`` entries in ``METHODS``; all of it removed on exit."""
    source, registration, _ = python_blocks(text)
    tree = ast.parse(registration)
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1]
    assert len(imports) == 1, "the registration imports the method from its own module of the package"
    module_name = f"{methods.__name__}.{imports[0].module}"
    assert module_name not in sys.modules, f"{module_name} exists already: the example would shadow it"
    path = folder / f"{imports[0].module}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    added: list = []
    try:
        spec.loader.exec_module(module)
        namespace = dict(vars(methods))       # the registry's names: Method, ddim_reconstruct, exact_top, ...
        exec(compile(ast.Module(imports, type_ignores=[]), f"{PAGE.name} (registration)", "exec"), namespace)
        for node in tree.body:
            if isinstance(node, ast.Expr):    # ``Method(...),`` as the line reads inside the list
                value = eval(compile(ast.Expression(node.value), f"{PAGE.name} (registration)", "eval"), namespace)
                added += list(value) if isinstance(value, tuple) else [value]
        assert added and all(isinstance(m, methods.Method) for m in added)
        for method in added:
            assert method.name not in METHODS, f"the example's name {method.name!r} is a registered method"
            METHODS[method.name] = method
        _clear_provenance_caches()
        yield added
    finally:
        for method in added:
            METHODS.pop(method.name, None)
        sys.modules.pop(module_name, None)
        _clear_provenance_caches()


def run_page_tests(test_source: str, request) -> list[str]:
    """Every ``test_*`` function of the page's test block, called with the session's fixtures it names."""
    namespace: dict = {"__name__": "docs_adding_a_method_test"}
    exec(compile(test_source, f"{PAGE.name} (test)", "exec"), namespace)
    tests = {name: f for name, f in namespace.items() if name.startswith("test_") and inspect.isfunction(f)}
    assert len(tests) >= 3, "the test template has at least its three parts"
    for test in tests.values():
        test(**{name: request.getfixturevalue(name) for name in inspect.signature(test).parameters})
    return list(tests)


def mse(a, b) -> float:
    return ((a - b) ** 2).mean().item()


def registered() -> tuple[set[str], set[str]]:
    """The registry's names and the loaded modules of ``diffinv.methods``: equal before and after a page run."""
    return set(METHODS), {name for name in sys.modules if name.startswith(methods.__name__ + ".")}


def test_the_pages_method_registers_passes_its_test_and_inverts_on_both_paths(request, mixture, mixture_samples,
                                                                              tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = PAGE.read_text(encoding="utf-8")
    # the session's mixture on either path (the same fitted prior, so the same samples are its data)
    models = {"vp": mixture, "flow": random_mixture(scheduler_config=SD3_SCHEDULER_CONFIG)}
    x = mixture_samples[:4]
    untouched = registered()
    with page_method(text, tmp_path) as added:
        (spec,) = added
        assert METHODS[spec.name] is spec and spec.defaults and set(spec.types) == set(spec.defaults)
        ran = run_page_tests(python_blocks(text)[2], request)
        assert any("bit_for_bit" in name for name in ran)
        for path in spec.paths:
            model = models[path]
            result = invert(spec.name, model, x, num_steps=10)
            assert result.schedule.path == path
            assert result.nfe == spec.nfe(spec.resolve({}), result.schedule)
            before = model.nfe
            recon = reconstruct(spec.name, model, result)
            assert model.nfe - before == spec.reconstruct_nfe(result.schedule)
            ddim = reconstruct("ddim", model, invert("ddim", model, x, num_steps=10))
            assert mse(recon, x) < mse(ddim, x), path   # it inverts, and better than DDIM inversion

        # the page's runs, added to the demo preset, pass the checks every preset gets before any job
        from diffinv.workflow.config import prepare
        from snakemake_runner import load_config

        (snippet,) = blocks(text, "yaml")
        runs = yaml.safe_load(snippet)["runs"]
        config = load_config("demo.yaml")
        config["runs"].update(runs)
        planned, _ = prepare(config, ROOT / "config" / "schema.yaml")
        for name, run in runs.items():
            assert planned[name].method == spec.name
            assert planned[name].params == spec.resolve(run.get("params", {}))
    assert registered() == untouched and spec.name not in METHODS


def test_the_page_breaks_its_test_when_its_code_breaks(request, tmp_path, monkeypatch):
    """The self-test is not vacuous: Heun's average written with the wrong weight fails the page's own test."""
    monkeypatch.chdir(tmp_path)
    text = PAGE.read_text(encoding="utf-8")
    wrong = "(1 - theta) * start + theta * noise_of(eps(estimate, i))"
    assert text.count(wrong) == 1
    broken = text.replace(wrong, "(1 - theta) * start + theta * noise_of(eps(estimate, i - 1))")
    untouched = registered()
    with page_method(broken, tmp_path):
        with pytest.raises(AssertionError):
            run_page_tests(python_blocks(broken)[2], request)
    assert registered() == untouched


def test_the_pages_commands_put_targets_before_configfile():
    commands = [shlex.split(line) for block in blocks(PAGE.read_text(encoding="utf-8"), "bash")
                for line in block.splitlines() if "snakemake" in line]
    assert commands
    for words in commands:
        if "--configfile" in words:   # it takes every value after it as a config file: nothing may follow one
            rest = words[words.index("--configfile") + 1:]
            assert len(rest) == 1 and rest[0].endswith(".yaml") and (ROOT / rest[0]).is_file(), words


def test_registering_a_method_changes_the_code_of_every_job():
    """What the page says reruns: the registry is in the code of the fit, every invert job, collect and every
    notebook, so a new entry there reruns them all."""
    registry = Path(methods.__file__).resolve()
    entries = ["rules/scripts/fit_model.py", "rules/scripts/invert.py", "rules/scripts/collect.py",
               *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "notebooks").glob("*.ipynb")))]
    for entry in entries:
        assert registry in provenance.code_modules(ROOT / entry), entry

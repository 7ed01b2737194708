"""The package's layers: the core (methods, models, schedule, algebra, the invert/reconstruct API and the Run it
needs) imports neither evaluation nor the workflow; evaluation (round trip, metrics, LPIPS, images, the
fixed-point statistics) does not import the workflow; the command line, the demo and the test helpers sit on
top. Every import counts, a lazy one inside a function too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffinv"
LAYERS = ("core", "evaluation", "workflow", "interface")
INTERFACE = {"diffinv.cli", "diffinv.demo", "diffinv.testing"}


def layer(module: str) -> str:
    if module in INTERFACE:
        return "interface"
    for name in ("evaluation", "workflow"):
        if module == f"diffinv.{name}" or module.startswith(f"diffinv.{name}."):
            return name
    return "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, relative imports resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" for a in node.names]
            found |= {n for n in names if (PACKAGE.parent / n.replace(".", "/")).with_suffix(".py").is_file()
                      or (PACKAGE.parent / n.replace(".", "/")).is_dir()} or {base}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name == "diffinv" or name.startswith("diffinv.")} - {module}


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if LAYERS.index(layer(b)) > LAYERS.index(layer(a)))


def test_no_layer_imports_one_above_it():
    assert upward(graph()) == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule can fail: a core module that imports the workflow (lazily) is an upward edge."""
    fake = tmp_path / "diffinv"
    (fake / "workflow").mkdir(parents=True)
    (fake / "workflow" / "__init__.py").write_text("")
    (fake / "workflow" / "config.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "algebra.py").write_text("def f():\n    from .workflow.config import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert upward(graph()) == [("diffinv.algebra", "diffinv.workflow.config")]


@pytest.mark.parametrize("package", ["diffinv.evaluation", "diffinv.workflow"])
def test_a_layers_package_file_imports_none_of_its_modules(package):
    """A job's code fingerprint follows its imports: a package file that imported every module would make every
    job depend on all of them."""
    assert not imports(PACKAGE.parent / package.replace(".", "/") / "__init__.py")

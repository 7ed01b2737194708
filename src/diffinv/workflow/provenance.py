"""Where a result came from: a fingerprint of the library code that can change it, the versions of
the libraries that computed it, and a digest of the model's weights (the git commit that captions
carry is ``diffinv.workflow.notebooks.provenance_line``).

The workflow passes :func:`code_fingerprint` of each job as a rule parameter, so Snakemake reruns a job
when code it imports changes, and only then. The fingerprint hashes each module's syntax tree without
docstrings, so comments, docstrings and formatting change nothing. The grain: a job depends on the
modules its script (or notebook) imports, followed through the package's own imports; the modules that
hold the registered inversion methods are left out of that closure, and an invert job adds back its own
method's modules with what they import. So editing ``methods/ife.py`` reruns the IFE runs only (and
``methods/noise_regularizer/``, imported by ReNoise only, the ReNoise runs), and editing ``figures.py``
reruns the notebooks that import it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterable

import numpy as np

PACKAGE = Path(__file__).resolve().parents[1]  # diffinv/, not this module's workflow/
# Every library whose version can change a number in a row: the networks and schedules (torch, diffusers,
# transformers), LPIPS, the image decoding and resizing (pillow), SSIM (scikit-image, on scipy), the arrays.
VERSIONED = ("torch", "diffusers", "transformers", "lpips", "pillow", "scikit-image", "scipy", "numpy")


def version_column(package: str) -> str:
    """The row column of a package's version: ``scikit-image`` -> ``scikit_image_version``."""
    return f"{package.replace('-', '_')}_version"


# ---------------------------------------------------------------- code fingerprints


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def normalised_code(source: str) -> str:
    """The syntax tree of ``source`` without docstrings, as text: equal for code that differs only in
    comments, docstrings or layout."""
    return ast.dump(_strip_docstrings(ast.parse(source)), include_attributes=False)


def _module_file(dotted: str) -> Path | None:
    """The file of module ``diffinv.<...>`` (a package's ``__init__.py``), or None outside the package."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).parts[:-1])  # a module's or an __init__'s package


def imported_modules(tree: ast.AST, package: str | None = None) -> set[Path]:
    """Files of this package that ``tree`` imports anywhere (lazy imports inside functions included);
    ``package`` resolves relative imports."""
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]  # a name may be a submodule
        for name in names:
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                path = _module_file(".".join(parts[:k]))
                if path is not None:
                    found.add(path)
    return found


def _closure(roots: Iterable[Path], exclude: frozenset[Path]) -> set[Path]:
    seen: set[Path] = set()
    todo = [p for p in roots if p not in exclude]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [p for p in imported_modules(_tree(path), _package_of(path)) if p not in exclude and p not in seen]
    return seen


@lru_cache(maxsize=None)
def method_modules() -> dict[str, frozenset[Path]]:
    """Per registered method, the modules that define its inversion and reconstruction functions, bar
    the shared ``methods/base.py``."""
    import inspect

    from ..methods import METHODS

    shared = PACKAGE / "methods" / "base.py"
    own = {}
    for name, method in METHODS.items():
        files = {Path(inspect.getsourcefile(f)).resolve() for f in (method.invert, method.reconstruct)}
        own[name] = frozenset(files - {shared})
    return own


@lru_cache(maxsize=None)
def _module_digest(path: Path) -> bytes:
    return hashlib.sha256(normalised_code(path.read_text(encoding="utf-8")).encode()).digest()


def _digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(PACKAGE).as_posix()):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + _module_digest(path))
    return h.hexdigest()[:16]


def code_modules(entry: str | Path, method: str | None = None) -> set[Path]:
    """The package modules a job script or notebook (``entry``, a ``.py`` or ``.ipynb`` file) runs:
    its imports followed through the package, every method's own modules left out except ``method``'s."""
    entry = Path(entry)
    if entry.suffix == ".ipynb":
        cells = json.loads(entry.read_text(encoding="utf-8"))["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    else:
        tree = ast.parse(entry.read_text(encoding="utf-8"))
    owned = method_modules()
    every_method = frozenset().union(*owned.values())
    mine = owned[method] if method is not None else frozenset()
    shared = _closure(imported_modules(tree), every_method)
    return shared | _closure(mine, every_method - mine)


@lru_cache(maxsize=None)
def code_fingerprint(*entries: str | Path, method: str | None = None) -> str:
    """16 hex digits over the normalised code of the :func:`code_modules` of every entry (and not of the
    entries themselves: the workflow tracks a job's script and notebook as files)."""
    return _digest(set().union(*(code_modules(entry, method) for entry in entries)))


# ---------------------------------------------------------------- versions, weights, commit


def library_versions() -> dict[str, str]:
    """``<package>_version`` of the libraries a row's numbers depend on (``absent`` if not installed)."""
    import torch

    out = {}
    for name in VERSIONED:
        try:
            out[version_column(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[version_column(name)] = "absent"
    out["torch_version"] = torch.__version__  # with its build, e.g. +cu130 or +cpu
    return out


def weights_digest(path: str | Path) -> str:
    """sha256 of a model's weights, independent of how the file was written: for a fitted mixture
    (``.npz``) its arrays in name order; for a snapshot manifest (``fetch_weights``' JSON) its list of
    file digests, which the manifest verified against the snapshot; for a folder the workflow trained,
    the same list made from its files."""
    path = Path(path)
    h = hashlib.sha256()
    if path.suffix == ".json":
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        h.update(json.dumps(files, sort_keys=True).encode())
    elif path.is_dir():
        files = [{"path": f.relative_to(path).as_posix(), "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                  "size": f.stat().st_size} for f in sorted(path.rglob("*")) if f.is_file()]
        if not files:
            raise ValueError(f"{path}: an empty folder has no weights")
        h.update(json.dumps(files, sort_keys=True).encode())
    else:
        with np.load(path, allow_pickle=False) as arrays:
            for name in sorted(arrays.files):
                value = np.ascontiguousarray(arrays[name])
                h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
                h.update(value.tobytes())
    return h.hexdigest()

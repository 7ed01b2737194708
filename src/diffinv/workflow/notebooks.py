"""Executing a report notebook with papermill into an executed copy plus standalone HTML, and the
provenance line its tables and figures carry."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def execute_notebook(source: str | Path, executed: str | Path, html: str | Path | None = None, *,
                     parameters: dict[str, Any] | None = None, cwd: str | Path = ".") -> None:
    """Run ``source`` with papermill (``parameters`` injected after its cell tagged ``parameters``)
    into ``executed``, then render that copy as standalone HTML. A parameter the notebook does not
    declare is an error; a failing cell raises, and the executed copy up to the failure is kept."""
    import papermill

    known = papermill.inspect_notebook(str(source))
    unknown = sorted(set(parameters or {}) - set(known))
    if unknown:  # papermill would only warn, and the notebook would silently use its defaults
        raise ValueError(f"{source}: no parameter named {unknown} in its cell tagged 'parameters' "
                         f"(it has {sorted(known)})")
    Path(executed).parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=parameters or {}, cwd=str(cwd),
                                   progress_bar=False, log_output=False, kernel_name="python3")
    finally:
        drop_timings(executed)
    if html is not None:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter(template_name="lab").from_filename(str(executed))
        Path(html).write_text(body, encoding="utf-8")


def drop_timings(path: str | Path) -> None:
    """Remove the clock times papermill and nbclient record (notebook and cell start, end, duration), so an
    executed notebook changes only when what it shows changes: the committed copies stay diffable."""
    import nbformat

    if not Path(path).is_file():
        return
    notebook = nbformat.read(path, as_version=4)
    for metadata in [notebook.metadata, *(cell.metadata for cell in notebook.cells)]:
        metadata.pop("execution", None)
        for key in ("start_time", "end_time", "duration"):
            metadata.get("papermill", {}).pop(key, None)
    nbformat.write(notebook, path)


# Paths whose changes can change a result; an edit elsewhere (README, committed outputs, the executed
# notebooks the workflow writes) does not make a build "modified".
CODE_PATHS = ("src", "rules", "notebooks", ":(exclude)notebooks/executed", "config", "Snakefile", "pyproject.toml",
              "requirements.txt")


def git_description(root: str | Path) -> str:
    """``git <short commit>``, with ``+ uncommitted changes`` when code or config under ``root``
    differ from it; ``not a git checkout`` outside one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short=10", "HEAD")
        # untracked files count only through a tracked change that uses them (an import, an include)
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"git {commit}" + (" + uncommitted changes" if changed else "")


def provenance_line(root: str | Path) -> str:
    """The line every table caption and figure footer carries."""
    from .. import __version__

    return f"diffinv {__version__}, {git_description(root)}"

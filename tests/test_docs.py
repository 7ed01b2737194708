"""The README and docs/ cannot rot: the library example and the commands run as written, every repository path
the README, docs/, docstrings and configs name exists, and every number comes from the committed tables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffinv.workflow import doc_blocks
from snakemake_runner import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Paths a page names on purpose that no checkout has: outputs a run makes, placeholders, the worked example's
# files (docs/adding-a-method.md), the user's own files.
MADE_BY_A_RUN = ("results/", "data/downloads/", "data/weights/", "data/manifests/locks/", "logs/", "report-", "recon/")
EXAMPLE_FILES = {"src/diffinv/methods/heun.py", "tests/test_heun.py", "photo.png"}
REPO_PATH = re.compile(r"^(?:src|docs|config|tests|rules|notebooks|benchmarks|data|profiles|figures|tables|report)/"
                       r"[\w./-]*$")
DOCSTRING_PATH = re.compile(r"(?<![\w/.])((?:docs|config|tests|benchmarks|profiles|notebooks|rules|data/manifests)/"
                            r"[\w/.-]+\.(?:md|py|yaml|csv|ipynb|smk|json))")
SECTION = re.compile(r"(docs/[\w-]+\.md), \"([^\"]+)\"")


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def prose(text: str) -> str:
    """A page without its code blocks and generated blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return doc_blocks.BLOCK.sub("", text)


def named_paths(text: str) -> set[str]:
    """Repository paths a page names: its relative links and its code spans that are paths."""
    links = {target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)
             if not target.startswith(("http", "#", "mailto:"))}
    spans = {span for span in re.findall(r"`([^`\s]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
             if REPO_PATH.match(span)}
    return {p for p in links | spans if p and not any(c in p for c in "<*{")}


def missing_paths(page: Path) -> list[str]:
    missing = []
    for name in sorted(named_paths(page.read_text(encoding="utf-8"))):
        target = (page.parent / name) if page.parent != ROOT and not REPO_PATH.match(name) else ROOT / name
        if name.startswith(MADE_BY_A_RUN) or name in EXAMPLE_FILES:
            continue
        if not target.exists() and not (page.parent / name).exists():
            missing.append(name)
    return missing


def headings(page: Path) -> set[str]:
    """A page's headings, as text and as GitHub anchors."""
    titles = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return set(titles) | {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_a_page_names_exists(page):
    assert missing_paths(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_anchor_a_page_links_to_exists(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([\w-]+)\)", text):
        linked = page if not target else (page.parent / target)
        if linked.suffix == ".md" and anchor not in headings(linked):
            broken.append(f"{target}#{anchor}")
    assert broken == []


def test_every_path_the_code_and_configs_name_exists():
    """Docstrings, comments and configs point into docs/, config/ and tests/: each such path exists, and a
    section named beside it (``docs/models.md, "Pinned revisions"``) is one of that page's headings."""
    sources = [*ROOT.glob("src/diffinv/**/*.py"), *ROOT.glob("config/*.yaml"), *ROOT.glob("rules/**/*.smk"),
               *ROOT.glob("rules/scripts/*.py"), ROOT / "Snakefile", ROOT / "Makefile"]
    missing, sections = [], []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        missing += [f"{source.relative_to(ROOT)}: {p}" for p in DOCSTRING_PATH.findall(text)
                    if not (ROOT / p).exists() and p not in EXAMPLE_FILES and not p.startswith(MADE_BY_A_RUN)
                    and not p.endswith(".lock.csv")]
        sections += [f"{source.relative_to(ROOT)}: {page}, {title!r}" for page, title in SECTION.findall(text)
                     if (ROOT / page).exists() and title not in headings(ROOT / page)]
    assert missing == [] and sections == []


def test_the_checks_fail_on_a_broken_path_or_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [the code](src/diffinv/nowhere.py), `config/nowhere.yaml` and [ok](docs/methods.md).\n")
    assert missing_paths(page) == ["config/nowhere.yaml", "src/diffinv/nowhere.py"]
    assert "pinned-revisions" in headings(ROOT / "docs" / "models.md")
    assert "no-such-section" not in headings(ROOT / "docs" / "models.md")


def test_every_generated_block_is_what_the_committed_tables_give():
    stale = [page.name for page in PAGES if doc_blocks.render(page.read_text(encoding="utf-8"), ROOT) !=
             page.read_text(encoding="utf-8")]
    assert stale == [], "run python -m diffinv.workflow.doc_blocks"
    assert doc_blocks.main(["--check", "--root", str(ROOT)]) == 0


def test_a_number_typed_by_hand_into_a_block_is_caught(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(doc_blocks.BLOCK.finditer(readme))
    edited = readme[:block.start("body")] + "| ddim | 50 | 99.99 |\n" + readme[block.start("body"):]
    assert doc_blocks.render(edited, ROOT) != edited


def _paired(root, preset, verdicts):
    folder = root / "tables" / preset
    folder.mkdir(parents=True)
    lines = ["# caption; diffinv 0.1.0, git 0123456789", "dataset,run,reference,images,difference,difference_ci95,"
             "verdict,nfe_total,psnr,psnr_ci95,reference_nfe_total,reference_psnr"]
    lines += [f"photos,{run},ife,4,{d},0.5,{v},50,30.0,1.0,50,30.0" for run, (d, v) in verdicts.items()]
    (folder / "paired_psnr_vs_ife.csv").write_text("\n".join(lines) + "\n")


def test_compare_names_the_runs_whose_verdicts_differ_and_rows_the_cells(tmp_path):
    _paired(tmp_path, "a", {"ddim": (-2.0, "lower"), "fpi": (1.0, "higher"), "edict": (0.1, "not resolved")})
    _paired(tmp_path, "b", {"ddim": (-3.0, "lower"), "fpi": (-1.0, "lower"), "edict": (0.2, "not resolved")})
    block = doc_blocks.compare(tmp_path, "a", "b")
    assert "The verdicts differ for 1 of 3 runs: fpi (higher on a, lower on b)." in block
    assert block.count("**differ**") == 1 and "git 0123456789" in block
    table = doc_blocks.rows(tmp_path, "a", "paired_psnr_vs_ife", "fpi,ddim", "psnr,verdict")
    assert "| fpi | 30.00 ± 1.00 | higher |" in table and table.index("| fpi") < table.index("| ddim")
    with pytest.raises(KeyError, match="no run or column \\['nosuch'\\]"):
        doc_blocks.rows(tmp_path, "a", "paired_psnr_vs_ife", "nosuch", "psnr")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_result_is_typed_by_hand_outside_the_generated_blocks(page):
    """A PSNR, a difference with its CI or a dB figure in prose is a number someone copied: they live in blocks."""
    text = prose(page.read_text(encoding="utf-8"))
    typed = re.findall(r"[-+]?\d+\.\d+ ?(?:dB|± ?\d)", text)
    assert typed == []


@pytest.fixture(scope="module")
def small_demo_model(tmp_path_factory):
    """Where diffinv.demo.demo_model() looks, a small fit (the full one takes about 40 s; tests/test_demo.py
    checks it is the demo preset's), so that the README's snippet and commands run as written in seconds."""
    from diffinv.demo import demo_model_path, fit_demo_model
    from diffinv.workflow.data import DEMO_FIT

    cache = tmp_path_factory.mktemp("xdg")
    path = demo_model_path(cache / "diffinv")
    path.parent.mkdir(parents=True)
    fit_demo_model(DEMO_FIT[:2], size=32, n_components=2, max_patches=500).save(path)
    return {**os.environ, "XDG_CACHE_HOME": str(cache)}


def test_the_readme_library_example_runs_as_written(small_demo_model, tmp_path):
    (snippet,) = [b for b in code_blocks((ROOT / "README.md").read_text(), "python") if "demo_model()" in b]
    out = subprocess.run([sys.executable, "-c", snippet], env=small_demo_model, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    nfe, psnr, unit = out.stdout.split()
    assert nfe == "50" and unit == "dB" and 10 < float(psnr) < 100


def readme_commands(program: str) -> list[str]:
    """Every command line of the README that calls ``program``, in code blocks and code spans."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line.split("#")[0].strip() for block in code_blocks(text, "bash") for line in block.splitlines()]
    lines += re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return sorted({line for line in lines if line.startswith(program)})


def test_the_readme_snakemake_commands_plan_every_job(tmp_path):
    """Each as written, as a dry run in a fresh working directory (a real run is the preflight's and the
    workflow tests' business): the single-figure command among them."""
    commands = readme_commands(".venv/bin/snakemake")
    assert any("figure2_error_statistics.png" in c for c in commands) and len(commands) >= 4
    shutil.copytree(ROOT / "data" / "manifests", tmp_path / "data" / "manifests")
    for command in commands:
        args = command.split()[1:]
        args = [str(ROOT / a) if a.startswith("config/") else a for a in args]
        out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                              str(tmp_path), *args, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0 and "Job stats" in out.stdout, (command, out.stderr[-3000:])


def test_the_readme_cli_commands_run(small_demo_model, tmp_path):
    from diffinv.workflow.data import photo_path

    shutil.copyfile(photo_path("cat"), tmp_path / "photo.png")
    for command in readme_commands(".venv/bin/diffinv"):
        args = command.split()[1:]
        args += ["--quiet"] if args[0] == "invert" else []  # no progress bars in the test's output
        out = subprocess.run([sys.executable, "-m", "diffinv.cli", *args], env=small_demo_model, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (command, out.stderr[-2000:])
    assert (tmp_path / "recon" / "photo.fpi_K5_N50.png").is_file()


def test_make_report_before_a_run_names_the_command_that_makes_the_results(tmp_path):
    for name in ("Makefile", "Snakefile"):
        shutil.copy(ROOT / name, tmp_path)
    for name in ("rules", "config", "notebooks", "report", "profiles", "src"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "manifests", tmp_path / "data" / "manifests")
    out = subprocess.run(["make", "report", "CONFIG=config/demo.yaml", f"VENV={Path(sys.executable).parents[1]}",
                          "STAMP="], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "config/demo.yaml has jobs still to run" in out.stdout and "--configfile config/demo.yaml" in out.stdout
    assert not list(tmp_path.glob("report-*.zip"))

"""Numbers in the README and docs/ come from the committed tables, never from a hand.

A page marks a generated block as ``<!-- generated: NAME ARG ... -->`` ... ``<!-- /generated -->``; the text
between the two comments is :data:`GENERATORS` ``[NAME](root, *ARGS)``. ``python -m diffinv.workflow.doc_blocks``
rewrites every block of the README and ``docs/*.md`` from the repository's committed files;
``--check`` only says which blocks differ (the test suite runs it, so a stale or hand-edited number fails).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+)(?P<args>(?: [^ >]+)*) -->\n)(?P<body>.*?)(<!-- /generated -->)",
                   re.S)
PAGES = ("README.md", "docs/*.md")


def _table(path: Path) -> pd.DataFrame:
    from .tables import read_table

    return read_table(path)


def _origin(path: Path, root: Path) -> str:
    """Where a block's numbers come from: the file and the provenance its caption ends with."""
    caption = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
    made = re.search(r"diffinv [\w.]+, git [0-9a-f]+( \+ uncommitted changes)?", caption)
    return f"From [`{path.relative_to(root).as_posix()}`]({path.relative_to(root).as_posix()})" + (
        f" ({made.group(0)})." if made else ".")


def _difference(row: pd.Series) -> str:
    if math.isinf(row["difference"]):
        return "exact"
    if row["verdict"].startswith("higher") and row["difference"] > 100:  # float64 round-off: exact, not "+250 dB"
        return "exact (round-off)"
    return f"{row['difference']:+.2f} ± {row['difference_ci95']:.2f}"


def paired(root: Path, preset: str, *runs: str) -> str:
    """Each run (all, or ``runs``) against IFE at the nearest NFE: PSNR, the paired difference and verdict."""
    path = root / "tables" / preset / "paired_psnr_vs_ife.csv"
    frame = _table(path).set_index("run")
    chosen = list(runs) or list(frame.index)
    missing = [r for r in chosen if r not in frame.index]
    if missing:
        raise KeyError(f"{path}: no run {missing}")
    lines = ["| run | NFE (inv+rec) | PSNR (dB) | IFE run (NFE) | IFE PSNR | difference (dB, 95% CI) | the CI says |",
             "|---|---|---|---|---|---|---|"]
    for name in chosen:
        row = frame.loc[name]
        lines.append(f"| {name} | {row['nfe_total']:g} | {row['psnr']:.2f} | {row['reference']} "
                     f"({row['reference_nfe_total']:g}) | {row['reference_psnr']:.2f} | {_difference(row)} | {row['verdict']} |")
    return "\n".join(lines + ["", _origin(path, root)]) + "\n"


def compare(root: Path, first: str, second: str, *runs: str) -> str:
    """The paired differences to IFE of the runs two presets share, side by side, and where their verdicts
    differ: the comparison of an exact model with a learned one."""
    frames = {p: _table(root / "tables" / p / "paired_psnr_vs_ife.csv").set_index("run") for p in (first, second)}
    shared = [r for r in frames[first].index if r in frames[second].index]
    chosen = list(runs) or shared
    lines = [f"| run | {first}: difference (dB) | {first}: says | {second}: difference (dB) | {second}: says | "
             "orderings |", "|---|---|---|---|---|---|"]
    def says(row: pd.Series) -> str:  # "higher (exact)" is "higher"; "not resolved" stays whole
        return "not resolved" if row["verdict"].startswith("not") else row["verdict"].split()[0]

    differ = []
    for name in chosen:
        a, b = frames[first].loc[name], frames[second].loc[name]
        same = says(a) == says(b)
        differ += [] if same else [f"{name} ({says(a)} on {first}, {says(b)} on {second})"]
        lines.append(f"| {name} | {_difference(a)} | {a['verdict']} | {_difference(b)} | {b['verdict']} | "
                     f"{'agree' if same else '**differ**'} |")
    summary = (f"The verdicts differ for {len(differ)} of {len(chosen)} runs: {'; '.join(differ)}." if differ else
               f"The verdicts agree for all {len(chosen)} runs.")
    sources = " ".join(_origin(root / "tables" / p / "paired_psnr_vs_ife.csv", root) for p in (first, second))
    return "\n".join(lines + ["", summary, "", sources]) + "\n"


def rows(root: Path, preset: str, table: str, runs: str, columns: str) -> str:
    """Some rows and columns of one committed table (``runs`` and ``columns`` comma-separated; ``runs`` may be
    ``all``), each column with its 95% CI where the table has one. A table without a ``run`` column is keyed
    by its first column after ``dataset``."""
    path = root / "tables" / preset / f"{table}.csv"
    frame = _table(path)
    key = "run" if "run" in frame else next(c for c in frame.columns if c != "dataset")  # a table without runs
    frame = frame.set_index(key)
    chosen = list(frame.index) if runs == "all" else runs.split(",")
    wanted = columns.split(",")
    missing = [r for r in chosen if r not in frame.index] + [c for c in wanted if c not in frame.columns]
    if missing:
        raise KeyError(f"{path}: no run or column {missing}")

    def cell(row: pd.Series, column: str) -> str:
        value = row[column]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return str(value)
        if f"{column}_ci95" in frame.columns:
            return f"{value:.4g} ± {row[f'{column}_ci95']:.2g}" if abs(value) < 10 else \
                f"{value:.2f} ± {row[f'{column}_ci95']:.2f}"  # dB: two decimals
        return f"{value:g}"

    from .tables import LABELS

    lines = [f"| {LABELS.get(key, key)} | " + " | ".join(LABELS.get(c, c) for c in wanted) + " |",
             "|---" * (len(wanted) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(frame.loc[name], c) for c in wanted) + " |" for name in chosen]
    return "\n".join(lines + ["", _origin(path, root)]) + "\n"


def throughput(root: Path) -> str:
    """Every measurement in ``benchmarks/results/sd_throughput.json``."""
    path = root / "benchmarks" / "results" / "sd_throughput.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    lines = ["| device | dtype | batch | UNet s per call | s per image-pass | TFLOP/s | VAE encode s | VAE decode s |",
             "|---|---|---|---|---|---|---|---|"]
    for device, dtypes in data["devices"].items():
        for dtype, batches in dtypes.items():
            for batch, m in batches.items():
                lines.append(f"| {device} | {dtype} | {batch} | {m['unet_seconds_per_call']:.2f} | "
                             f"{m['unet_seconds_per_pass']:.2f} | {m['unet_tflops']:.2f} | "
                             f"{m['vae_encode_seconds']:.1f} | {m['vae_decode_seconds']:.1f} |")
    return "\n".join(lines + ["", f"From `{path.relative_to(root).as_posix()}` ({data['model']})."]) + "\n"


GENERATORS: dict[str, Callable[..., str]] = {"paired": paired, "compare": compare, "rows": rows,
                                             "throughput": throughput}


def render(text: str, root: Path) -> str:
    """``text`` with every generated block's body made anew."""
    def fill(match: re.Match) -> str:
        name, args = match["name"], match["args"].split()
        if name not in GENERATORS:
            raise KeyError(f"unknown generated block {name!r}; known: {sorted(GENERATORS)}")
        return match.group(1) + GENERATORS[name](root, *args) + match.group(5)

    return BLOCK.sub(fill, text)


def pages(root: Path) -> list[Path]:
    return [p for pattern in PAGES for p in sorted(root.glob(pattern))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report the pages whose blocks are stale")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[3])
    args = parser.parse_args(argv)
    stale = []
    for page in pages(args.root):
        text = page.read_text(encoding="utf-8")
        new = render(text, args.root)
        if new != text:
            stale.append(page.relative_to(args.root).as_posix())
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"stale generated blocks in {', '.join(stale)}: run python -m diffinv.workflow.doc_blocks", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

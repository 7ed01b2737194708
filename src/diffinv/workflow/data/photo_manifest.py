"""Regenerate the demo's evaluation manifest: ``python -m diffinv.workflow.data.photo_manifest [PATH]``.

PATH defaults to ``data/manifests/photos.csv`` (run from the repository root). The rows are
``diffinv.workflow.data.photos.eval_rows``: the held-out photographs whole and as non-overlapping crops, chosen
by the documented rule from the files of the installed packages (pinned by requirements.txt), so the
same installation writes the same file.
"""

from __future__ import annotations

import sys
from collections import Counter

from .photos import write_eval_manifest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "data/manifests/photos.csv"
    rows = write_eval_manifest(path)
    counts = Counter((r["url"].rsplit("/", 1)[-1], "whole" if "px_" not in r["id"] else r["id"].split("_")[-3])
                     for r in rows)
    print(f"{path}: {len(rows)} items")
    for (source, scale), n in sorted(counts.items()):
        print(f"  {source:<18} {scale:<6} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

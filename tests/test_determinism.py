"""Two processes computing the same shards give byte-identical rows and tables (CPU, one thread),
apart from the measured costs (seconds, peak memory)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from diffinv.workflow import tables

MEASURED = {"seconds_inversion", "seconds_reconstruction", "peak_mem_mb"}
RUNS = {"ife": ("ife", {}), "ddim": ("ddim", {}), "fpi": ("fpi", {"K": 2}), "renoise": ("renoise", {}),
        "edict": ("edict", {})}


def child(folder: str, out: str) -> None:
    """One fresh process: every run over three images, rows as JSON."""
    import numpy as np
    import torch
    from PIL import Image

    from diffinv.api import Run
    from diffinv.testing import shard_rows
    from test_runs import patch_model

    torch.set_num_threads(1)  # reductions split over threads may sum in another order
    rng = np.random.default_rng(3)
    items = []
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(Path(folder) / f"{k}.png")
        items.append({"index": k, "id": f"im{k}", "file": f"{k}.png", "caption": "x", "status": "ok"})
    rows = []
    for name, (method, params) in RUNS.items():
        run = Run(method, params, num_steps=8, name=name)
        rows += shard_rows(patch_model(), run, items, images_dir=folder, resolution=16, dataset="t")
    Path(out).write_text(json.dumps(rows))


def run_child(tmp_path: Path, k: int, fresh: bool) -> list[dict]:
    folder = tmp_path / f"images{k}"
    folder.mkdir()
    out = tmp_path / f"rows{k}.json"
    if fresh:
        code = (f"import sys; sys.path[:0] = {[str(Path(__file__).parent)]!r}; import test_determinism as t; "
                f"t.child({str(folder)!r}, {str(out)!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
    else:
        child(str(folder), str(out))
    return json.loads(out.read_text())


def test_two_processes_give_identical_rows_and_tables(tmp_path):
    first, second = run_child(tmp_path, 1, fresh=False), run_child(tmp_path, 2, fresh=True)
    assert len(first) == 3 * len(RUNS) and all(r["status"] == "ok" for r in first)
    strip = [[{k: v for k, v in r.items() if k not in MEASURED} for r in rows] for rows in (first, second)]
    assert json.dumps(strip[0]) == json.dumps(strip[1])  # every metric to the last bit
    runs = pd.DataFrame([{**{k: r[k] for k in ("run", "method", "params", "num_steps", "guidance",
                                                 "reconstruction_guidance")}, "alias_of": "",
                          "nfe_per_image": r["nfe_inversion"] + r["nfe_reconstruction"]}
                         for r in first[::3]])
    written = []
    for k, rows in enumerate((first, second)):
        frame = pd.DataFrame(rows)
        built = tables.build_all(frame, runs, list(RUNS), "test")
        for name in ("table1_reconstruction", "table3_ablation", "table4_iterations"):
            tables.write_table(built[name][0], tmp_path / f"tables{k}", name, built[name][1])
        paired = tables.paired_against(frame, runs, "ife")
        tables.write_table(paired, tmp_path / f"tables{k}", "paired", "paired")
        written.append({p.name: p.read_bytes() for p in sorted((tmp_path / f"tables{k}").iterdir())})
    assert len(written[0]) == 12 and written[0] == written[1]

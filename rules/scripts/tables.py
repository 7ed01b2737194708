"""Tables 1-5 of the paper from the collected per-image rows."""
from _job import start

start(snakemake)

from pathlib import Path

import pandas as pd

from diffinv import tables

p = snakemake.params
folder = Path(snakemake.output[0]).parent
rows = pd.read_csv(snakemake.input.rows)
runs = pd.read_csv(snakemake.input.runs, keep_default_na=False)
built = {
    "table1_reconstruction": (tables.reconstruction(rows, runs, p.base_runs), "Reconstruction quality"),
    "table2_efficiency": (tables.efficiency(rows, runs, p.base_runs), "Efficiency per image"),
    "table3_ablation": (tables.ablation(rows, runs), "IFE ablation: error approximation, e_0 and N"),
    "table4_iterations": (tables.iteration_sensitivity(rows, runs), "Iteration sensitivity of fixed-point methods"),
    "table5_exact": (tables.exact_family(rows, runs), "Exact-inversion methods"),
}
for name, (frame, caption) in built.items():
    tables.write_table(frame, folder, name, f"{caption}; {p.label}; mean ± 95% CI over images")

"""The error statistics of every (dataset, run) in one table."""
from _job import start

start(snakemake, uses_torch=False)  # pandas only: importing torch to set its threads cost 2 s

import pandas as pd

frames = [pd.read_csv(path) for path in snakemake.input]
pd.concat(frames, ignore_index=True).to_csv(snakemake.output[0], index=False, lineterminator="\n")

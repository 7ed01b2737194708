"""All shard rows in one table, per-(dataset, run) means with 95% confidence intervals, run settings."""
from _job import start

start(snakemake)

import logging

import pandas as pd

from diffinv.results import run_table, summarize

rows = pd.concat([pd.read_csv(path, keep_default_na=False, na_values=["nan"]) for path in snakemake.input],
                 ignore_index=True)
rows.to_csv(snakemake.output.rows, index=False, lineterminator="\n")
summarize(rows).to_csv(snakemake.output.summary, index=False, lineterminator="\n")
run_table(snakemake.params.runs, snakemake.params.aliases, snakemake.config["model"]).to_csv(
    snakemake.output.runs, index=False, lineterminator="\n")
logging.info("%d rows, %d errors", len(rows), int((rows["status"] != "ok").sum()))

"""All shard rows in one table, per-(dataset, run) means with 95% confidence intervals, run settings.

Each shard is checked against its slice of the manifest (``diffinv.workflow.results.read_shard``) before anything
is averaged, so a shard cut short or made from another manifest stops here, named, instead of changing a mean.
"""
from _job import start

start(snakemake)

import logging
from pathlib import Path

import pandas as pd

from diffinv.workflow.config import shard_ranges
from diffinv.workflow.data.captions import read_manifest
from diffinv.workflow.results import read_shard, run_table, summarize

ids = {Path(path).stem: [row["id"] for row in read_manifest(path, strict=False)] for path in snakemake.input.manifests}
shards = []
for path in snakemake.input.shards:
    dataset, run, shard = Path(path).parts[-3:]
    first, stop = shard_ranges(len(ids[dataset]), snakemake.params.shard_size)[int(Path(shard).stem)]
    shards.append(read_shard(path, ids[dataset][first:stop], run, dataset))
rows = pd.concat(shards, ignore_index=True)
rows.to_csv(snakemake.output.rows, index=False, lineterminator="\n")
summarize(rows).to_csv(snakemake.output.summary, index=False, lineterminator="\n")
run_table(snakemake.params.runs, snakemake.params.aliases, snakemake.config["model"]).to_csv(
    snakemake.output.runs, index=False, lineterminator="\n")
logging.info("%d rows, %d errors", len(rows), int((rows["status"] != "ok").sum()))

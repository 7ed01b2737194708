"""Figure 2 quantities for one run on the first images of a dataset."""
from _job import check_signature, start

start(snakemake, offline=True)

import logging

import pandas as pd
from diffinv.workflow.config import ErrorStatsJob
from diffinv.workflow.data.captions import read_manifest
from diffinv.workflow.runs import error_statistics, load_model

job = ErrorStatsJob.from_config(snakemake.config, snakemake.params.run, snakemake.wildcards.dataset)
check_signature(job, snakemake)
model = load_model(job.model, snakemake.input.weights)
items = read_manifest(snakemake.input.manifest, strict=False)
frame = pd.DataFrame(error_statistics(model, job, items, images_dir=snakemake.input.images))
frame.insert(0, "dataset", job.dataset)
frame["code"] = snakemake.params.code
frame.to_csv(snakemake.output[0], index=False, lineterminator="\n")
logging.info("%d rows, %d not converged", len(frame), int((~frame["converged"]).sum()) if len(frame) else 0)

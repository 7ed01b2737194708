"""Figure 2 quantities for one run on the first images of a dataset."""
from _job import start

start(snakemake, offline=True)

import logging

import pandas as pd
from diffinv.data.captions import read_manifest
from diffinv.runs import error_statistics, load_model

config, stats = snakemake.config, snakemake.config["error_stats"]
model = load_model(config["model"], snakemake.input.weights)
items = read_manifest(snakemake.input.manifest, strict=False)[: stats["images"]]
rows = error_statistics(model, snakemake.params.run, items, images_dir=snakemake.params.images,
                        resolution=config["model"]["resolution"], prompt=config["inversion"]["prompt"],
                        tol=stats["tol"], max_iter=stats["max_iter"])
frame = pd.DataFrame(rows)
frame.insert(0, "dataset", snakemake.wildcards.dataset)
frame.to_csv(snakemake.output[0], index=False, lineterminator="\n")
logging.info("%d rows, %d not converged", len(frame), int((~frame["converged"]).sum()) if len(frame) else 0)

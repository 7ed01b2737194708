"""One (dataset, run, shard) job: load the model once, invert and reconstruct every image."""
from _job import start

start(snakemake, offline=True)

import csv
import logging
import shutil
from pathlib import Path

from diffinv.data.captions import read_manifest
from diffinv.runs import load_model, row_columns, run_shard

config, run = snakemake.config, snakemake.params.run
nets = config["metrics"]["lpips"]

model = load_model(config["model"], snakemake.input.weights)
perceptual = None
if nets:
    from diffinv.perceptual import Perceptual

    perceptual = Perceptual({net: snakemake.input[f"lpips_{net}"] for net in nets}, device=model.device)

first, stop = snakemake.params.shard
manifest = read_manifest(snakemake.input.manifest, strict=False)  # a bad row is one error row
items = [{**row, "index": i} for i, row in enumerate(manifest)][first:stop]
keep = {row["id"] for row in manifest[: config["qualitative"]]}
recon = Path(snakemake.output.recon)
recon.mkdir(parents=True, exist_ok=True)
rows = run_shard(model, run, items, images_dir=snakemake.params.images, resolution=config["model"]["resolution"],
                 dataset=snakemake.wildcards.dataset, prompt=config["inversion"]["prompt"], perceptual=perceptual,
                 lpips_nets=nets, keep=keep, recon_dir=recon, save_latents=config["save_latents"],
                 checkpoint=snakemake.params.checkpoint, batch_size=config["batch_size"])
with open(snakemake.output.rows, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=row_columns(nets), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
shutil.rmtree(snakemake.params.checkpoint)  # the rows are written: the checkpoint has served its purpose

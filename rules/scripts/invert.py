"""One (dataset, run, shard) job: load the model once, invert and reconstruct every image."""
from _job import check_signature, start

start(snakemake, offline=True)

import csv
import io
import shutil
from pathlib import Path

from diffinv.workflow.config import InvertJob
from diffinv.workflow.data.captions import read_manifest
from diffinv.workflow.download import atomic_write_text
from diffinv.workflow.provenance import weights_digest
from diffinv.workflow.runs import load_model, row_columns, run_shard

job = InvertJob.from_config(snakemake.config, snakemake.params.run, snakemake.wildcards.dataset)
check_signature(job, snakemake)

model = load_model(job.model, snakemake.input.weights)
perceptual = None
if job.lpips:
    from diffinv.evaluation.perceptual import Perceptual

    perceptual = Perceptual({net: snakemake.input[f"lpips_{net}"] for net in job.lpips}, device=model.device)

first, stop = snakemake.params.shard
manifest = read_manifest(snakemake.input.manifest, strict=False)  # a bad row is one error row
items = [{**row, "index": i} for i, row in enumerate(manifest)][first:stop]
recon = Path(snakemake.output.recon)
recon.mkdir(parents=True, exist_ok=True)
rows = run_shard(model, job, items, images_dir=snakemake.input.images, perceptual=perceptual, recon_dir=recon,
                 checkpoint=snakemake.params.checkpoint, code=snakemake.params.code,
                 weights_sha256=weights_digest(snakemake.input.weights))
text = io.StringIO()
writer = csv.DictWriter(text, fieldnames=row_columns(job.lpips), lineterminator="\n")
writer.writeheader()
writer.writerows(rows)
atomic_write_text(snakemake.output.rows, text.getvalue())  # never a half-written shard
shutil.rmtree(snakemake.params.checkpoint)  # the rows are written: the checkpoint has served its purpose

"""Snapshot the Stable Diffusion repository at its pinned revision and list every file's sha256."""
from _job import start

start(snakemake)

import logging

from diffinv.workflow.data.hub import SD_ALLOW, SD_IGNORE, snapshot, write_weights_manifest

p = snakemake.params
folder = snapshot(p.repo_id, p.revision, p.cache, allow_patterns=SD_ALLOW, ignore_patterns=SD_IGNORE,
                  endpoint=snakemake.config["sources"]["hf_endpoint"])
write_weights_manifest(folder, snakemake.output[0])
logging.info("%s@%s -> %s", p.repo_id, p.revision, folder)

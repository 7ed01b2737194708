"""Fit the demo's patch Gaussian mixture to photographs shipped inside installed packages."""
from _job import start

start(snakemake)

import logging

from diffinv.demo import fit_demo_model

fit = snakemake.params.fit
model = fit_demo_model(fit["photos"], size=fit["size"], patch_size=fit["patch_size"], n_components=fit["components"],
                       stride=fit["stride"], seed=fit["seed"], **snakemake.params.path)
model.save(snakemake.output[0])
logging.info("fitted %d components on %s", fit["components"], fit["photos"])

"""How good the trained network is: its loss curve, and its noise-prediction MSE on the evaluation images
(at the model's size) against the exact mixture's posterior mean and trivial predictors."""
from _job import start

start(snakemake, offline=True)

import logging
from pathlib import Path

import pandas as pd
import torch
from diffinv.workflow.config import ModelSpec
from diffinv.workflow.data.captions import read_manifest
from diffinv.workflow.figures import save, training_loss
from diffinv.evaluation.images import load_image, to_tensor
from diffinv.models import GaussianMixtureDenoiser
from diffinv.workflow.notebooks import provenance_line
from diffinv.workflow.runs import load_model
from diffinv.workflow.tables import write_table
from diffinv.workflow.model_quality import error_table, noise_prediction_errors

p = snakemake.params
label = f"{p.label}; {provenance_line(Path(snakemake.scriptdir).parents[1])}"
spec = ModelSpec.from_config(snakemake.config["model"])
network = load_model(spec, snakemake.input.model)
mixture = GaussianMixtureDenoiser.load(snakemake.input.reference)
rows = []
for dataset, manifest, folder in zip(p.datasets, snakemake.input.manifests, snakemake.input.images):
    items = [row for row in read_manifest(manifest) if row.get("status", "ok") == "ok"]
    images = to_tensor([load_image(Path(folder) / row["file"], size=spec.resolution) for row in items],
                       dtype=torch.float64)
    for row in noise_prediction_errors({"network": network, "mixture": mixture}, images, p.timesteps,
                                       prior_mean=mixture.prior_mean(tuple(images.shape)), draws=p.draws,
                                       seed=p.seed, reference="mixture"):
        rows.append({"dataset": dataset, **row})
    logging.info("%s: %d images", dataset, len(items))
frame = error_table(rows)
table = Path(snakemake.output.table[0])
write_table(frame, table.parent, table.stem,
            f"Noise-prediction MSE of the trained network on the evaluation images at {spec.resolution} px (mean "
            f"± 95% CI over images, {p.draws} noise draws each), against the exact posterior mean of the demo's "
            "Gaussian mixture (config/demo.yaml's fit; Bayes-optimal for that prior, not for photographs), eps = 0 "
            "and the prior-mean data prediction; network_minus_mixture is the paired per-image difference, and "
            f"network_vs_mixture what its CI supports (lower: the network's error is below the mixture's); {label}")
save(training_loss(pd.read_csv(snakemake.input.losses), label=label), Path(snakemake.output.figure[0]).with_suffix(""))

"""Train the pixel-space UNet2DModel on the fit photographs; save it as a diffusers folder with its losses."""
from _job import start

start(snakemake)

import csv
import logging
import time

from diffinv.workflow.training import LOSS_COLUMNS, save_trained, train_unet

settings = dict(snakemake.params.train)
started, cpu = time.perf_counter(), time.process_time()
unet, losses = train_unet(**settings, log=lambda step, loss: logging.info("step %d: loss %.5f", step, loss))
logging.info("%d steps in %.0f s (%.0f s CPU)", len(losses), time.perf_counter() - started, time.process_time() - cpu)
save_trained(snakemake.output.model, unet, settings)
with open(snakemake.output.losses, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=LOSS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(losses)

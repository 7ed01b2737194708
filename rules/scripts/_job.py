"""Shared start of every job script (Snakemake puts this folder on the scripts' sys.path)."""
import logging
import sys
from pathlib import Path


def start(snakemake, offline: bool = False) -> None:
    """Log to the rule's log file; make src/ importable in conda envs that lack the package."""
    if offline:
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from the fetch_weights snapshot only
    sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        force=True)
    if snakemake.threads:
        import torch

        torch.set_num_threads(snakemake.threads)

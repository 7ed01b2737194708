"""Shared start of every job script (Snakemake puts this folder on the scripts' sys.path)."""
import logging
import os
import sys
from pathlib import Path


def start(snakemake, offline: bool = False, uses_torch: bool = True) -> None:
    """Log to the rule's log file; make src/ importable in conda envs that lack the package."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from the fetch_weights snapshot only
    src = str(Path(snakemake.scriptdir).parents[1] / "src")
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))  # for kernels
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        force=True)
    if uses_torch:
        from diffinv.workflow.allocator import keep_freed_memory

        if not keep_freed_memory():
            logging.info("malloc left as it is (not glibc, or mallopt refused): large tensors are mapped afresh")
        if snakemake.threads:
            import torch

            torch.set_num_threads(snakemake.threads)


def check_signature(job, snakemake) -> None:
    """The job the script built from the config must be the one the rule's parameter describes."""
    if job.signature != snakemake.params.signature:
        raise RuntimeError(f"job settings differ from the rule's signature:\n{job.signature}\n"
                           f"{snakemake.params.signature}")

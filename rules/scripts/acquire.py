"""A dataset's manifest and images: sampled captions + per-image downloads, or packaged photos."""
from _job import start

start(snakemake)

import logging
from pathlib import Path

from diffinv.workflow.data.captions import fetch_images, read_manifest, select_images, write_manifest
from diffinv.workflow.data.photos import PHOTO_COLUMNS, export_photos
from diffinv.workflow.download import Lockfile

spec, images = snakemake.params.spec, Path(snakemake.output.images)
images.mkdir(parents=True, exist_ok=True)
extra = ()
if spec["source"] == "photos":  # each row a packaged file and a crop box in its pixels
    rows, extra = export_photos(read_manifest(snakemake.input[0]), images), PHOTO_COLUMNS
else:
    selected = select_images(Path(snakemake.input[0]), spec["count"], spec["seed"])
    rows = fetch_images(selected, images, Lockfile(snakemake.params.lock), cache=snakemake.params.cache)
write_manifest(rows, snakemake.output.manifest, extra=extra)
failed = [r for r in rows if r["status"] != "ok"]
logging.info("%d images, %d not acquired: %s", len(rows), len(failed), [(r["id"], r["status"]) for r in failed])

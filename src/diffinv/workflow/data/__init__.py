"""Data sources: photographs shipped inside installed packages (offline) and captioned evaluation
images (MS-COCO 2017 val, NOCAPS val) fetched per image with checksums."""

from .captions import MANIFEST_COLUMNS, fetch_images, read_manifest, select_images, write_manifest
from .photos import DEMO_EVAL, DEMO_FIT, PHOTOS, load_photo, photo_path

__all__ = ["PHOTOS", "DEMO_FIT", "DEMO_EVAL", "photo_path", "load_photo",
           "MANIFEST_COLUMNS", "select_images", "write_manifest", "read_manifest", "fetch_images"]

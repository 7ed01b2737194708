"""Data sources: photographs shipped inside installed packages (offline)."""

from .photos import DEMO_EVAL, DEMO_FIT, PHOTOS, load_photo, photo_path

__all__ = ["PHOTOS", "DEMO_FIT", "DEMO_EVAL", "photo_path", "load_photo"]

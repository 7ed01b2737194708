"""Real photographs that ship inside scikit-image, scikit-learn and matplotlib wheels.

They need no download, so the demo preset runs offline on real images.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ..images import load_image

# name -> (package, path inside it)
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble": ("skimage", "data/hubble_deep_field.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "ihc": ("skimage", "data/ihc.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "cat": ("skimage", "data/chelsea.png"),
    "colorwheel": ("skimage", "data/color.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
DEMO_FIT = ("astronaut", "coffee", "rocket", "hubble", "motorcycle", "ihc", "china", "flower")
DEMO_EVAL = ("cat", "colorwheel", "retina", "grace_hopper")


def photo_path(name: str) -> Path:
    try:
        package, relative = PHOTOS[name]
    except KeyError:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}") from None
    return package_file(f"pkg://{package}/{relative}")


def load_photo(name: str, size: int) -> np.ndarray:
    """The photo centre-cropped and resized to ``size`` x ``size``, uint8 (H, W, 3)."""
    return load_image(photo_path(name), size=size)


def package_file(url: str) -> Path:
    """The file a ``pkg://<package>/<path>`` URL names inside an installed package."""
    if not url.startswith("pkg://"):
        raise ValueError(f"{url}: not a pkg://<package>/<path> URL")
    package, _, relative = url[len("pkg://"):].partition("/")
    path = Path(str(resources.files(package).joinpath(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{url}: no such file in the installed {package}")
    return path


def export_photos(rows: list[dict], folder: str | Path) -> list[dict]:
    """Copy each manifest row's packaged photo to ``folder/<file>``, checked against its sha256.

    The committed manifest pins the bytes of the installed package versions (requirements.txt);
    a different file is an error naming it and both sums, never a silent substitute.
    """
    import shutil

    from ..download import ChecksumError, file_digest

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        source = package_file(row["url"])
        actual = file_digest(source)
        if actual != row["sha256"]:
            raise ChecksumError(f"{source} (manifest id {row['id']}): sha256 expected {row['sha256']}, got {actual}")
        shutil.copyfile(source, folder / row["file"])
    return rows

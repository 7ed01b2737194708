"""Real photographs that ship inside scikit-image, scikit-learn and matplotlib wheels.

They need no download, so the demo preset runs offline on real images. The demo's model is fitted to
``DEMO_FIT``; its evaluation set, the committed manifest ``data/manifests/photos.csv``, is made from
the four held-out images ``DEMO_EVAL`` by :func:`eval_rows` (rule in its docstring; regenerate with
``python -m diffinv.workflow.data.photo_manifest``): each whole, plus square crops at finer scales, every
item a packaged file (``url``, ``sha256``) and a crop box in its pixels (``crop``).
"""

from __future__ import annotations

import zlib
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ...evaluation.images import load_image

# name -> (package, path inside it). No other colour photograph ships in the installed packages
# (the rest are grey, icons, logos, plots or test patterns; skimage's motorcycle_right.png is the
# stereo twin of a fit photograph, so it is no held-out image).
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
# The held-out images the evaluation manifest is cut from, in manifest order.
DEMO_EVAL = ("cat", "colorwheel", "grace_hopper", "retina")

# What each held-out image shows: the whole image's caption, and the subject a crop's caption names.
EVAL_CAPTIONS: dict[str, tuple[str, str]] = {
    "cat": ("a tabby cat looking to the side", "a photograph of a tabby cat"),
    "colorwheel": ("a colour wheel of saturated hues", "a rendered colour wheel"),
    "grace_hopper": ("a portrait of a woman in a navy uniform", "a portrait of a woman in a navy uniform"),
    "retina": ("a photograph of a human retina", "a photograph of a human retina"),
}
# The crop rule of the evaluation manifest (see eval_rows).
CROP_SIDES = (128, 64)  # source pixels: 2x downscaled and native at the demo's 64 px
CROPS_PER_SIDE = 5      # at most, per image and side
MIN_SPREAD = 4.0        # grey levels: the interquartile range of a crop's luma below this is flat
CROP_SEED = 0


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


def photo_url(name: str) -> str:
    """The ``pkg://<package>/<path>`` URL of a named photo (the manifest's ``url``)."""
    package, relative = PHOTOS[name]
    return f"pkg://{package}/{relative}"


# ---------------------------------------------------------------- crop boxes


def parse_box(text: str) -> tuple[int, int, int, int]:
    """A manifest ``crop``: ``"x0 y0 x1 y1"``, pixels of the source as loaded (RGB, EXIF orientation
    applied), x to the right and y down, ``x1``/``y1`` exclusive (PIL's box)."""
    parts = text.split()
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"crop {text!r}: expected four non-negative integers 'x0 y0 x1 y1'")
    x0, y0, x1, y1 = map(int, parts)
    return x0, y0, x1, y1


def format_box(box: Sequence[int]) -> str:
    return " ".join(str(int(v)) for v in box)


def check_box(box: Sequence[int], width: int, height: int) -> None:
    """A crop box must be a non-empty square inside the ``width`` x ``height`` image: the loader takes
    the centre square of what it reads, so a square crop reaches the model whole."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"crop {format_box(box)} is not inside the {width}x{height} image")
    if x1 - x0 != y1 - y0:
        raise ValueError(f"crop {format_box(box)} is not square ({x1 - x0}x{y1 - y0})")


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centre square the loader (``diffinv.evaluation.images.center_crop``) takes of a whole image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The pixels of ``image`` (H, W, 3) inside ``box``, checked to be a square inside the image."""
    check_box(box, image.shape[1], image.shape[0])
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


def spread(pixels: np.ndarray) -> float:
    """Interquartile range of the luma (ITU-R 601 weights, those of PIL's ``L`` mode) of uint8 RGB
    pixels, in grey levels: below :data:`MIN_SPREAD`, the middle half of the crop's pixels is one flat
    tone (a black border, a crop mostly of it)."""
    luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    q1, q3 = np.percentile(luma, [25, 75])
    return float(q3 - q1)


def grid_cells(width: int, height: int, side: int) -> list[tuple[int, int, int, int]]:
    """Disjoint ``side``-px squares tiling as much of the image as fits, the grid centred, raster order."""
    nx, ny = width // side, height // side
    ox, oy = (width - nx * side) // 2, (height - ny * side) // 2
    return [(ox + c * side, oy + r * side, ox + (c + 1) * side, oy + (r + 1) * side)
            for r in range(ny) for c in range(nx)]


def centred(cell: Sequence[int], side: int) -> tuple[int, int, int, int]:
    """The centred ``side``-px square of a square ``cell``."""
    x0, y0, x1, _ = cell
    off = (x1 - x0 - side) // 2
    return x0 + off, y0 + off, x0 + off + side, y0 + off + side


def _where(box: Sequence[int], width: int, height: int) -> str:
    """Where a box's centre lies in the image, in thirds: "top left", "centre", "bottom", ..."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = "top" if cy < height / 3 else "bottom" if cy > 2 * height / 3 else ""
    col = "left" if cx < width / 3 else "right" if cx > 2 * width / 3 else ""
    return f"{row} {col}".strip() or "centre"


def eval_rows(photos: Sequence[str] = DEMO_EVAL, *, sides: Sequence[int] = CROP_SIDES,
              per_side: int = CROPS_PER_SIDE, min_spread: float = MIN_SPREAD, seed: int = CROP_SEED) -> list[dict]:
    """The demo's evaluation manifest rows, deterministically from the installed files.

    Per image (``photos``, loaded at source resolution):

    - the whole image: its centre square (the box the loader crops anyway), id = the photo's name;
    - crops: the image is tiled by a centred grid of disjoint ``max(sides)``-px cells; a crop of side
      ``s`` is the centred ``s``-px square of a cell, so no two crops of one image overlap. A cell is
      usable if each of its crops has a luma interquartile range (:func:`spread`) of at least
      ``min_spread`` grey levels (this rejects the retina's black border and crops mostly of it).
      The usable cells are shuffled by ``numpy.random.default_rng([seed, crc32(name)])``; with ``n =
      min(per_side, usable // len(sides))``, the first ``n`` give the crops of ``sides[0]``, the next
      ``n`` those of ``sides[1]``, and so on; id ``<name>_<s>px_<x0>_<y0>``.

    Rows: every whole image first (in ``photos`` order), then each image's crops by side and position.
    ``file`` is ``<id>.png``: :func:`export_photos` writes the crop losslessly, and the workflow's
    loader resizes it to the model's resolution as it resizes any image. ``sha256`` is the source file's.
    """
    from ...digest import file_digest

    whole, crops = [], []
    for name in photos:
        path = photo_path(name)
        image = load_image(path)
        height, width = image.shape[:2]
        base = {"url": photo_url(name), "sha256": file_digest(path), "status": "ok"}
        caption, subject = EVAL_CAPTIONS[name]
        whole.append({"id": name, "file": f"{name}.png", **base, "caption": caption,
                      "crop": format_box(centre_box(width, height))})
        cells = grid_cells(width, height, max(sides))
        usable = [cell for cell in cells if all(spread(crop(image, centred(cell, s))) >= min_spread for s in sides)]
        order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(usable))
        n = min(per_side, len(usable) // len(sides))
        for k, side in enumerate(sides):
            boxes = sorted((centred(usable[i], side) for i in order[k * n:(k + 1) * n]), key=lambda b: (b[1], b[0]))
            for box in boxes:
                item = f"{name}_{side}px_{box[0]}_{box[1]}"
                crops.append({"id": item, "file": f"{item}.png", **base, "crop": format_box(box),
                              "caption": f"a {side} px crop from the {_where(box, width, height)} of {subject}"})
    return whole + crops


PHOTO_COLUMNS = ("crop",)  # beyond diffinv.workflow.data.captions.MANIFEST_COLUMNS


def write_eval_manifest(path: str | Path, photos: Sequence[str] = DEMO_EVAL) -> list[dict]:
    """Write :func:`eval_rows` as a manifest (the committed one is ``data/manifests/photos.csv``)."""
    from .captions import write_manifest

    rows = eval_rows(photos)
    fit = {photo_url(n) for n in DEMO_FIT}
    if shared := sorted({r["url"] for r in rows} & fit):
        raise ValueError(f"evaluation images from fit-set files: {shared}")
    write_manifest(rows, path, extra=PHOTO_COLUMNS)
    return rows


def export_photos(rows: list[dict], folder: str | Path) -> list[dict]:
    """Write each manifest row's image to ``folder/<file>`` from its packaged source, checked against
    its sha256, and return the rows (``crop`` set, ``""`` for a whole file).

    A row with a ``crop`` box gets those source pixels as a PNG (lossless; ``file`` must end in
    ``.png``); without one, the file is copied as it is. The committed manifest pins the bytes of the
    installed package versions (requirements.txt); a different file is an error naming it and both
    sums, never a silent substitute.
    """
    import shutil

    from PIL import Image

    from ..download import ChecksumError
    from ...digest import file_digest
    from .captions import inside

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        source = package_file(row["url"])
        actual = file_digest(source)
        if actual != row["sha256"]:
            raise ChecksumError(f"{source} (manifest id {row['id']}): sha256 expected {row['sha256']}, got {actual}")
        box = row.get("crop") or ""
        if not box:
            shutil.copyfile(source, inside(folder, row["file"]))
        elif not row["file"].lower().endswith(".png"):
            raise ValueError(f"manifest id {row['id']}: a cropped image is written as PNG, not {row['file']!r}")
        else:
            try:
                pixels = crop(load_image(source), parse_box(box))
            except ValueError as exc:
                raise ValueError(f"manifest id {row['id']} ({row['url']}): {exc}") from None
            Image.fromarray(pixels).save(inside(folder, row["file"]))
        out.append({**row, "crop": box})
    return out

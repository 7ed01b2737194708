"""Reading, cropping and writing images; tensors are (B, 3, H, W) in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor


def center_crop(image: Image.Image, size: int | None = None, multiple: int = 1) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (bicubic); without ``size``, only trim the sides
    down to a multiple of ``multiple``."""
    w, h = image.size
    if size is None:
        nw, nh = w - w % multiple, h - h % multiple
        if nw == 0 or nh == 0:
            raise ValueError(f"image of {w}x{h} px is smaller than {multiple} px")
        left, top = (w - nw) // 2, (h - nh) // 2
        return image.crop((left, top, left + nw, top + nh))
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


# Pillow's own decompression-bomb threshold; larger files are refused before they are decoded.
MAX_PIXELS = 89_478_485


def _rgb(image: Image.Image, path: str | Path) -> Image.Image:
    """8-bit RGB from the modes photographs come in: 16-bit grey is scaled (not clipped) to 8 bits,
    transparency is composited over white, CMYK and palettes are converted."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{path}: {image.mode} pixel values outside 0..65535")
        return Image.fromarray((values.astype(np.float64) / 257).round().astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise ValueError(f"{path}: floating-point images are not supported")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, size: int | None = None, multiple: int = 1, *, min_size: int | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3), EXIF orientation applied; errors name the file and the reason.

    With ``size``, the centre square is resized to ``size``: a shorter side below ``min_size`` (default
    ``size // 2``: at most a 2x upscale) is refused rather than invented. Files over ``max_pixels``
    (default ``MAX_PIXELS``) are refused from their header, before decoding.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(f"image of {w}x{h} px is larger than the limit of {max_pixels} pixels")
            image = _rgb(ImageOps.exif_transpose(im), path)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from exc
    if size is not None:
        floor = size // 2 if min_size is None else min_size
        if min(image.size) < floor:
            raise ValueError(f"{path}: image of {image.width}x{image.height} px is too small: its shorter side "
                             f"is below {floor} px, the minimum for {size} px inputs")
    try:
        return np.array(center_crop(image, size, multiple))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def to_tensor(images: np.ndarray | list[np.ndarray], dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (H, W, 3) images (one or a list of the same size) to (B, 3, H, W) in [-1, 1]."""
    batch = np.stack(images) if isinstance(images, list) else np.asarray(images)[None]
    return torch.from_numpy(batch).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] to uint8 (B, H, W, 3), rounded as a saved PNG would hold them."""
    unit = ((images.detach().double().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return unit.permute(0, 2, 3, 1).numpy().astype(np.uint8)


def to_unit(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] to float64 (B, H, W, 3) in [0, 1], not rounded to 8 bits."""
    unit = (images.detach().double().cpu().clamp(-1, 1) + 1) / 2
    return unit.permute(0, 2, 3, 1).numpy()


def save_image(image: np.ndarray, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)

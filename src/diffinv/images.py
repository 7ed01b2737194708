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


def load_image(path: str | Path, size: int | None = None, multiple: int = 1) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3), EXIF orientation applied; errors name the file."""
    try:
        with Image.open(path) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc
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


def save_image(image: np.ndarray, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)

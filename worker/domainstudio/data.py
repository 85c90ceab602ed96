"""Photos in: read, check and convert the training photos to model tensors.

A single bad file is skipped with a warning that names it (a marketing folder often holds
a stray PDF or a thumbnail); too few usable photos is an error before any work starts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, Notice

log = logging.getLogger("domainstudio.data")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MIN_PHOTOS = 2


@dataclass
class Photos:
    pixels: torch.Tensor  # [N, C, R, R] in [-1, 1]
    names: list[str]
    warnings: list[str] = field(default_factory=list)  # Notices: English text, msgid and params


def list_photo_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError("photo folder %(folder)s does not exist", folder=str(folder))
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def load_photos(
    photos: str | Path | Iterable[str | Path | Image.Image],
    resolution: int,
    channels: int,
) -> Photos:
    """Read photos (a folder, or paths / PIL images), square-crop and resize them.

    Skips, with a warning, files that are not decodable images or are smaller than
    ``resolution`` on their short side; raises :class:`InputError` when fewer than two remain.
    """
    items = list_photo_files(Path(photos)) if isinstance(photos, (str, Path)) else list(photos)
    tensors, names, warnings = [], [], []
    for index, item in enumerate(items):
        # the file's name (the folder is the one the caller gave), or the image's place in the list
        name = Path(item).name if not isinstance(item, Image.Image) else f"#{index + 1}"
        try:
            image = _open(item)
        except InputError as exc:  # _open's reason: the decoder's error
            warnings.append(Notice("skipped %(name)s: not a readable image (%(error)s)", name=name,
                                   error=exc.params["error"]))
            continue
        if min(image.size) < resolution:
            warnings.append(Notice(
                "skipped %(name)s: %(width)sx%(height)s is smaller than the model's %(size)sx%(size)s",
                name=name, width=image.size[0], height=image.size[1], size=resolution,
            ))
            continue
        tensors.append(to_tensor(square_resize(image, resolution), channels))
        names.append(name)
    for w in warnings:
        log.warning("data.photo.skipped %s", w)
    if len(tensors) < MIN_PHOTOS:
        if warnings:
            raise InputError(
                "adaptation needs at least %(needed)s usable photos, found %(found)s "
                "of %(total)s (%(detail)s)",
                needed=MIN_PHOTOS, found=len(tensors), total=len(items), detail="; ".join(warnings),
            )
        raise InputError(
            "adaptation needs at least %(needed)s usable photos, found %(found)s of %(total)s",
            needed=MIN_PHOTOS, found=len(tensors), total=len(items),
        )
    return Photos(torch.stack(tensors), names, warnings)


def _open(item: str | Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return ImageOps.exif_transpose(item)
    try:
        with Image.open(item) as image:
            image.load()  # decode fully now: a truncated file fails here, not mid-training
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError("not a readable image (%(error)s)", error=type(exc).__name__) from None


def square_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop to a square, then resize with a Lanczos filter."""
    return ImageOps.fit(image, (resolution, resolution), method=Image.LANCZOS)


def to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """PIL -> [C, H, W] float in [-1, 1]; grayscale for 1-channel models."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode in ("RGBA", "LA", "P"):  # put transparent product shots on white
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    array = np.asarray(image.convert(mode), dtype=np.float32) / 127.5 - 1.0
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """[B, C, H, W] in [-1, 1] -> PIL images (L for one channel, RGB for three)."""
    array = ((batch.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    out = []
    for item in array:
        if item.shape[0] == 1:
            out.append(Image.fromarray(item[0], mode="L"))
        else:
            out.append(Image.fromarray(item.transpose(1, 2, 0), mode="RGB"))
    return out

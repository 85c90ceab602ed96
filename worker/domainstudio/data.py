"""Photos in: read, check and convert the training photos to model tensors.

A single bad file is skipped with a warning that names it (a marketing folder often holds
a stray PDF); too few usable photos is an error before any work starts.

Photos are never cropped: each is scaled to fit the training square whole and padded with
its own border colour (a tall bottle keeps its cap and its base), and a mask marks the
photo's pixels, so the padding is left out of the losses that compare with the photo.
Transparent areas (product cut-outs) are filled with white and masked out the same way.
A photo smaller than the training square is upscaled, with a warning. Why padding and not
aspect-ratio buckets: docs/photo-shapes.md (benchmarks/photo_shapes.py).
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
CAPTION_SUFFIX = ".txt"  # photo.txt beside photo.jpg: that photo's caption (kohya's habit)
MAX_CAPTION = 500
MIN_PHOTOS = 2


@dataclass
class Photos:
    pixels: torch.Tensor  # [N, C, R, R] in [-1, 1]
    names: list[str]
    warnings: list[str] = field(default_factory=list)  # Notices: English text, msgid and params
    # [N, 1, R, R] in [0, 1]: 1 on the photo, 0 on padding and transparent areas (fractional
    # at anti-aliased edges); None when every photo fills the square and is opaque
    masks: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)  # one per photo, "" when it has none


def list_photo_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError("photo folder %(folder)s does not exist", folder=str(folder))
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    stems = {p.stem for p in files if p.suffix.lower() != CAPTION_SUFFIX}
    # photo.txt beside photo.jpg is that photo's caption; a stray notes.txt is reported as usual
    return sorted(p for p in files if not (p.suffix.lower() == CAPTION_SUFFIX and p.stem in stems))


def read_caption(photo: Path) -> str:
    """The caption in ``photo.txt`` beside ``photo.jpg``, on one line; "" when there is none."""
    path = photo.with_suffix(CAPTION_SUFFIX)
    if not path.is_file():
        return ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return clean_caption(text)


def clean_caption(text: str) -> str:
    return " ".join(str(text).split())[:MAX_CAPTION]


def load_photos(
    photos: str | Path | Iterable[str | Path | Image.Image],
    resolution: int,
    channels: int,
) -> Photos:
    """Read photos (a folder, or paths / PIL images), fit each whole into the training square.

    Skips, with a warning, files that are not decodable images; warns about photos it had to
    upscale; raises :class:`InputError` when fewer than two usable photos remain.
    """
    items = list_photo_files(Path(photos)) if isinstance(photos, (str, Path)) else list(photos)
    tensors, masks, names, captions, warnings = [], [], [], [], []
    for index, item in enumerate(items):
        # the file's name (the folder is the one the caller gave), or the image's place in the list
        name = Path(item).name if not isinstance(item, Image.Image) else f"#{index + 1}"
        try:
            image = _open(item)
        except InputError as exc:  # _open's reason: the decoder's error
            warnings.append(Notice("skipped %(name)s: not a readable image (%(error)s)", name=name,
                                   error=exc.params["error"]))
            continue
        if max(image.size) < resolution:
            warnings.append(Notice(
                "%(name)s is %(width)sx%(height)s, smaller than the model's %(size)sx%(size)s: "
                "it was upscaled and may make the results softer; use a larger photo if you have one",
                name=name, width=image.size[0], height=image.size[1], size=resolution,
            ))
        fitted, mask = fit_photo(image, resolution)
        tensors.append(to_tensor(fitted, channels))
        masks.append(mask)
        names.append(name)
        captions.append(read_caption(Path(item)) if not isinstance(item, Image.Image) else "")
    for w in warnings:
        log.warning("data.photo.warning %s", w)
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
    mask = torch.stack(masks)
    return Photos(torch.stack(tensors), names, warnings, None if bool((mask == 1).all()) else mask, captions)


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
    """Centre-crop to a square, then resize with a Lanczos filter (the copy guard's view)."""
    return ImageOps.fit(image, (resolution, resolution), method=Image.LANCZOS)


def fit_photo(image: Image.Image, resolution: int) -> tuple[Image.Image, torch.Tensor]:
    """The whole photo scaled to fit a ``resolution`` square (up or down, Lanczos), centred
    on its border colour; and its mask [1, R, R]: the photo's opacity there, 0 on padding."""
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    transparent = bool((alpha < 255).any())
    fill = (255, 255, 255) if transparent else border_colour(image.convert("RGB"))
    scale = resolution / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    # Premultiplied resize: transparent pixels' hidden colours do not bleed into the edges.
    resized = rgba.convert("RGBa").resize(size, Image.LANCZOS).convert("RGBA")
    canvas = Image.new("RGBA", (resolution, resolution), fill + (255,))
    offset = ((resolution - size[0]) // 2, (resolution - size[1]) // 2)
    opacity = Image.new("L", (resolution, resolution), 0)
    opacity.paste(resized.getchannel("A"), offset)
    canvas.alpha_composite(resized, offset)
    mask = torch.from_numpy(np.asarray(opacity, dtype=np.float32) / 255.0)[None]
    return canvas.convert("RGB"), mask


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """Median colour of the edges the padding adjoins (left and right of a tall photo, top
    and bottom of a wide one): the backdrop the padding continues."""
    array = np.asarray(image)
    if image.size[1] >= image.size[0]:
        edges = np.concatenate([array[:, 0], array[:, -1]])
    else:
        edges = np.concatenate([array[0], array[-1]])
    return tuple(int(v) for v in np.median(edges, axis=0))


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

"""Thumbnails: of an uploaded photo (the upload), of a generated image (the worker)."""
from __future__ import annotations

import io

from PIL import Image

THUMB_SIDE = 256


def make_thumbnail(img: Image.Image, side: int = THUMB_SIDE) -> bytes:
    """Scaled down first and made opaque after, so that no full-size copy is made (but for
    a mode conversion of palette, CMYK or 16-bit images); a 40 MP RGBA photo used to cost
    three more copies of 160 MB here."""
    if img.mode not in ("RGB", "L", "RGBA"):
        img = img.convert("RGBA")  # palettes, CMYK, 16-bit, LA
    width, height = img.size
    if max(width, height) > side:
        scale = side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if img.mode == "RGBA" and max(width, height) > 4 * side:
            # Pillow premultiplies alpha on a full-size copy before a filtered resize; a
            # nearest-neighbour step to 4x the thumbnail first (no copy) keeps memory at
            # the decoded image, and the filtered resize from there still smooths it
            img = img.resize((size[0] * 4, size[1] * 4), Image.Resampling.NEAREST)
        thumb = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    else:
        thumb = img.copy()
    if thumb.mode == "RGBA":
        background = Image.new("RGB", thumb.size, "white")
        background.paste(thumb, mask=thumb.getchannel("A"))
        thumb = background
    out = io.BytesIO()
    thumb.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()

"""Checks an uploaded photo by its content, whatever its name says.

A photo is accepted when it is a JPEG, PNG or WebP that fully decodes, is within the byte
and pixel limits and is at least ``min_side`` pixels on each side. The EXIF orientation is
applied, so what is stored is what the user saw.
"""
from __future__ import annotations

import hashlib
import io
import unicodedata
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import Message

FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}
THUMB_SIDE = 256


class PhotoRejected(ValueError):
    """The message says, in the user's words, why the file was refused; ``reason`` keeps
    its msgid and params apart so that the answer can be translated."""

    def __init__(self, msgid: str, **params):
        self.reason = Message(msgid, params)
        super().__init__(str(self.reason))


@dataclass
class CheckedPhoto:
    data: bytes  # what is stored: the original bytes, or re-encoded when EXIF rotated it
    sha256: str  # of the uploaded bytes, for duplicate detection
    content_type: str
    ext: str
    width: int
    height: int
    thumbnail: bytes  # JPEG, long side THUMB_SIDE


def clean_filename(name: str | None) -> str:
    """A display name without paths, control or bidi characters, at most 200 characters."""
    name = (name or "photo").replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().lstrip(".") or "photo"
    return name[:200]


def check_photo(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int) -> CheckedPhoto:
    if not data:
        raise PhotoRejected("the file is empty")
    if len(data) > max_bytes:
        raise PhotoRejected("the file is larger than %(mb)s MB", mb=max_bytes // (1024 * 1024))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            fmt = probe.format
            width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoRejected("the image has more pixels than the limit of %(limit)s", limit=format(max_pixels, ",")) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise PhotoRejected("the file is not a JPEG, PNG or WebP image") from None
    if fmt not in FORMATS:
        raise PhotoRejected("%(format)s files are not accepted; use JPEG, PNG or WebP", format=fmt or "?")
    if width * height > max_pixels:
        raise PhotoRejected("the image has %(width)sx%(height)s pixels, more than the limit of %(limit)s",
                            width=width, height=height, limit=format(max_pixels, ","))
    if min(width, height) < min_side:
        raise PhotoRejected("the image is %(width)sx%(height)s; each side must be at least %(min)s pixels",
                            width=width, height=height, min=min_side)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decodes every byte: truncated files fail here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise PhotoRejected("the image is damaged or truncated and cannot be decoded") from None

    content_type, ext = FORMATS[fmt]
    sha = hashlib.sha256(data).hexdigest()
    stored = data
    orientation = img.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
        width, height = img.size
        out = io.BytesIO()
        save_kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        img.save(out, format=fmt, **save_kwargs)
        stored = out.getvalue()
    return CheckedPhoto(stored, sha, content_type, ext, width, height, make_thumbnail(img))


def make_thumbnail(img: Image.Image, side: int = THUMB_SIDE) -> bytes:
    thumb = img.copy()
    if thumb.mode not in ("RGB", "L"):
        background = Image.new("RGB", thumb.size, "white")
        rgba = thumb.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        thumb = background
    thumb.thumbnail((side, side))
    out = io.BytesIO()
    thumb.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


# a photo whose colour channels differ by more than this on average (0-255) is in colour;
# a grayscale scan saved as RGB, or a photo with a slight colour cast, stays under it
COLOUR_SPREAD = 12.0


def is_colour(img: Image.Image) -> bool:
    """Whether a photo (or its thumbnail) shows colour: the mean spread between its
    brightest and darkest channel per pixel."""
    if img.mode in ("L", "1", "I", "F", "LA"):
        return False
    rgb = img.convert("RGB")
    rgb.thumbnail((64, 64))
    pixels = list(rgb.getdata())
    return sum(max(p) - min(p) for p in pixels) / max(len(pixels), 1) > COLOUR_SPREAD


def colour_photos(storage, photos, limit: int = 12) -> int:
    """How many of the first ``limit`` photos are in colour, from their stored thumbnails;
    photos whose thumbnail cannot be read are not counted."""
    n = 0
    for p in list(photos)[:limit]:
        try:
            with Image.open(io.BytesIO(storage.get_bytes(p.thumb_key))) as img:
                n += is_colour(img)
        except Exception:  # a missing thumbnail says nothing about colour
            continue
    return n

"""Checks an uploaded photo by its content, whatever its name says.

A photo is accepted when it is a JPEG (or MPO: its first frame), PNG or WebP that fully decodes, is within the byte
and pixel limits and is at least ``min_side`` pixels on each side. The EXIF orientation is
applied, so what is stored is what the user saw.
"""
from __future__ import annotations

import hashlib
import io
import struct
import threading
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import Message
from app.thumbnails import THUMB_SIDE, make_thumbnail

# MPO (what many phones write: a JPEG with more frames after it) is a JPEG whose first
# frame every JPEG reader shows; it is stored as it came
FORMATS = {"JPEG": ("image/jpeg", "jpg"), "MPO": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"),
           "WEBP": ("image/webp", "webp")}


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


@dataclass
class PhotoHeader:
    """What the file's header says, read without decoding its pixels."""
    format: str
    width: int
    height: int
    orientation: int  # EXIF orientation, 1 when upright

    @property
    def reduced(self) -> bool:
        """A JPEG that needs no rotation is checked and thumbnailed at 1/2-1/8 scale
        (libjpeg decodes every byte, so damage is still found, at a fraction of the cost)."""
        return self.format in ("JPEG", "MPO") and self.orientation in (1, None)

    @property
    def decode_pixels(self) -> int:
        """The pixels the full check decodes: what it costs in memory and time."""
        if not self.reduced:
            return self.width * self.height
        scale = draft_scale(self.width, self.height)
        return -(-self.width // scale) * -(-self.height // scale)


def draft_scale(width: int, height: int, side: int = THUMB_SIDE) -> int:
    """The DCT scale Pillow's JPEG draft mode picks for a thumbnail of ``side``."""
    fit = min(width // side, height // side)
    return next((s for s in (8, 4, 2) if s <= fit), 1)


def read_header(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int) -> PhotoHeader:
    """The cheap checks: size, format, pixel count and sides, from the header alone."""
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
            orientation = _orientation(probe) if fmt in FORMATS else 1
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoRejected("the image has more pixels than the limit of %(limit)s", limit=format(max_pixels, ",")) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        raise PhotoRejected("the file is not a JPEG, PNG or WebP image") from None
    if fmt not in FORMATS:
        raise PhotoRejected("%(format)s files are not accepted; use JPEG, PNG or WebP", format=fmt or "?")
    if width * height > max_pixels:
        raise PhotoRejected("the image has %(width)sx%(height)s pixels, more than the limit of %(limit)s",
                            width=width, height=height, limit=format(max_pixels, ","))
    if min(width, height) < min_side:
        raise PhotoRejected("the image is %(width)sx%(height)s; each side must be at least %(min)s pixels",
                            width=width, height=height, min=min_side)
    return PhotoHeader(fmt, width, height, orientation)


def _orientation(probe: Image.Image) -> int:
    """From the header; a PNG's EXIF may come after its pixels (read after decoding), and
    Pillow would decode the whole image to look for it now."""
    if probe.format == "PNG" and "exif" not in probe.info:
        return 1
    value = probe.getexif().get(0x0112, 1)
    return value if isinstance(value, int) else 1


def decode_photo(data: bytes, header: PhotoHeader) -> CheckedPhoto:
    """The full check: decodes the image (a JPEG at reduced scale when it needs no
    rotation), applies the EXIF orientation and makes the thumbnail."""
    try:
        img = Image.open(io.BytesIO(data))
        if header.reduced:
            img.draft("RGB" if img.mode not in ("L", "CMYK") else img.mode, (THUMB_SIDE, THUMB_SIDE))
        img.load()  # decodes every byte: truncated files fail here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, struct.error):
        raise PhotoRejected("the image is damaged or truncated and cannot be decoded") from None

    content_type, ext = FORMATS[header.format]
    sha = hashlib.sha256(data).hexdigest()
    stored, width, height = data, header.width, header.height
    if img.getexif().get(0x0112, 1) not in (1, None):
        img = ImageOps.exif_transpose(img)
        width, height = img.size
        out = io.BytesIO()
        fmt = "JPEG" if header.format == "MPO" else header.format
        save_kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        img.save(out, format=fmt, **save_kwargs)
        stored = out.getvalue()
    return CheckedPhoto(stored, sha, content_type, ext, width, height, make_thumbnail(img))


def check_photo(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int) -> CheckedPhoto:
    return decode_photo(data, read_header(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side))


def return_freed_images_to_the_os() -> None:
    """Makes glibc hand large buffers (decoded images) back to the system when they are
    freed. By default its mmap threshold grows to the largest block freed so far, after
    which Pillow's 16 MB blocks come from per-thread heaps that keep the memory: three
    upload threads that had each decoded a 160 MB image once kept ~500 MB between them,
    where only one was decoded at a time."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD: fixed at 1 MB
    except (OSError, AttributeError):  # not glibc: its allocator decides
        pass


class DecodeBudget:
    """Pixels decoded at once in this process, within a limit: a flood of large images
    waits its turn instead of growing memory without bound (a 40 MP RGBA PNG decodes to
    160 MB). An image larger than the limit alone still goes through, by itself; small
    images fit beside a large one, so one user's flood does not hold up another's photos."""

    def __init__(self, limit: int):
        self.limit, self.in_flight = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.in_flight == 0 or self.in_flight + pixels <= self.limit)
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= pixels
                self._cond.notify_all()


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

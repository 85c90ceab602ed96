"""A pack's files: each image in the chosen sizes and format, and manifest.csv, in one ZIP.
The worker writes the ZIP; the web uses the same sizes and encoders to estimate it."""
from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageOps

from app.db import aware
from app.errors import N_, BadInput
from app.models import Image, Pack
from app.storage import Storage

FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}
SIZES = {
    "original": N_("original size"),
    "1024": N_("1024 px long side"),
    "2048": N_("2048 px long side"),
    "square": N_("square 1:1"),
    "4x5": N_("portrait 4:5"),
}
MANIFEST_FIELDS = ["file", "width", "height", "review", "prompt", "seed", "run", "base_model", "created"]


def parse_sizes(size: str | list[str]) -> list[str]:
    """One or several size presets, as a list or comma-separated (packs.size stores them
    comma-separated; a pack from before holds a single one)."""
    items = size if isinstance(size, list) else str(size).split(",")
    sizes = list(dict.fromkeys(s.strip() for s in items if s and s.strip()))
    if not sizes:
        raise BadInput("choose at least one size")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise BadInput("size must be one of: %(choices)s", params={"choices": ", ".join(SIZES)})
    return sizes


def output_size(w: int, h: int, size: str) -> tuple[int, int]:
    """The pixel size an image of w x h has in a pack of this size preset."""
    if size in ("1024", "2048"):
        scale = int(size) / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))
    if size == "square":
        s = min(w, h)
        return s, s
    if size == "4x5":
        cw, ch = (w, w * 5 // 4) if w * 5 // 4 <= h else (h * 4 // 5, h)
        return max(1, cw), max(1, ch)
    return w, h


def resize(img: PILImage.Image, size: str) -> PILImage.Image:
    """Long-side sizes scale (up or down) to exactly that long side; square and 4:5 crop the
    largest centred box of that shape at the image's own resolution."""
    target = output_size(img.size[0], img.size[1], size)
    if size in ("1024", "2048"):
        return img.resize(target, PILImage.LANCZOS)
    if size in ("square", "4x5"):
        return ImageOps.fit(img, target, PILImage.LANCZOS)
    return img


def encode(img: PILImage.Image, format: str) -> bytes:
    pil_format, _ = FORMATS[format]
    if pil_format == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=pil_format, **({"quality": 92} if pil_format in ("JPEG", "WEBP") else {}))
    return out.getvalue()


# OWASP's rule for CSV injection: a cell that starts with one of these is a formula to
# Excel and LibreOffice (=HYPERLINK(...), =cmd|...), so it gets a leading single quote,
# which they show as text; the csv module quotes the cell when it needs to
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A manifest cell that a spreadsheet shows as text, never evaluates."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


@dataclass
class PackSource:
    """What the manifest says about where the images came from."""

    run_id: str
    base_model: str


class PackCanceled(Exception):
    """The pack was canceled while it was being built."""


def file_name(n: int, image: Image, size: str, sizes: list[str], format: str) -> str:
    """image-0001-seed3.png; with several sizes, one folder per size (1024/image-...)."""
    name = f"image-{n:04d}-seed{image.seed}.{FORMATS[format][1]}"
    return f"{size}/{name}" if len(sizes) > 1 else name


def write_pack_zip(storage: Storage, pack: Pack, images: list[Image], source: PackSource, path: Path,
                   should_stop=None, progress=None) -> int:
    """Writes the ZIP to ``path`` one image at a time (memory bounded by one image, in
    every size), with a manifest.csv describing each file. Returns the number of images
    written. ``should_stop`` is asked before each image; when it answers True,
    PackCanceled is raised. ``progress(done, total)`` hears of each image written."""
    sizes = parse_sizes(pack.size)
    manifest = io.StringIO()
    writer = csv.DictWriter(manifest, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, image in enumerate(images, start=1):
            if should_stop is not None and should_stop():
                raise PackCanceled()
            with PILImage.open(io.BytesIO(storage.get_bytes(image.key))) as img:
                img.load()
                for size in sizes:
                    name = file_name(n, image, size, sizes, pack.format)
                    out = resize(img, size)
                    zf.writestr(name, encode(out, pack.format))
                    writer.writerow({key: csv_cell(value) for key, value in {
                        "file": name, "width": out.width, "height": out.height, "review": image.review,
                        "prompt": image.prompt or "", "seed": image.seed, "run": source.run_id,
                        "base_model": source.base_model, "created": aware(image.created_at).isoformat(),
                    }.items()})
            if progress is not None:
                progress(n, len(images))
        zf.writestr("manifest.csv", manifest.getvalue())
    return len(images)

from __future__ import annotations

import csv
import io
import logging
import zipfile
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageOps
from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import BadInput, NotFound, Unavailable
from app.jobs import BUILD_PACK, JobQueue
from app.models import Gallery, Image, Pack
from app.storage import Storage, pack_key

log = logging.getLogger("domainstudio.packs")

FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}
SIZES = {
    "original": "original size",
    "1024": "1024 px long side",
    "2048": "2048 px long side",
    "square": "square 1:1",
    "4x5": "portrait 4:5",
}
SELECTIONS = ("approved", "all")
MANIFEST_FIELDS = ["file", "prompt", "seed", "run", "base_model", "created"]


def request_pack(db: Session, queue: JobQueue, team_id, gallery_id, *, selection: str, format: str, size: str) -> Pack:
    gallery = repo.gallery(db, team_id, gallery_id)
    if gallery is None:
        raise NotFound("gallery not found")
    if selection not in SELECTIONS:
        raise BadInput("selection must be 'approved' or 'all'")
    if format not in FORMATS:
        raise BadInput("format must be one of: %(choices)s", params={"choices": ", ".join(FORMATS)})
    if size not in SIZES:
        raise BadInput("size must be one of: %(choices)s", params={"choices": ", ".join(SIZES)})
    images = repo.images_of_gallery(db, gallery.id, review="approved" if selection == "approved" else None)
    if selection == "all":
        images = [i for i in images if i.review != "rejected"]
    if not images:
        if selection == "approved":
            raise BadInput("there are no approved images to pack")
        raise BadInput("the gallery has no images to pack")
    pack = Pack(
        team_id=team_id, gallery_id=gallery.id, selection=selection, image_ids=[str(i.id) for i in images],
        format=format, size=size, status="queued", key="",
    )
    db.add(pack)
    db.flush()
    pack.key = pack_key(team_id, pack.id)
    db.commit()
    try:
        queue.send(BUILD_PACK, pack.id)
    except Unavailable:
        pack.status, pack.error = "failed", "the job queue was unreachable; build the pack again"
        db.commit()
        raise
    return pack


def get_pack(db: Session, team_id, pack_id) -> Pack:
    pack = repo.pack(db, team_id, pack_id)
    if pack is None:
        raise NotFound("pack not found")
    return pack


def cancel_pack(db: Session, team_id, pack_id) -> Pack:
    """A queued pack is canceled at once; one being built stops before its next image and
    its ZIP is never stored."""
    pack = get_pack(db, team_id, pack_id)
    if pack.status not in ("queued", "running"):
        return pack
    pack.cancel_requested = True
    if pack.status == "queued":
        pack.status = "canceled"
    db.commit()
    log.info("pack.cancel.requested", extra={"pack": str(pack.id)})
    return pack


def resize(img: PILImage.Image, size: str) -> PILImage.Image:
    """Long-side sizes scale (up or down) to exactly that long side; square and 4:5 crop the
    largest centred box of that shape at the image's own resolution."""
    if size in ("1024", "2048"):
        side = int(size)
        w, h = img.size
        scale = side / max(w, h)
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), PILImage.LANCZOS)
    if size == "square":
        s = min(img.size)
        return ImageOps.fit(img, (s, s), PILImage.LANCZOS)
    if size == "4x5":
        w, h = img.size
        cw, ch = (w, w * 5 // 4) if w * 5 // 4 <= h else (h * 4 // 5, h)
        return ImageOps.fit(img, (max(1, cw), max(1, ch)), PILImage.LANCZOS)
    return img


def encode(img: PILImage.Image, format: str) -> bytes:
    pil_format, _ = FORMATS[format]
    if pil_format == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=pil_format, **({"quality": 92} if pil_format in ("JPEG", "WEBP") else {}))
    return out.getvalue()


@dataclass
class PackSource:
    """What the manifest says about where the images came from."""

    run_id: str
    base_model: str


class PackCanceled(Exception):
    """The pack was canceled while it was being built."""


def write_pack_zip(storage: Storage, pack: Pack, images: list[Image], source: PackSource, path: Path,
                   should_stop=None) -> int:
    """Writes the ZIP to ``path`` one image at a time (memory bounded by one image), with a
    manifest.csv describing each file. Returns the number of images written. ``should_stop``
    is asked before each image; when it answers True, PackCanceled is raised."""
    _, ext = FORMATS[pack.format]
    manifest = io.StringIO()
    writer = csv.DictWriter(manifest, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, image in enumerate(images, start=1):
            if should_stop is not None and should_stop():
                raise PackCanceled()
            with PILImage.open(io.BytesIO(storage.get_bytes(image.key))) as img:
                img.load()
                data = encode(resize(img, pack.size), pack.format)
            name = f"image-{n:04d}-seed{image.seed}.{ext}"
            zf.writestr(name, data)
            writer.writerow({
                "file": name, "prompt": image.prompt or "", "seed": image.seed, "run": source.run_id,
                "base_model": source.base_model, "created": _utc(image.created_at).isoformat(),
            })
        zf.writestr("manifest.csv", manifest.getvalue())
    return len(images)


def _utc(moment):
    """SQLite hands back naive datetimes; every timestamp we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def pack_filename(gallery: Gallery, pack: Pack) -> str:
    return f"domainstudio-pack-{str(pack.id)[:8]}-{pack.format}-{pack.size}.zip"

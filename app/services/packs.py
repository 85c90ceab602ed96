from __future__ import annotations

import io
import logging
import uuid

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import BadInput, Message, NotFound, TooManyRequests, Unavailable, set_error
from app.jobs import BUILD_PACK, JobQueue
from app.models import ACTIVE, Gallery, Image, JobStatus, Pack
from app.packfiles import FORMATS, SIZES, encode, file_name, output_size, parse_sizes
from app.services import quotas
from app.settings import Settings
from app.storage import Storage, StorageError, pack_key

log = logging.getLogger("domainstudio.packs")

SELECTIONS = ("approved", "all", "selected")
MAX_SELECTED = 1000  # a gallery's most images


def _check_choice(selection: str, format: str) -> None:
    if selection not in SELECTIONS:
        raise BadInput("selection must be one of: %(choices)s", params={"choices": ", ".join(SELECTIONS)})
    if format not in FORMATS:
        raise BadInput("format must be one of: %(choices)s", params={"choices": ", ".join(FORMATS)})


def choose_images(db: Session, gallery: Gallery, selection: str, image_ids: list[str] | None,
                  exclude_near_copies: bool) -> list[Image]:
    """The images a pack holds: the approved ones, all but the rejected ones, or the ones
    selected on the page (any review); near copies of training photos left out on request."""
    if selection == "selected":
        try:
            wanted = [str(uuid.UUID(str(i))) for i in (image_ids or [])][:MAX_SELECTED + 1]
        except ValueError:
            raise BadInput("the selected images are not valid image ids") from None
        if len(wanted) > MAX_SELECTED:
            raise BadInput("select at most %(n)s images", params={"n": MAX_SELECTED})
        images = list(repo.images_by_ids(db, gallery.id, wanted))  # other galleries' ids drop out
    else:
        images = list(repo.images_of_gallery(db, gallery.id, review="approved" if selection == "approved" else None))
        if selection == "all":
            images = [i for i in images if i.review != "rejected"]
    if not images:
        _nothing_to_pack(selection)
    if exclude_near_copies:
        images = [i for i in images if not i.near_copy]
        if not images:
            raise BadInput("every image chosen is a near copy of a training photo")
    return images


def _nothing_to_pack(selection: str):
    if selection == "approved":
        raise BadInput("there are no approved images to pack")
    if selection == "selected":
        raise BadInput("select the images to pack first")
    raise BadInput("the gallery has no images to pack")


def request_pack(db: Session, queue: JobQueue, team_id, gallery_id, *, selection: str, format: str,
                 size: str | list[str], image_ids: list[str] | None = None, exclude_near_copies: bool = False,
                 storage: Storage | None = None, settings: Settings | None = None) -> Pack:
    """Queues a pack; with ``storage`` its estimated size is stored with it; with
    ``settings`` the team's quotas are checked (packs waiting or being built, storage)."""
    gallery = repo.gallery(db, team_id, gallery_id)
    if gallery is None:
        raise NotFound("gallery not found")
    _check_choice(selection, format)
    sizes = parse_sizes(size)
    images = choose_images(db, gallery, selection, image_ids, exclude_near_copies)
    if settings is not None:
        _check_pack_quotas(db, settings, team_id)
    pack = Pack(
        team_id=team_id, gallery_id=gallery.id, selection=selection, image_ids=[str(i.id) for i in images],
        format=format, size=",".join(sizes), exclude_near_copies=bool(exclude_near_copies), status=JobStatus.QUEUED, key="",
        estimated_bytes=estimate_bytes(storage, images, format, sizes) if storage is not None else None,
        progress=0.0,
    )
    db.add(pack)
    db.flush()
    pack.key = pack_key(team_id, pack.id)
    db.commit()
    try:
        queue.send_row(db, Pack, BUILD_PACK, pack.id)
    except Unavailable:
        pack.status = JobStatus.FAILED
        set_error(pack, Message("the job queue was unreachable; build the pack again"))
        db.commit()
        raise
    return pack


def _check_pack_quotas(db: Session, settings: Settings, team_id) -> None:
    quotas.check_storage(db, settings, team_id)
    repo.lock_team(db, team_id)  # two packs requested at once are counted one after the other
    active = repo.active_packs(db, team_id)
    if active >= settings.max_active_packs_per_team:
        db.rollback()
        raise TooManyRequests("your team has %(n)s packs waiting or being built, the most it may have; "
                              "wait for one to finish", params={"n": active})


def estimate_pack(db: Session, storage: Storage, team_id, gallery_id, *, selection: str, format: str,
                  size: str | list[str], image_ids: list[str] | None = None,
                  exclude_near_copies: bool = False) -> dict:
    """What a pack with these choices would hold, before it is built."""
    gallery = repo.gallery(db, team_id, gallery_id)
    if gallery is None:
        raise NotFound("gallery not found")
    _check_choice(selection, format)
    sizes = parse_sizes(size)
    try:
        images = choose_images(db, gallery, selection, image_ids, exclude_near_copies)
    except BadInput as exc:  # nothing to pack yet: an answer for the page, not an error
        return {"estimated_bytes": None, "image_count": 0, "file_count": 0, "sizes": sizes, "format": format,
                "reason": Message(exc.msgid, exc.params)}
    return {"estimated_bytes": estimate_bytes(storage, images, format, sizes), "image_count": len(images),
            "file_count": len(images) * len(sizes), "sizes": sizes, "format": format, "reason": None}


# ---------------------------------------------------------------------------- estimate
ESTIMATE_SAMPLE = 3  # images encoded to measure bytes per pixel
ZIP_ENTRY_OVERHEAD = 30 + 46  # local file header + central directory entry, plus the name twice
MANIFEST_ROW = 160  # bytes of a manifest row besides the prompt (ids, seed, date, file name)


ESTIMATE_WINDOW = 256  # side of the piece of each output image that is encoded to measure it


def estimate_bytes(storage: Storage, images: list[Image], format: str, sizes: list[str]) -> int | None:
    """The ZIP's size: per size preset, the bytes per output pixel of this format measured
    on a few of the actual images (evenly spread through the selection), times every
    image's output pixels (known from its width and height), plus the ZIP's and the
    manifest's overhead. Photos compress alike within a gallery, so a few suffice. Only a
    central window of ESTIMATE_WINDOW pixels of each output is made and encoded, so the
    estimate costs milliseconds in the web request (the whole images at 2048 px took 2-3.5 s
    a call). None when no sample image could be read (the object store is down)."""
    if not images:
        return 0
    step = max(1, len(images) // ESTIMATE_SAMPLE)
    encoded = {size: 0 for size in sizes}
    pixels = {size: 0 for size in sizes}
    for image in images[::step][:ESTIMATE_SAMPLE]:
        try:
            data = storage.get_bytes(image.key)
        except StorageError:
            log.warning("pack.estimate.unreadable", extra={"image": str(image.id)})
            continue
        with PILImage.open(io.BytesIO(data)) as img:
            img.load()
            for size in sizes:
                window = output_window(img, size)
                encoded[size] += len(encode(window, format))
                pixels[size] += window.size[0] * window.size[1]
    if not all(pixels.values()):
        return None
    per_pixel = {size: encoded[size] / pixels[size] for size in sizes}
    total = 22  # end of central directory
    for image in images:
        for size in sizes:
            w, h = output_size(image.width, image.height, size)
            total += round(w * h * per_pixel[size]) + ZIP_ENTRY_OVERHEAD + 2 * (len(file_name(1, image, size, sizes, format)))
        total += MANIFEST_ROW * len(sizes) + len((image.prompt or "").encode()) * len(sizes)
    return int(total)


def output_window(img: PILImage.Image, size: str, side: int = ESTIMATE_WINDOW) -> PILImage.Image:
    """The central side x side pixels of ``resize(img, size)``, made from the matching part
    of the source alone (a resize of a box: same pixels, a fraction of the work)."""
    w, h = img.size
    tw, th = output_size(w, h, size)
    if size in ("square", "4x5"):  # the centred crop of that shape that ImageOps.fit takes
        ratio = tw / th
        cw, ch = (h * ratio, h) if w / h > ratio else (w, w / ratio)
        box0, scale = ((w - cw) / 2, (h - ch) / 2), (cw / tw, ch / th)
    else:
        box0, scale = (0.0, 0.0), (w / tw, h / th)
    ww, wh = min(side, tw), min(side, th)
    left, top = (tw - ww) // 2, (th - wh) // 2
    box = (box0[0] + left * scale[0], box0[1] + top * scale[1],
           box0[0] + (left + ww) * scale[0], box0[1] + (top + wh) * scale[1])
    return img.resize((ww, wh), PILImage.LANCZOS, box=box)


def get_pack(db: Session, team_id, pack_id) -> Pack:
    pack = repo.pack(db, team_id, pack_id)
    if pack is None:
        raise NotFound("pack not found")
    return pack


def cancel_pack(db: Session, team_id, pack_id) -> Pack:
    """A queued pack is canceled at once; one being built stops before its next image and
    its ZIP is never stored."""
    pack = get_pack(db, team_id, pack_id)
    if pack.status not in ACTIVE:
        return pack
    pack.cancel_requested = True
    if pack.status == JobStatus.QUEUED:
        pack.status = JobStatus.CANCELED
    db.commit()
    log.info("pack.cancel.requested", extra={"pack": str(pack.id)})
    return pack


def pack_filename(gallery: Gallery, pack: Pack) -> str:
    return f"domainstudio-pack-{str(pack.id)[:8]}-{pack.format}-{pack.size.replace(',', '+')}.zip"


def size_labels(size: str) -> list[str]:
    """The (untranslated) labels of a pack's size presets, for the page to translate."""
    return [SIZES.get(s.strip(), s.strip()) for s in size.split(",") if s.strip()]

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import BinaryIO

from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import N_, BadInput, Conflict, Message, NotFound, Unavailable
from app.imagecheck import CheckedPhoto, DecodeBudget, PhotoRejected, clean_filename, decode_photo, read_header
from app.models import ACTIVE, PendingDeletion, Photo, PhotoSet
from app.services import quotas
from app.settings import Settings
from app.storage import (Storage, StorageError, gallery_prefix, pack_key, photo_key, photo_thumb_key, run_prefix,
                         team_prefix)

log = logging.getLogger("domainstudio.photosets")


# the form fields' names as the user reads them in an error (translated when shown)
FIELD_LABELS = {"name": N_("name"), "class_word": N_("class word"), "notes": N_("notes"), "caption": N_("caption")}
MAX_CAPTION = 500  # as the core's (worker/domainstudio/data.py)


def _text(value: str | None, key: str, limit: int, required: bool = True) -> str:
    value = (value or "").strip()
    label = Message(FIELD_LABELS[key])
    if required and not value:
        raise BadInput("%(field)s is required", params={"field": label}, field=key)
    if len(value) > limit:
        raise BadInput("%(field)s must be at most %(limit)s characters", params={"field": label, "limit": limit},
                       field=key)
    return value


def _checked_fields(checks: dict[str, tuple]) -> dict[str, str]:
    """Each field checked by ``_text``; every field's problem at once (``fields``: name ->
    Message), so a form flags all of them, not only the first."""
    values, problems, first = {}, {}, None
    for key, (value, limit, required) in checks.items():
        try:
            values[key] = _text(value, key, limit, required)
        except BadInput as exc:
            problems[key] = Message(exc.msgid, exc.params)
            first = first or exc
    if first is not None:
        raise BadInput(first.msgid, params=first.params, field=first.extra["field"], fields=problems)
    return values


def create_photo_set(db: Session, team_id, name: str, class_word: str, notes: str = "") -> PhotoSet:
    values = _checked_fields({"name": (name, 200, True), "class_word": (class_word, 100, True),
                              "notes": (notes, 5000, False)})
    ps = PhotoSet(team_id=team_id, **values)
    db.add(ps)
    db.commit()
    return ps


def get_photo_set(db: Session, team_id, photo_set_id) -> PhotoSet:
    ps = repo.photo_set(db, team_id, photo_set_id, with_photos=True)
    if ps is None:
        raise NotFound("photo set not found")
    return ps


@dataclass
class UploadResult:
    added: list[Photo] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)  # {"file": name, "reason": Message saying why}

    def refuse(self, name: str, reason: Message) -> None:
        self.refused.append({"file": name, "reason": reason})


@dataclass
class _Candidate:
    """A checked photo whose objects are written, waiting for its row."""
    name: str
    checked: CheckedPhoto
    key: str
    thumb_key: str


# (photo set, sha256) of the photos being checked or stored by an upload in this process:
# a second upload of the same photo meanwhile is told so before it decodes anything
_in_flight: set[tuple[uuid.UUID, str]] = set()
_in_flight_lock = threading.Lock()


def _claim(photo_set_id: uuid.UUID, sha: str, mine: set) -> bool:
    with _in_flight_lock:
        if (photo_set_id, sha) in _in_flight:
            return False
        _in_flight.add((photo_set_id, sha))
    mine.add((photo_set_id, sha))
    return True


def _release(mine: set) -> None:
    with _in_flight_lock:
        _in_flight.difference_update(mine)


def add_photos(
    db: Session, storage: Storage, settings: Settings, team_id, photo_set_id, files: list[tuple[str, bytes | BinaryIO]],
    decode_budget: DecodeBudget | None = None,
) -> UploadResult:
    """Check each file, store the accepted ones, then insert their rows in one commit.

    The cheap checks (size, format, pixels from the header, the duplicate check on the
    bytes' hash, room in the set, the request's pixel budget) come before any decoding;
    decoding waits for room in the process's ``decode_budget``. No database connection is
    held while files are checked and stored; the rows are inserted under a lock on the
    photo set, which re-reads its photos, so concurrent uploads of the same photo each get
    their "duplicate" answer and the set never holds more than ``max_photos``. If storing
    or committing fails, the objects written by this call are removed again."""
    ps = repo.photo_set(db, team_id, photo_set_id)
    if ps is None:
        raise NotFound("photo set not found")
    ps_id = ps.id
    quotas.check_storage(db, settings, team_id)
    seen = repo.photo_hashes(db, ps_id)
    room = settings.max_photos - repo.photo_count(db, ps_id)
    db.rollback()  # hand the connection back while the files are checked (seconds for large ones)
    result = UploadResult()
    written: list[str] = []
    mine: set = set()
    try:
        candidates = _check_and_store(storage, settings, team_id, ps_id, files, seen, room, decode_budget,
                                      result, written, mine)
        _insert_photos(db, settings, team_id, ps_id, candidates, result)
        leftovers = [k for c in candidates if c.checked.sha256 not in {p.sha256 for p in result.added}
                     for k in (c.key, c.thumb_key)]
        if leftovers:  # refused at insert time: a concurrent upload took the place or the photo
            _remove_unreferenced(db, storage, ps_id, leftovers)
    except BaseException as exc:
        db.rollback()
        _remove_unreferenced(db, storage, ps_id, written)
        if isinstance(exc, StorageError):
            raise Unavailable("the object store is unreachable; no photo was saved, please retry") from exc
        raise
    finally:
        _release(mine)
    log.info("photo_set.photos.added", extra={"photo_set": str(ps_id), "added": len(result.added)})
    return result


def _check_and_store(storage: Storage, settings: Settings, team_id, ps_id, files, seen: set, room: int,
                     decode_budget: DecodeBudget | None, result: UploadResult, written: list[str],
                     mine: set) -> list[_Candidate]:
    candidates: list[_Candidate] = []
    pixels_left = settings.max_request_pixels
    for raw_name, source in files:
        name = clean_filename(raw_name)
        # a file object (the request's spooled copy) is read only now, at most one byte over the limit
        data = source if isinstance(source, bytes) else source.read(settings.max_upload_bytes + 1)
        try:
            header = read_header(data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                                 min_side=settings.min_pixels_side)
        except PhotoRejected as exc:
            result.refused.append({"file": name, "reason": exc.reason})
            continue
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:
            result.refuse(name, Message("duplicate: the same photo is already in this set"))
            continue
        if len(candidates) >= room:
            result.refuse(name, Message("the photo set already holds the maximum of %(max)s photos",
                                        {"max": settings.max_photos}))
            continue
        if header.decode_pixels > pixels_left:
            result.refuse(name, Message("the photos of this upload have more than %(limit)s pixels together; "
                                        "send this one in another upload",
                                        {"limit": format(settings.max_request_pixels, ",")}))
            continue
        if not _claim(ps_id, sha, mine):
            result.refuse(name, Message("duplicate: another upload is adding the same photo to this set"))
            continue
        try:
            with decode_budget.hold(header.decode_pixels) if decode_budget else nullcontext():
                checked = decode_photo(data, header)
        except PhotoRejected as exc:
            result.refused.append({"file": name, "reason": exc.reason})
            continue
        pixels_left -= header.decode_pixels
        seen.add(sha)
        # keys named by content: a retry after a failed upload writes the same keys, so
        # objects a failed attempt could not remove are taken over, never duplicated
        key = photo_key(team_id, ps_id, checked.sha256, checked.ext)
        thumb_key = photo_thumb_key(team_id, ps_id, checked.sha256)
        storage.put_bytes(key, checked.data, checked.content_type)
        written.append(key)
        storage.put_bytes(thumb_key, checked.thumbnail, "image/jpeg")
        written.append(thumb_key)
        candidates.append(_Candidate(name, checked, key, thumb_key))
    return candidates


def _insert_photos(db: Session, settings: Settings, team_id, ps_id, candidates: list[_Candidate],
                   result: UploadResult) -> None:
    """The rows, under the photo set's lock, against its photos as they are now."""
    if not candidates:
        return
    repo.lock_photo_set(db, ps_id)
    seen = repo.photo_hashes(db, ps_id)
    room = settings.max_photos - repo.photo_count(db, ps_id)
    for c in candidates:
        if c.checked.sha256 in seen:
            result.refuse(c.name, Message("duplicate: the same photo is already in this set"))
            continue
        if room <= 0:
            result.refuse(c.name, Message("the photo set already holds the maximum of %(max)s photos",
                                          {"max": settings.max_photos}))
            continue
        photo = Photo(
            id=uuid.uuid4(), team_id=team_id, photo_set_id=ps_id, filename=c.name, sha256=c.checked.sha256,
            content_type=c.checked.content_type, width=c.checked.width, height=c.checked.height,
            size_bytes=len(c.checked.data), key=c.key, thumb_key=c.thumb_key,
        )
        db.add(photo)
        result.added.append(photo)
        seen.add(c.checked.sha256)
        room -= 1
    db.commit()


def _remove_unreferenced(db: Session, storage: Storage, ps_id, keys: list[str]) -> None:
    """Objects this upload wrote that no photo row points at. A concurrent upload of the
    same photo that committed first owns the same keys: those stay."""
    try:
        photos = repo.photos_of_set(db, ps_id)
        kept = {p.key for p in photos} | {p.thumb_key for p in photos}
        db.rollback()
    except Exception:
        kept = set()
    unreachable = False
    for key in (k for k in keys if k not in kept):
        try:
            if unreachable:  # do not wait out the store's retries once per object
                raise StorageError("skipped after an earlier failure")
            storage.delete(key)
        except StorageError:
            unreachable = True
            log.error("photo.cleanup.failed", extra={"key": key})


def set_caption(db: Session, team_id, photo_id, caption: str | None) -> Photo:
    """The photo's caption, trained after the trigger words; empty removes it. On one line:
    the worker writes it into photo.txt, which the core reads as one caption."""
    photo = repo.photo(db, team_id, photo_id)
    if photo is None:
        raise NotFound("photo not found")
    text = " ".join(_text(caption, "caption", MAX_CAPTION * 2, required=False).split())
    if len(text) > MAX_CAPTION:
        raise BadInput("%(field)s must be at most %(limit)s characters",
                       params={"field": Message(FIELD_LABELS["caption"]), "limit": MAX_CAPTION}, field="caption")
    photo.caption = text or None
    db.commit()
    return photo


def delete_photo(db: Session, storage: Storage, team_id, photo_id) -> None:
    photo = repo.photo(db, team_id, photo_id)
    if photo is None:
        raise NotFound("photo not found")
    keys = [photo.key, photo.thumb_key]
    db.delete(photo)
    db.commit()
    _remove_objects(db, storage, [], keys)


def delete_photo_set(db: Session, storage: Storage, team_id, photo_set_id) -> None:
    ps = repo.photo_set(db, team_id, photo_set_id)
    if ps is None:
        raise NotFound("photo set not found")
    runs = repo.runs(db, team_id, ps.id, limit=100_000)
    if any(r.status in ACTIVE for r in runs):
        raise Conflict("this photo set has a run in progress; cancel it first")
    prefixes, keys = [f"{team_prefix(team_id)}/photo-sets/{ps.id}"], []
    for run in runs:
        _run_objects(db, team_id, run.id, prefixes, keys)
    db.delete(ps)  # cascades to photos, runs, checkpoints, galleries, images, packs
    db.commit()
    _remove_objects(db, storage, prefixes, keys)


def _gallery_objects(db: Session, team_id, gallery_id, prefixes: list[str], keys: list[str]) -> None:
    prefixes.append(gallery_prefix(team_id, gallery_id))
    keys.extend(pack.key or pack_key(team_id, pack.id) for pack in repo.packs_of_gallery(db, gallery_id))


def _run_objects(db: Session, team_id, run_id, prefixes: list[str], keys: list[str]) -> None:
    prefixes.append(run_prefix(team_id, run_id))  # previews, checkpoint files, training state
    for gallery in repo.galleries_of_run(db, run_id):
        _gallery_objects(db, team_id, gallery.id, prefixes, keys)


def _remove_objects(db: Session, storage: Storage, prefixes: list[str], keys: list[str]) -> None:
    """After the rows are gone (never a row that points at nothing). What the object store
    cannot delete now is written down, and the workers' watchdog deletes it once the store
    is back."""
    later = []
    for key, is_prefix in [(p, True) for p in prefixes] + [(k, False) for k in keys]:
        try:
            if later:  # the store is down: do not wait out its retries once per object
                raise StorageError("skipped after an earlier failure")
            storage.delete_prefix(key) if is_prefix else storage.delete(key)
        except StorageError:
            log.warning("object.delete_deferred", extra={"key": key})
            later.append(PendingDeletion(key=key, prefix=is_prefix))
    if later:
        try:
            db.add_all(later)
            db.commit()
        except Exception:  # the database went too: the objects stay unreferenced
            db.rollback()
            log.error("object.delete_failed", extra={"keys": [p.key for p in later]})


def delete_run(db: Session, storage: Storage, team_id, run_id) -> None:
    """A finished run with its checkpoint, previews, galleries, images and packs."""
    run = repo.run(db, team_id, run_id)
    if run is None:
        raise NotFound("run not found")
    if repo.busy_jobs(db, [run.id], []):
        raise Conflict("this run, its gallery or a pack of it is still in progress; cancel it first")
    prefixes, keys = [], []
    _run_objects(db, team_id, run.id, prefixes, keys)
    db.delete(run)  # cascades to the checkpoint, galleries, images and packs
    db.commit()
    _remove_objects(db, storage, prefixes, keys)
    log.info("run.deleted", extra={"run": str(run_id)})


def delete_gallery(db: Session, storage: Storage, team_id, gallery_id) -> None:
    """A gallery with its images and packs (the run and its checkpoint stay)."""
    gallery = repo.gallery(db, team_id, gallery_id)
    if gallery is None:
        raise NotFound("gallery not found")
    if repo.busy_jobs(db, [], [gallery.id]):
        raise Conflict("this gallery or one of its packs is still being made; cancel it first")
    prefixes, keys = [], []
    _gallery_objects(db, team_id, gallery.id, prefixes, keys)
    db.delete(gallery)  # cascades to images and packs
    db.commit()
    _remove_objects(db, storage, prefixes, keys)
    log.info("gallery.deleted", extra={"gallery": str(gallery_id)})

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import BadInput, Conflict, NotFound, Unavailable
from app.jobs import SAMPLE_GALLERY, JobQueue
from app.models import Gallery, Image, Run
from app.settings import Settings

log = logging.getLogger("domainstudio.galleries")
REVIEWS = ("new", "approved", "rejected")
MAX_GALLERY = 1000


def new_gallery(db: Session, settings: Settings, run: Run, prompt: str | None) -> Gallery:
    """Called by the worker when a run succeeds; the caller commits."""
    gallery = Gallery(
        team_id=run.team_id, run_id=run.id, size=run.gallery_size, prompt=prompt, steps=settings.sample_steps,
        status="queued",
    )
    db.add(gallery)
    return gallery


def get_gallery(db: Session, team_id, gallery_id) -> Gallery:
    gallery = repo.gallery(db, team_id, gallery_id)
    if gallery is None:
        raise NotFound("gallery not found")
    return gallery


def generate_more(db: Session, queue: JobQueue, team_id, gallery_id, n) -> Gallery:
    gallery = get_gallery(db, team_id, gallery_id)
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise BadInput("the number of images must be a whole number") from None
    if not 1 <= n <= 256:
        raise BadInput("generate between 1 and 256 more images at a time")
    if gallery.size + n > MAX_GALLERY:
        raise BadInput("a gallery holds at most %(max)s images", params={"max": MAX_GALLERY})
    if gallery.status in ("queued", "running"):
        raise Conflict("this gallery is still being generated; wait until it is done")
    gallery.size += n
    gallery.status, gallery.error, gallery.cancel_requested = "queued", None, False
    db.commit()
    try:
        queue.send(SAMPLE_GALLERY, gallery.id)
    except Unavailable:
        gallery.status, gallery.error = "failed", "the job queue was unreachable; ask for more images again"
        db.commit()
        raise
    return gallery


def cancel_gallery(db: Session, team_id, gallery_id) -> Gallery:
    """A queued gallery is canceled at once; a sampling one stops before its next batch
    (the images saved so far stay; "generate more" fills in the rest)."""
    gallery = get_gallery(db, team_id, gallery_id)
    if gallery.status not in ("queued", "running"):
        return gallery
    gallery.cancel_requested = True
    if gallery.status == "queued":
        gallery.status, gallery.size = "canceled", len(repo.image_seeds(db, gallery.id))
    db.commit()
    log.info("gallery.cancel.requested", extra={"gallery": str(gallery.id)})
    return gallery


def review_image(db: Session, team_id, image_id, review: str) -> Image:
    if review not in REVIEWS:
        raise BadInput("review must be one of: new, approved, rejected")
    image = repo.image(db, team_id, image_id)
    if image is None:
        raise NotFound("image not found")
    image.review = review
    db.commit()
    return image

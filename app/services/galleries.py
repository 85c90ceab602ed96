from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import N_, BadInput, Conflict, Message, NotFound, Unavailable, set_error
from app.jobs import SAMPLE_GALLERY, JobQueue
from app.models import ACTIVE, Gallery, Image, JobStatus, Photo

log = logging.getLogger("domainstudio.galleries")
REVIEWS = ("new", "approved", "rejected")
# the gallery page's filters: a review state, or the near copies of training photos
FILTERS = (*REVIEWS, "near")
MAX_GALLERY = 1000
PAGE_SIZE = 120  # images per page of the grid (the next pages load as the user scrolls)
# the copy guard's built-in feature networks, as worker/copyguard.py names them (stored in
# galleries.feature_network; marked here so that the page can show them translated)
FEATURE_NETWORKS = (
    N_("Fashion-MNIST classifier (last conv stage, 32x32 grayscale)"),
    N_("pixel descriptor (32x32 colour thumbnail; no feature network configured)"),
)


def get_gallery(db: Session, team_id, gallery_id) -> Gallery:
    gallery = repo.gallery(db, team_id, gallery_id)
    if gallery is None:
        raise NotFound("gallery not found")
    return gallery


def generate_more(db: Session, queue: JobQueue, team_id, gallery_id, n, limit: int = MAX_GALLERY) -> Gallery:
    """``limit``: the server's max_gallery_size."""
    gallery = get_gallery(db, team_id, gallery_id)
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise BadInput("the number of images must be a whole number") from None
    if not 1 <= n <= 256:
        raise BadInput("generate between 1 and 256 more images at a time")
    if gallery.size + n > limit:
        raise BadInput("a gallery holds at most %(max)s images", params={"max": limit})
    if gallery.status in ACTIVE:
        raise Conflict("this gallery is still being generated; wait until it is done")
    gallery.size += n
    gallery.status, gallery.cancel_requested, gallery.sent_at = JobStatus.QUEUED, False, None
    set_error(gallery, None)
    db.commit()
    try:
        queue.send_row(db, Gallery, SAMPLE_GALLERY, gallery.id)
    except Unavailable:
        gallery.status = JobStatus.FAILED
        set_error(gallery, Message("the job queue was unreachable; ask for more images again"))
        db.commit()
        raise
    return gallery


def cancel_gallery(db: Session, team_id, gallery_id) -> Gallery:
    """A queued gallery is canceled at once; a sampling one stops before its next batch
    (the images saved so far stay; "generate more" fills in the rest)."""
    gallery = get_gallery(db, team_id, gallery_id)
    if gallery.status not in ACTIVE:
        return gallery
    gallery.cancel_requested = True
    if gallery.status == JobStatus.QUEUED:
        gallery.status, gallery.size = JobStatus.CANCELED, len(repo.image_seeds(db, gallery.id))
    db.commit()
    log.info("gallery.cancel.requested", extra={"gallery": str(gallery.id)})
    return gallery


def _check_review(review: str) -> None:
    if review not in REVIEWS:
        raise BadInput("review must be one of: new, approved, rejected")


def review_image(db: Session, team_id, image_id, review: str) -> Image:
    _check_review(review)
    image = repo.image(db, team_id, image_id)
    if image is None:
        raise NotFound("image not found")
    image.review = review
    db.commit()
    return image


def shown(value: str | None) -> str:
    """A filter of the gallery page from the query string; anything else shows all."""
    return value if value in FILTERS else ""


@dataclass
class GalleryPage:
    gallery: Gallery
    images: list[Image]
    counts: dict[str, int]
    show: str
    page: int
    pages: int

    @property
    def shown_total(self) -> int:
        return self.counts[self.show or "all"]


def gallery_page(db: Session, team_id, gallery_id, show: str = "", page: int = 1) -> GalleryPage:
    """One page of a gallery's grid, with the counts of every filter. The cost is that of
    one page, whatever the gallery's size."""
    gallery = get_gallery(db, team_id, gallery_id)
    show = shown(show)
    counts = repo.image_counts(db, gallery.id)
    pages = max(1, -(-counts[show or "all"] // PAGE_SIZE))
    page = min(max(1, page), pages)
    images = list(repo.images_page(db, gallery.id, show, (page - 1) * PAGE_SIZE, PAGE_SIZE))
    return GalleryPage(gallery, images, counts, show, page, pages)


@dataclass
class ImageView:
    image: Image
    gallery: Gallery
    show: str
    position: int
    total: int
    prev_id: uuid.UUID | None
    next_id: uuid.UUID | None
    nearest_photo: Photo | None


def image_view(db: Session, team_id, image_id, show: str = "") -> ImageView:
    """The large view of one image: its neighbours in the filter it was opened from (in the
    whole gallery once it left that filter, e.g. after a review), and its nearest training
    photo when that photo still exists."""
    image = repo.image(db, team_id, image_id)
    if image is None:
        raise NotFound("image not found")
    gallery = get_gallery(db, team_id, image.gallery_id)
    show = shown(show)
    ids = repo.image_ids_shown(db, gallery.id, show)
    if image.id not in ids:
        show, ids = "", repo.image_ids_shown(db, gallery.id, "")
    pos = ids.index(image.id)
    nearest = repo.photo(db, team_id, image.nearest_photo_id) if image.nearest_photo_id else None
    return ImageView(image, gallery, show, pos + 1, len(ids), ids[pos - 1] if pos > 0 else None,
                     ids[pos + 1] if pos + 1 < len(ids) else None, nearest)


def bulk_review(db: Session, team_id, gallery_id, review: str, image_ids: list | None = None,
                show: str | None = None) -> int:
    """Sets the review of many images of one gallery in one UPDATE: the given ids, or every
    image of a filter (``show``: "all" or one of FILTERS). Ids of other galleries (or teams)
    are not touched. Returns how many images were updated."""
    _check_review(review)
    gallery = get_gallery(db, team_id, gallery_id)
    if show is not None:
        if show != "all" and show not in FILTERS:
            raise BadInput("show must be one of: all, %(choices)s", params={"choices": ", ".join(FILTERS)})
        updated = repo.review_images(db, team_id, gallery.id, review, show="" if show == "all" else show)
    else:
        try:
            ids = {uuid.UUID(str(i)) for i in image_ids or []}
        except ValueError:
            raise BadInput("the selected images are not valid image ids") from None
        if not ids:
            raise BadInput("select at least one image")
        if len(ids) > MAX_GALLERY:
            raise BadInput("select at most %(n)s images", params={"n": MAX_GALLERY})
        updated = repo.review_images(db, team_id, gallery.id, review, image_ids=ids)
    db.commit()
    log.info("gallery.bulk_review", extra={"gallery": str(gallery.id), "review": review, "images": updated})
    return updated

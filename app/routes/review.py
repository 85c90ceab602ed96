"""Gallery review and pack building: the gallery page (a paged grid with filters and bulk
selection), the large view of an image, bulk review and the pack form, with their JSON
counterparts (bulk review, a pack's estimated size)."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel, Field

from app import i18n
from app import repositories as repo
from app import schemas
from app.deps import Ctx, ctx
from app.errors import BadInput, Message
from app.routes.pages import _local_path, act, flash, redirect, render
from app.demo_models import guard_fits
from app.imagecheck import colour_photos
from app.services import galleries, packs, waiting

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api", tags=["api"])


def _gallery_url(gallery_id, show: str = "", page: int = 1) -> str:
    query = "&".join(p for p in (f"show={show}" if show else "", f"page={page}" if page > 1 else "") if p)
    return f"/galleries/{gallery_id}" + (f"?{query}" if query else "")


def _network(request: Request, gallery) -> str | None:
    """The copy guard's feature network, in the page's language where it has a name there."""
    if not gallery.feature_network:
        return None
    return i18n.t(i18n.request_locale(request), gallery.feature_network)


# ------------------------------------------------------------------------------ pages
@pages.get("/galleries/{gallery_id}")
def gallery_page(request: Request, gallery_id: uuid.UUID, show: str = "", review: str = "", page: int = 1,
                 c: Ctx = Depends(ctx)):
    # ``review`` is the filter's former name, kept so that old links still work
    view = galleries.gallery_page(c.db, c.team_id, gallery_id, show or review, page)
    g = view.gallery
    photos = repo.photos_of_set(c.db, g.run.photo_set_id)
    misfit_possible = g.feature_network and not guard_fits(g.feature_network, True)
    return render(request, "gallery.html", user=c.user, gallery=g, run=g.run, view=view,
                  network=_network(request, g), queue=waiting.queue_spot(c.db, c.team_id, g),
                  guard_fits=not (misfit_possible and colour_photos(c.storage, photos)),
                  photos=photos, packs=repo.packs_of_gallery(c.db, g.id),
                  formats=packs.FORMATS, sizes=packs.SIZES, size_labels=packs.size_labels,
                  here=_gallery_url(g.id, view.show, view.page),
                  next_url=_gallery_url(g.id, view.show, view.page + 1) if view.page < view.pages else "",
                  prev_url=_gallery_url(g.id, view.show, view.page - 1) if view.page > 1 else "")


@pages.get("/images/{image_id}")
def image_page(request: Request, image_id: uuid.UUID, show: str = "", c: Ctx = Depends(ctx)):
    v = galleries.image_view(c.db, c.team_id, image_id, show)
    suffix = f"?show={v.show}" if v.show else ""
    misfit_possible = v.nearest_photo is not None and not guard_fits(v.gallery.feature_network, True)
    return render(request, "image.html", user=c.user, v=v, image=v.image, gallery=v.gallery, run=v.gallery.run,
                  network=_network(request, v.gallery),
                  guard_fits=not (misfit_possible and colour_photos(c.storage, [v.nearest_photo])),
                  prev_url=f"/images/{v.prev_id}{suffix}" if v.prev_id else "",
                  next_url=f"/images/{v.next_id}{suffix}" if v.next_id else "",
                  back_url=_gallery_url(v.gallery.id, v.show))


@pages.post("/galleries/{gallery_id}/review")
def bulk_review_form(request: Request, gallery_id: uuid.UUID, review: str = Form(""),
                     image_ids: list[str] = Form([]), apply_all: str = Form(""), next: str = Form(""),
                     c: Ctx = Depends(ctx)):
    """The grid's bulk buttons without JavaScript: the ticked images, or with "apply to all
    in this view" every image of the filter."""
    back = next if _local_path(next) else f"/galleries/{gallery_id}"

    def action():
        n = galleries.bulk_review(c.db, c.team_id, gallery_id, review, image_ids=image_ids,
                                  show=apply_all or None)
        flash(request, i18n.tn(i18n.request_locale(request), "%(num)s image updated", "%(num)s images updated", n))
        return back

    return act(request, action, back)


def _selected(c: Ctx, gallery_id, selection: str, image_ids: list[str] | None, show: str | None) -> list[str] | None:
    """The ids a "selected images" pack holds: the ticked ones, or with "apply to all in this
    view" every image of that filter (some of which the page may not have loaded)."""
    if selection != "selected" or not show:
        return image_ids
    g = galleries.get_gallery(c.db, c.team_id, gallery_id)
    return [str(i) for i in repo.image_ids_shown(c.db, g.id, galleries.shown("" if show == "all" else show))]


@pages.post("/galleries/{gallery_id}/packs")
def create_pack(request: Request, gallery_id: uuid.UUID, selection: str = Form("approved"), format: str = Form("png"),
                size: list[str] = Form(["original"]), image_ids: list[str] = Form([]), apply_all: str = Form(""),
                exclude_near_copies: bool = Form(False), c: Ctx = Depends(ctx)):
    back = f"/galleries/{gallery_id}"

    def action():
        chosen = _selected(c, gallery_id, selection, image_ids, apply_all)
        packs.request_pack(c.db, c.queue, c.team_id, gallery_id, selection=selection, format=format, size=size,
                           image_ids=chosen, exclude_near_copies=exclude_near_copies, storage=c.storage,
                           settings=c.settings)
        flash(request, Message("the pack is being built; it appears below when ready"))
        return back + "#packs"

    return act(request, action, back + "#packs")


# -------------------------------------------------------------------------------- API
class BulkReviewIn(BaseModel):
    review: str
    image_ids: list[str] | None = Field(None, max_length=galleries.MAX_GALLERY)
    # instead of ids: every image of a filter ("all", "new", "approved", "rejected", "near")
    show: str | None = None


class PackChoiceIn(BaseModel):
    selection: str = "approved"
    format: str = "png"
    size: str | list[str] = "original"
    image_ids: list[str] | None = Field(None, max_length=packs.MAX_SELECTED + 1)
    exclude_near_copies: bool = False
    # with selection "selected": every image of this filter instead of image_ids
    show: str | None = None


@api.post("/galleries/{gallery_id}/review", response_model=schemas.BulkReviewed, **schemas.API)
def bulk_review(gallery_id: uuid.UUID, body: BulkReviewIn, c: Ctx = Depends(ctx)):
    galleries.get_gallery(c.db, c.team_id, gallery_id)  # another team's gallery: 404, whatever the body
    if (body.image_ids is None) == (body.show is None):
        raise BadInput("send either image_ids or show")
    n = galleries.bulk_review(c.db, c.team_id, gallery_id, body.review, image_ids=body.image_ids, show=body.show)
    return {"updated": n, "counts": repo.image_counts(c.db, gallery_id)}


@api.post("/galleries/{gallery_id}/packs/estimate", response_model=schemas.PackEstimate, **schemas.API)
def estimate_pack(request: Request, gallery_id: uuid.UUID, body: PackChoiceIn, c: Ctx = Depends(ctx)):
    """What the pack would hold and its estimated ZIP size, before it is built."""
    ids = _selected(c, gallery_id, body.selection, body.image_ids, body.show)
    out = packs.estimate_pack(c.db, c.storage, c.team_id, gallery_id, selection=body.selection, format=body.format,
                              size=body.size, image_ids=ids, exclude_near_copies=body.exclude_near_copies)
    lang = i18n.request_locale(request)
    out["estimated_text"] = i18n.format_size(out["estimated_bytes"], lang)
    out["reason"] = i18n.translate(lang, out["reason"]) if out["reason"] else None
    return out

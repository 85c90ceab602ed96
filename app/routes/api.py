"""The JSON API. Sign in with POST /api/auth/login; then send the returned csrf_token as
the X-CSRF-Token header on every POST and DELETE."""
from __future__ import annotations

import functools
import uuid
from typing import Any

import anyio

from fastapi import APIRouter, Depends, File, Request, Response, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app import i18n
from app import repositories as repo
from app import schemas
from app import serializers as ser
from app.basemodels import base_model_choices
from app.deps import Ctx, ctx, get_db
from app.errors import BadInput, Message, NotFound, Unprocessable
from app.presets import EXPERT_FIELDS, PRESETS
from app.security import DEVICE_COOKIE, DEVICE_MAX_AGE, csrf_token, device_cookie, device_id
from app.services import auth, galleries, packs, photosets, runs, waiting

router = APIRouter(prefix="/api", tags=["api"])


class SignUp(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1000)
    team_name: str | None = Field(None, max_length=200)


class Login(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1000)


class PhotoSetIn(BaseModel):
    name: str = Field(max_length=200)
    class_word: str = Field(max_length=100)
    notes: str = Field("", max_length=5000)


class RunIn(BaseModel):
    preset: str = "quick"
    base_model: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    gallery_size: int | None = Field(None, ge=1, le=100_000)  # the server's max_gallery_size is checked by the service


class MoreIn(BaseModel):
    n: int = Field(8, ge=1, le=256)


class ReviewIn(BaseModel):
    review: str


class PackIn(BaseModel):
    selection: str = "approved"  # approved, all (but rejected), or selected (image_ids)
    format: str = "png"
    size: str | list[str] = "original"  # one size preset or several (a list or comma-separated)
    image_ids: list[str] | None = Field(None, max_length=packs.MAX_SELECTED + 1)
    exclude_near_copies: bool = False


def _signed_in(request: Request, user) -> dict:
    request.session.clear()
    request.session["user_id"], request.session["epoch"] = str(user.id), user.session_epoch
    return {"user": {"id": str(user.id), "email": user.email, "team_id": str(user.team_id)},
            "csrf_token": csrf_token(request.session)}


async def password_work(request: Request, fn, *args):
    """Runs a sign-up or sign-in (argon2: 64 MB and a good part of a second of CPU each) on
    one of ``password_threads`` threads of its own: 40 concurrent sign-ups took 855 MB and
    every thread of the pool, and /health of another client took 10 s; now the rest wait
    without a thread and the other requests keep the pool."""
    state = request.app.state
    if getattr(state, "password_limiter", None) is None:  # made on the event loop that serves the app
        state.password_limiter = anyio.CapacityLimiter(state.settings.password_threads)
    return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=state.password_limiter)


@router.post("/auth/signup", status_code=201, response_model=schemas.SignedIn, **schemas.API)
async def signup(body: SignUp, request: Request, db: Session = Depends(get_db)):
    user = await password_work(request, auth.sign_up, db, body.email, body.password, body.team_name)
    return _signed_in(request, user)


@router.post("/auth/login", response_model=schemas.SignedIn, **schemas.API)
async def login(body: Login, request: Request, response: Response, db: Session = Depends(get_db)):
    user = await password_work(request, auth.sign_in, db, request.app.state.login_limiter, body.email, body.password,
                               client_address(request), known_device(request, body.email))
    remember_device(request, response, user.email)
    return _signed_in(request, user)


def client_address(request: Request) -> str | None:
    """The client's address: uvicorn takes it from X-Forwarded-For only when the request
    comes from an address in FORWARDED_ALLOW_IPS (README: behind a reverse proxy)."""
    return request.client.host if request.client else None


def known_device(request: Request, email: str) -> str | None:
    """The id of this browser's device cookie when it was issued for this account."""
    return device_id(request.app.state.settings.resolved_secret_key, request.cookies.get(DEVICE_COOKIE), email)


def remember_device(request: Request, response, email: str) -> None:
    """After a successful sign-in: this browser is known to this account from now on."""
    settings = request.app.state.settings
    response.set_cookie(DEVICE_COOKIE, device_cookie(settings.resolved_secret_key, email), max_age=DEVICE_MAX_AGE,
                        httponly=True, samesite="lax", secure=settings.cookie_secure)


@router.post("/auth/logout", response_model=schemas.Ok, **schemas.API)
def logout(request: Request, c: Ctx = Depends(ctx)):
    auth.sign_out(c.db, c.user)
    request.session.clear()
    return {"ok": True}


@router.get("/me", response_model=schemas.SignedIn, **schemas.API)
def me(request: Request, c: Ctx = Depends(ctx)):
    return {"user": {"id": str(c.user.id), "email": c.user.email, "team_id": str(c.team_id)},
            "csrf_token": csrf_token(request.session)}


@router.get("/base-models", response_model=schemas.BaseModels, **schemas.API)
def base_models(c: Ctx = Depends(ctx)):
    """The listed base models, and each one's kind and resolution (or why it is refused)."""
    details = [m.to_dict() for m in base_model_choices(c.settings.base_model_list)]
    return {"base_models": c.settings.base_model_list, "details": details}


@router.get("/presets", response_model=schemas.Presets, **schemas.API)
def presets(c: Ctx = Depends(ctx)):
    return {
        "presets": [{"name": p.name, "label": p.label, "description": p.description, "settings": p.settings}
                    for p in PRESETS.values()],
        "expert_settings": {k: {"type": f.type.__name__, "min": f.lo, "max": f.hi, "choices": f.choices}
                            for k, f in EXPERT_FIELDS.items()},
    }


@router.get("/photo-sets", response_model=schemas.PhotoSets, **schemas.API)
def list_photo_sets(c: Ctx = Depends(ctx)):
    return {"photo_sets": [ser.photo_set(ps, count=n) for ps, n in repo.photo_sets(c.db, c.team_id)]}


@router.post("/photo-sets", status_code=201, response_model=schemas.PhotoSetOut, **schemas.API)
def create_photo_set(body: PhotoSetIn, c: Ctx = Depends(ctx)):
    ps = photosets.create_photo_set(c.db, c.team_id, body.name, body.class_word, body.notes)
    return ser.photo_set(ps, photos=[])


@router.get("/photo-sets/{photo_set_id}", response_model=schemas.PhotoSetOut, **schemas.API)
def get_photo_set(photo_set_id: uuid.UUID, c: Ctx = Depends(ctx)):
    ps = photosets.get_photo_set(c.db, c.team_id, photo_set_id)
    return ser.photo_set(ps, photos=list(ps.photos))


@router.delete("/photo-sets/{photo_set_id}", response_model=schemas.Ok, **schemas.API)
def delete_photo_set(photo_set_id: uuid.UUID, c: Ctx = Depends(ctx)):
    photosets.delete_photo_set(c.db, c.storage, c.team_id, photo_set_id)
    return {"ok": True}


async def add_uploaded_photos(request: Request, c: Ctx, photo_set_id: uuid.UUID,
                              files: list[UploadFile]) -> photosets.UploadResult:
    """Checks and stores the files on one of ``upload_threads`` threads of their own: a
    flood of uploads waits for them without a thread (the other requests keep the
    threadpool), and each file is read from its spooled copy only when its turn comes, so
    that waiting uploads hold no file in memory."""
    state = request.app.state
    if getattr(state, "upload_limiter", None) is None:  # made on the event loop that serves the app
        state.upload_limiter = anyio.CapacityLimiter(c.settings.upload_threads)
    sources = [(f.filename or "photo", f.file) for f in files]
    try:
        return await anyio.to_thread.run_sync(
            functools.partial(photosets.add_photos, c.db, c.storage, c.settings, c.team_id, photo_set_id, sources,
                              state.decode_budget), limiter=state.upload_limiter)
    finally:
        for f in files:
            await f.close()


@router.post("/photo-sets/{photo_set_id}/photos", response_model=schemas.Uploaded, **schemas.API)
async def upload_photos(request: Request, photo_set_id: uuid.UUID, files: list[UploadFile] = File(...),
                        c: Ctx = Depends(ctx)):
    if len(files) > c.settings.max_photos:
        raise BadInput("send at most %(max)s files at once", params={"max": c.settings.max_photos})
    result = await add_uploaded_photos(request, c, photo_set_id, files)
    if result.refused and not result.added:  # nothing stored: a client error, with each reason
        reasons = [Message("%(file)s: %(reason)s", r) for r in result.refused[:5]]
        raise Unprocessable("no photo was added (%(reasons)s)", params={"reasons": reasons}, added=[],
                            refused=result.refused)
    return {"added": [ser.photo(p) for p in result.added],
            "refused": i18n.translate_tree(i18n.request_locale(request), result.refused)}


@router.get("/photos/{photo_id}", response_model=schemas.PhotoOut, **schemas.API)
def get_photo(photo_id: uuid.UUID, c: Ctx = Depends(ctx)):
    p = repo.photo(c.db, c.team_id, photo_id)
    if p is None:
        raise NotFound("photo not found")
    return ser.photo(p)


class PhotoIn(BaseModel):
    caption: str | None = Field(None, max_length=1000)


@router.patch("/photos/{photo_id}", response_model=schemas.PhotoOut, **schemas.API)
def update_photo(photo_id: uuid.UUID, body: PhotoIn, c: Ctx = Depends(ctx)):
    """Sets the photo's caption (trained after the trigger words); "" or null removes it."""
    return ser.photo(photosets.set_caption(c.db, c.team_id, photo_id, body.caption))


@router.delete("/photos/{photo_id}", response_model=schemas.Ok, **schemas.API)
def delete_photo(photo_id: uuid.UUID, c: Ctx = Depends(ctx)):
    photosets.delete_photo(c.db, c.storage, c.team_id, photo_id)
    return {"ok": True}


@router.get("/photo-sets/{photo_set_id}/runs", response_model=schemas.Runs, **schemas.API)
def list_runs(photo_set_id: uuid.UUID, c: Ctx = Depends(ctx)):
    photosets.get_photo_set(c.db, c.team_id, photo_set_id)
    return {"runs": [ser.run(r, lang=c.lang) for r in repo.runs(c.db, c.team_id, photo_set_id)]}


@router.post("/photo-sets/{photo_set_id}/runs", status_code=201, response_model=schemas.RunOut, **schemas.API)
def start_run(photo_set_id: uuid.UUID, body: RunIn, c: Ctx = Depends(ctx)):
    run = runs.start_run(c.db, c.queue, c.settings, c.team_id, photo_set_id, preset=body.preset,
                         base_model=body.base_model, expert=body.settings, gallery_size=body.gallery_size)
    return ser.run(run, lang=c.lang)


@router.get("/runs/{run_id}", response_model=schemas.RunOut, **schemas.API)
def get_run(run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    run = runs.get_run(c.db, c.team_id, run_id)
    return ser.run(run, galleries=list(repo.galleries_of_run(c.db, run.id)), lang=c.lang,
                   queue=waiting.queue_spot(c.db, c.team_id, run))


@router.delete("/runs/{run_id}", response_model=schemas.Ok, **schemas.API)
def delete_run(run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    photosets.delete_run(c.db, c.storage, c.team_id, run_id)
    return {"ok": True}


@router.delete("/galleries/{gallery_id}", response_model=schemas.Ok, **schemas.API)
def delete_gallery(gallery_id: uuid.UUID, c: Ctx = Depends(ctx)):
    photosets.delete_gallery(c.db, c.storage, c.team_id, gallery_id)
    return {"ok": True}


@router.post("/runs/{run_id}/cancel", response_model=schemas.RunOut, **schemas.API)
def cancel_run(run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    return ser.run(runs.cancel_run(c.db, c.team_id, run_id), lang=c.lang)


@router.get("/runs/{run_id}/checkpoint", response_model=schemas.CheckpointOut, **schemas.API)
def get_checkpoint(run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    run = runs.get_run(c.db, c.team_id, run_id)
    if run.checkpoint is None:
        raise NotFound("this run has no checkpoint yet")
    return ser.checkpoint(run.checkpoint)


@router.get("/galleries/{gallery_id}", response_model=schemas.GalleryOut, **schemas.API)
def get_gallery(gallery_id: uuid.UUID, review: str | None = None, c: Ctx = Depends(ctx)):
    g = galleries.get_gallery(c.db, c.team_id, gallery_id)
    if review is not None and review not in galleries.REVIEWS:
        raise BadInput("review must be one of: new, approved, rejected")
    out = ser.gallery(g, images=list(repo.images_of_gallery(c.db, g.id, review)), lang=c.lang,
                      queue=waiting.queue_spot(c.db, c.team_id, g))
    out["packs"] = [ser.pack(p, lang=c.lang) for p in repo.packs_of_gallery(c.db, g.id)]
    return out


@router.post("/galleries/{gallery_id}/more", response_model=schemas.GalleryOut, **schemas.API)
def generate_more(gallery_id: uuid.UUID, body: MoreIn, c: Ctx = Depends(ctx)):
    return ser.gallery(galleries.generate_more(c.db, c.queue, c.team_id, gallery_id, body.n,
                                                     c.settings.max_gallery_size), lang=c.lang)


@router.post("/galleries/{gallery_id}/cancel", response_model=schemas.GalleryOut, **schemas.API)
def cancel_gallery(gallery_id: uuid.UUID, c: Ctx = Depends(ctx)):
    return ser.gallery(galleries.cancel_gallery(c.db, c.team_id, gallery_id), lang=c.lang)


@router.post("/images/{image_id}/review", response_model=schemas.ImageOut, **schemas.API)
def review_image(image_id: uuid.UUID, body: ReviewIn, c: Ctx = Depends(ctx)):
    return ser.image(galleries.review_image(c.db, c.team_id, image_id, body.review))


@router.get("/images/{image_id}", response_model=schemas.ImageOut, **schemas.API)
def get_image(image_id: uuid.UUID, c: Ctx = Depends(ctx)):
    i = repo.image(c.db, c.team_id, image_id)
    if i is None:
        raise NotFound("image not found")
    return ser.image(i)


@router.post("/galleries/{gallery_id}/packs", status_code=201, response_model=schemas.PackOut, **schemas.API)
def create_pack(gallery_id: uuid.UUID, body: PackIn, c: Ctx = Depends(ctx)):
    return ser.pack(packs.request_pack(c.db, c.queue, c.team_id, gallery_id, selection=body.selection,
                                       format=body.format, size=body.size, image_ids=body.image_ids,
                                       exclude_near_copies=body.exclude_near_copies, storage=c.storage,
                                       settings=c.settings), lang=c.lang)


@router.get("/packs/{pack_id}", response_model=schemas.PackOut, **schemas.API)
def get_pack(pack_id: uuid.UUID, c: Ctx = Depends(ctx)):
    return ser.pack(packs.get_pack(c.db, c.team_id, pack_id), lang=c.lang)


@router.post("/packs/{pack_id}/cancel", response_model=schemas.PackOut, **schemas.API)
def cancel_pack(pack_id: uuid.UUID, c: Ctx = Depends(ctx)):
    return ser.pack(packs.cancel_pack(c.db, c.team_id, pack_id), lang=c.lang)

"""HTML pages. Form posts carry the session's CSRF token; on bad input they come back to
the page with the reason shown at the top."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from sqlalchemy.orm import Session

from app import i18n
from app import repositories as repo
from app import serializers as ser
from app.basemodels import base_model_choices, describe
from app.deps import Ctx, check_csrf, ctx, get_db
from app.errors import BadInput, Message, NotFound, ServiceError
from app.presets import EXPERT_FIELDS, PRESETS
from app.routes.api import add_uploaded_photos, client_address, known_device, password_work, remember_device
from app.security import csrf_token
from app.setting_labels import SETTING_TEXTS
from app.demo_models import demo_model, run_prompts
from app.imagecheck import colour_photos
from app.services import auth, galleries, packs, photosets, runs, waiting

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent.parent / "templates")


i18n.install(templates.env)


@pass_context
def _preset_label(context, name: str) -> str:
    """A preset's name as the user reads it (a run keeps the preset's key)."""
    preset = PRESETS.get(name)
    return i18n.t(i18n.context_locale(context), preset.label) if preset else name


templates.env.globals["preset_label"] = _preset_label
templates.env.globals["demo_model"] = demo_model


def flash(request: Request, message: str | Message, kind: str = "info") -> None:
    """A note for the next page. A Message is translated here, for this request's language;
    a str is shown as it is (already translated: use i18n.t / i18n.tn)."""
    request.session.setdefault("flash", []).append([kind, i18n.translate(i18n.request_locale(request), message)])


def form_errors(request: Request, exc: ServiceError) -> dict:
    """A form's error for its template: beside the field it names (``field_errors``), or
    at the top of the form (``form_error``) when it is about the whole form."""
    lang = i18n.request_locale(request)
    text = i18n.error_message(lang, exc)
    if exc.extra.get("fields"):  # every field's problem (app.services.photosets._checked_fields)
        return {"field_errors": {k: i18n.translate(lang, m) for k, m in exc.extra["fields"].items()}, "form_error": None}
    field = exc.extra.get("field")
    return {"field_errors": {field: text}, "form_error": None} if field else {"field_errors": {}, "form_error": text}


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    context.setdefault("user", None)
    context["locale"] = i18n.request_locale(request)
    context["csrf_token"] = csrf_token(request.session)
    context["flashes"] = request.session.pop("flash", [])
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def render_error(request: Request, status_code: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status_code=status_code, status=status_code, message=message)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _local_path(url: str) -> bool:
    """A path on this site: browsers read "//host" and "/\\host" as another site."""
    return url.startswith("/") and not url.startswith(("//", "/\\")) and url.isprintable() and "\\" not in url


def act(request: Request, action: Callable[[], str], back: str) -> RedirectResponse:
    """Runs a form action; on bad input shows the reason on the page it came from. A
    missing (or another team's) object stays a 404."""
    try:
        return redirect(action())
    except NotFound:
        raise
    except ServiceError as exc:
        flash(request, Message(exc.msgid, exc.params), "error")
        return redirect(back)


# ----------------------------------------------------------------------------- language
@router.post("/language", dependencies=[Depends(check_csrf)])
def set_language(request: Request, lang: str = Form(""), next: str = Form("/")):
    """The header's language switcher: remembered in a cookie (so it works before sign-in
    too) and preferred over the browser's Accept-Language."""
    chosen = i18n.supported(lang)
    if chosen is None:
        raise BadInput("unknown language %(lang)s", params={"lang": lang[:20]})
    response = redirect(next if _local_path(next) else "/")
    response.set_cookie(i18n.COOKIE, chosen, max_age=i18n.COOKIE_MAX_AGE, samesite="lax",
                        secure=request.app.state.settings.cookie_secure, httponly=True)
    return response


# ------------------------------------------------------------------------- sign up / in
@router.get("/signup")
def signup_page(request: Request):
    return render(request, "signup.html")


@router.post("/signup", dependencies=[Depends(check_csrf)])
async def signup(request: Request, email: str = Form(""), password: str = Form(""), team_name: str = Form(""),
                 db: Session = Depends(get_db)):
    try:
        user = await password_work(request, auth.sign_up, db, email, password, team_name)
    except ServiceError as exc:
        return render(request, "signup.html", status_code=exc.status_code, email=email, **form_errors(request, exc),
                      team_name=team_name)
    request.session.clear()
    request.session["user_id"], request.session["epoch"] = str(user.id), user.session_epoch
    return redirect("/")


@router.get("/login")
def login_page(request: Request):
    return render(request, "login.html")


@router.post("/login", dependencies=[Depends(check_csrf)])
async def login(request: Request, email: str = Form(""), password: str = Form(""), db: Session = Depends(get_db)):
    try:
        user = await password_work(request, auth.sign_in, db, request.app.state.login_limiter, email, password,
                                   client_address(request), known_device(request, email))
    except ServiceError as exc:
        response = render(request, "login.html", status_code=exc.status_code, email=email, **form_errors(request, exc))
        response.headers.update(exc.headers)
        return response
    request.session.clear()
    request.session["user_id"], request.session["epoch"] = str(user.id), user.session_epoch
    response = redirect("/")
    remember_device(request, response, user.email)
    return response


@router.post("/logout")
def logout(request: Request, c: Ctx = Depends(ctx)):
    auth.sign_out(c.db, c.user)
    request.session.clear()
    return redirect("/login")


# ---------------------------------------------------------------------------- photo sets
@router.get("/")
def home(request: Request, c: Ctx = Depends(ctx)):
    return render(request, "home.html", user=c.user, photo_sets=repo.photo_sets(c.db, c.team_id),
                  runs=repo.runs(c.db, c.team_id, limit=20))


@router.post("/photo-sets")
def create_photo_set(request: Request, name: str = Form(""), class_word: str = Form(""), notes: str = Form(""),
                     c: Ctx = Depends(ctx)):
    try:
        ps = photosets.create_photo_set(c.db, c.team_id, name, class_word, notes)
    except ServiceError as exc:  # the form again, with the reason beside the field it is about
        return render(request, "home.html", status_code=exc.status_code, user=c.user,
                      photo_sets=repo.photo_sets(c.db, c.team_id), runs=repo.runs(c.db, c.team_id, limit=20),
                      form={"name": name, "class_word": class_word, "notes": notes}, **form_errors(request, exc))
    return redirect(f"/photo-sets/{ps.id}")


@router.get("/photo-sets/{photo_set_id}")
def photo_set_page(request: Request, photo_set_id: uuid.UUID, c: Ctx = Depends(ctx)):
    ps = photosets.get_photo_set(c.db, c.team_id, photo_set_id)
    photos = sorted(ps.photos, key=lambda p: (p.filename.lower(), p.created_at))  # as chosen, not as uploads finished
    # Only the models a run can adapt are offered; notes and estimates follow the same list.
    choices = [m for m in base_model_choices(c.settings.base_model_list) if m.refused is None]
    models = [m.spec for m in choices]
    grayscale_demo = [m for m in models if demo_model(m) and not demo_model(m).colour]
    return render(request, "photo_set.html", user=c.user, ps=ps, photos=photos,
                  runs=repo.runs(c.db, c.team_id, ps.id), presets=PRESETS, expert_fields=EXPERT_FIELDS,
                  setting_texts=SETTING_TEXTS, base_models=models, settings=c.settings,
                  base_model_choices=choices,
                  colour_photos=colour_photos(c.storage, photos) if grayscale_demo else 0,
                  run_prompts={m.spec: run_prompts(m.spec, m.family, ps.class_word) for m in choices},
                  estimates={m: waiting.preset_estimates(c.db, m, c.settings.gallery_size) for m in models})


@router.post("/photo-sets/{photo_set_id}/delete")
def delete_photo_set(request: Request, photo_set_id: uuid.UUID, c: Ctx = Depends(ctx)):
    def action():
        photosets.delete_photo_set(c.db, c.storage, c.team_id, photo_set_id)
        flash(request, Message("photo set deleted"))
        return "/"

    return act(request, action, f"/photo-sets/{photo_set_id}")


@router.post("/photo-sets/{photo_set_id}/photos")
async def upload_photos(request: Request, photo_set_id: uuid.UUID, files: list[UploadFile] = File(...),
                        c: Ctx = Depends(ctx)):
    """The form upload without JavaScript; the page's drag and drop uses the JSON API."""
    back = f"/photo-sets/{photo_set_id}"
    try:
        result = await add_uploaded_photos(request, c, photo_set_id, files[: c.settings.max_photos + 1])
    except NotFound:
        raise
    except ServiceError as exc:
        flash(request, Message(exc.msgid, exc.params), "error")
        return redirect(back)
    lang = i18n.request_locale(request)
    flash(request, i18n.tn(lang, "%(num)s photo added", "%(num)s photos added", len(result.added)))
    for r in result.refused:
        flash(request, Message("%(file)s: %(reason)s", r), "error")
    return redirect(back)


@router.post("/photos/{photo_id}/delete")
def delete_photo(request: Request, photo_id: uuid.UUID, c: Ctx = Depends(ctx)):
    photo = repo.photo(c.db, c.team_id, photo_id)
    if photo is None:
        raise NotFound("photo not found")
    back = f"/photo-sets/{photo.photo_set_id}"

    def action():
        photosets.delete_photo(c.db, c.storage, c.team_id, photo_id)
        return back

    return act(request, action, back)


@router.post("/photos/{photo_id}/caption")
async def photo_caption(request: Request, photo_id: uuid.UUID, c: Ctx = Depends(ctx)):
    form = await request.form()
    from starlette.concurrency import run_in_threadpool

    photo = repo.photo(c.db, c.team_id, photo_id)
    if photo is None:
        raise NotFound("photo not found")
    back = f"/photo-sets/{photo.photo_set_id}"

    def action():
        photosets.set_caption(c.db, c.team_id, photo_id, str(form.get("caption") or ""))
        return f"{back}#photo-{photo_id}"

    return await run_in_threadpool(act, request, action, back)


@router.post("/photo-sets/{photo_set_id}/runs")
async def start_run(request: Request, photo_set_id: uuid.UUID, c: Ctx = Depends(ctx)):
    form = await request.form()
    expert = {name: form.get(f"x_{name}") for name in EXPERT_FIELDS}
    from starlette.concurrency import run_in_threadpool

    def action():
        run = runs.start_run(c.db, c.queue, c.settings, c.team_id, photo_set_id, preset=str(form.get("preset", "quick")),
                             base_model=form.get("base_model") or None, expert=expert,
                             gallery_size=form.get("gallery_size") or None)
        return f"/runs/{run.id}"

    return await run_in_threadpool(act, request, action, f"/photo-sets/{photo_set_id}")


# --------------------------------------------------------------------------------- runs
@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    run = runs.get_run(c.db, c.team_id, run_id)
    prompts = run_prompts(run.base_model, describe(run.base_model).family, run.photo_set.class_word, run.settings)
    return render(request, "run.html", user=c.user, run=run, galleries=repo.galleries_of_run(c.db, run.id),
                  preview_prompt=prompts[0] if prompts else None,
                  setting_texts=SETTING_TEXTS, run_seconds=runs.run_seconds(run),
                  checkpoint_downloads=ser.checkpoint_downloads(run.checkpoint) if run.checkpoint else [],
                  queue=waiting.queue_spot(c.db, c.team_id, run))


@router.post("/runs/{run_id}/cancel")
def cancel_run(request: Request, run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    return act(request, lambda: f"/runs/{runs.cancel_run(c.db, c.team_id, run_id).id}", f"/runs/{run_id}")


# ---------------------------------------------------------------------------- galleries
@router.post("/galleries/{gallery_id}/more")
def generate_more(request: Request, gallery_id: uuid.UUID, n: str = Form("8"), c: Ctx = Depends(ctx)):
    back = f"/galleries/{gallery_id}"
    limit = c.settings.max_gallery_size
    return act(request, lambda: galleries.generate_more(c.db, c.queue, c.team_id, gallery_id, n, limit) and back, back)


@router.post("/runs/{run_id}/delete")
def delete_run(request: Request, run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    run = runs.get_run(c.db, c.team_id, run_id)
    back = f"/photo-sets/{run.photo_set_id}"

    def action():
        photosets.delete_run(c.db, c.storage, c.team_id, run_id)
        flash(request, Message("run deleted"))
        return back

    return act(request, action, f"/runs/{run_id}")


@router.post("/galleries/{gallery_id}/delete")
def delete_gallery(request: Request, gallery_id: uuid.UUID, c: Ctx = Depends(ctx)):
    g = galleries.get_gallery(c.db, c.team_id, gallery_id)
    back = f"/runs/{g.run_id}"

    def action():
        photosets.delete_gallery(c.db, c.storage, c.team_id, gallery_id)
        flash(request, Message("gallery deleted"))
        return back

    return act(request, action, f"/galleries/{gallery_id}")


@router.post("/galleries/{gallery_id}/cancel")
def cancel_gallery(request: Request, gallery_id: uuid.UUID, c: Ctx = Depends(ctx)):
    back = f"/galleries/{gallery_id}"
    return act(request, lambda: galleries.cancel_gallery(c.db, c.team_id, gallery_id) and back, back)


@router.post("/packs/{pack_id}/cancel")
def cancel_pack(request: Request, pack_id: uuid.UUID, c: Ctx = Depends(ctx)):
    pack = packs.cancel_pack(c.db, c.team_id, pack_id)
    return redirect(f"/galleries/{pack.gallery_id}#packs")


@router.post("/images/{image_id}/review")
def review_image(request: Request, image_id: uuid.UUID, review: str = Form(""), next: str = Form(""),
                 c: Ctx = Depends(ctx)):
    def action():
        image = galleries.review_image(c.db, c.team_id, image_id, review)
        # only local paths: never redirect off-site
        return next if _local_path(next) else f"/galleries/{image.gallery_id}"

    return act(request, action, "/")

"""The FastAPI application factory."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.middleware.sessions import SessionMiddleware

from app import i18n, logs, schemas
from app.basemodels import log_refused
from app.db import make_engine, make_sessionmaker
from app.handlers import add_exception_handlers
from app.imagecheck import DecodeBudget, return_freed_images_to_the_os
from app.jobs import JobQueue, make_celery
from app.ratelimit import BodyLimitMiddleware, HeaderLimitMiddleware, LoginLimiter, MemoryCounts, RedisCounts
from app.settings import Settings, get_settings
from app.storage import make_storage

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("domainstudio.app")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
# the interactive API docs (/docs, /redoc) run Swagger UI / ReDoc from the files the
# fastapi-offline package installs (no CDN: they work offline) and start them with an inline
# script; only those pages, which show no user content, may do that
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; worker-src blob:; frame-ancestors 'none'; form-action 'self'; "
            "base-uri 'none'")
DOCS_ASSETS = "/static/apidocs"


def login_counts(settings: Settings) -> MemoryCounts | RedisCounts:
    """Sign-in failures in Redis when the broker is Redis (all api replicas count
    together; keys named after the deployment's queue), else in this process."""
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        return RedisCounts(url, f"domainstudio:login:{settings.queue_gpu}:")
    return MemoryCounts()


def create_app(settings: Settings | None = None, celery_app=None, workers=None) -> FastAPI:
    """``workers``: the embedded default's WorkerSupervisor (app/embedded.py), whose
    missing workers /health reports."""
    settings = settings or get_settings()
    logs.setup(settings.log_level)
    engine = make_engine(settings.resolved_database_url)
    if celery_app is None:
        celery_app = make_celery(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.dispose()

    app = FastAPI(title="DomainStudio", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Turn 10-100 product photos into hundreds of on-brand images.")
    app.state.settings = settings
    log_refused(settings.base_model_list)
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.storage = make_storage(settings)
    app.state.queue = JobQueue(celery_app)
    app.state.decode_budget = DecodeBudget(settings.max_decode_pixels)
    return_freed_images_to_the_os()

    app.add_middleware(
        SessionMiddleware, secret_key=settings.resolved_secret_key, session_cookie="domainstudio_session",
        max_age=settings.session_max_age, same_site="lax", https_only=settings.cookie_secure,
    )

    # inside the security headers, so that a 413 carries them too
    app.add_middleware(BodyLimitMiddleware, upload_limit=settings.max_request_bytes)
    app.state.login_limiter = LoginLimiter(settings.login_max_failures, settings.login_window_seconds,
                                           settings.login_max_delay_seconds, login_counts(settings))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        # the language for this request: the switcher's cookie, else Accept-Language
        request.state.locale = i18n.pick_locale(request.cookies, request.headers.get("accept-language"))
        response = await call_next(request)
        response.headers.setdefault("Content-Language", request.state.locale)
        if "vary" not in response.headers:  # caches must not hand one language's page to another
            response.headers["Vary"] = "Accept-Language, Cookie"
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path in ("/docs", "/redoc"):
            response.headers["Content-Security-Policy"] = DOCS_CSP
        return response

    # outermost: absurd headers are refused before any middleware reads them
    app.add_middleware(HeaderLimitMiddleware, per_header=settings.max_header_bytes,
                       total=settings.max_headers_bytes, headers=SECURITY_HEADERS)

    add_exception_handlers(app)

    # the route answers its JSONResponse itself (503 when a check fails): the model is for /docs
    @app.get("/health", tags=["health"], response_model=schemas.Health,
             responses={503: {"model": schemas.Health, "description": "a check failed"}})
    def health():
        checks = {}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # report, don't crash: this is what the endpoint is for
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            app.state.queue.ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {type(exc).__name__}"
        try:
            app.state.storage.ping()
            checks["storage"] = "ok"
        except Exception as exc:
            checks["storage"] = f"error: {type(exc).__name__}"
        if workers is not None:  # the embedded default supervises its workers; compose restarts its own
            missing = workers.missing()
            checks["workers"] = f"missing: {', '.join(missing)}" if missing else "ok"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    from app.routes import api, files, live, pages, review
    from app.runwatch import RunWatch, StreamSlots

    app.state.run_watch = RunWatch(app.state.sessionmaker, live.poll_seconds)
    app.state.stream_slots = StreamSlots(settings.max_event_streams_per_user, settings.max_event_streams)

    app.include_router(api.router)
    app.include_router(files.router)
    app.include_router(pages.router)
    app.include_router(review.pages)  # the gallery page, its review and its packs
    app.include_router(review.api)
    app.include_router(live.router)
    add_api_docs(app)
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    return app


def add_api_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc) with their scripts served from the installed
    fastapi-offline package, so the pages work without internet access."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = Path(str(files("fastapi_offline") / "static"))

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                              redoc_js_url="/apidocs/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)

    # ReDoc's bundle shows Redocly's logo from their CDN, whatever its options say: served
    # with the installed favicon in its place, so the page asks no outside host
    redoc_js = (assets / "redoc.standalone.js").read_bytes().replace(
        b"https://cdn.redoc.ly/redoc/logo-mini.svg", f"{DOCS_ASSETS}/favicon.png".encode())

    @app.get("/apidocs/redoc.standalone.js", include_in_schema=False)
    def redoc_script():
        return Response(redoc_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="apidocs")

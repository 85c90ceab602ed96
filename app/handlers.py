"""How an error becomes an answer: JSON ``{"detail": ...}`` in the reader's language for the API
(and any client that asks for JSON), an error page for a browser. One handler per kind of
error; ``add_exception_handlers`` registers them on the app."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import i18n
from app.deps import CSRFFailed, LoginRequired
from app.errors import ServiceError
from app.routes.pages import render_error

log = logging.getLogger("domainstudio.app")


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


async def service_error(request: Request, exc: ServiceError):
    lang = i18n.request_locale(request)
    message = i18n.error_message(lang, exc)
    if wants_json(request):
        response = JSONResponse({"detail": message, **i18n.translate_tree(lang, exc.extra)},
                                status_code=exc.status_code)
    else:
        response = render_error(request, exc.status_code, message)
    response.headers.update(exc.headers)
    return response


async def http_error(request: Request, exc: StarletteHTTPException):
    """Starlette's own answers (no such page, a method a page does not take): a page
    for a browser that asks for HTML, FastAPI's usual JSON for everyone else."""
    if "text/html" not in request.headers.get("accept", "") or request.url.path.startswith(("/api/", "/static/")):
        return await http_exception_handler(request, exc)
    lang = i18n.request_locale(request)
    msg = i18n.t(lang, "this page does not exist; check the address") if exc.status_code == 404 \
        else i18n.t(lang, "this page cannot answer that request (HTTP %(status)s)", status=exc.status_code)
    response = render_error(request, exc.status_code, msg)
    response.headers.update(exc.headers or {})
    return response


async def database_down(request: Request, exc: OperationalError):
    log.error("db.unavailable", extra={"error": str(exc.orig)[:200]})
    msg = i18n.t(i18n.request_locale(request), "the database is unreachable; try again in a minute")
    if wants_json(request):
        return JSONResponse({"detail": msg}, status_code=503)
    return render_error(request, 503, msg)


async def login_required(request: Request, exc: LoginRequired):
    if wants_json(request):
        return JSONResponse({"detail": i18n.t(i18n.request_locale(request), "sign in first")},
                            status_code=401)
    return RedirectResponse("/login", status_code=303)  # also for a form posted after the session expired


async def csrf_failed(request: Request, exc: CSRFFailed):
    msg = i18n.t(i18n.request_locale(request),
                 "missing or invalid CSRF token; reload the page and try again")
    if wants_json(request):
        return JSONResponse({"detail": msg}, status_code=403)
    return render_error(request, 403, msg)


async def validation_error(request: Request, exc: RequestValidationError):
    reasons = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        reasons.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    # pydantic's reasons stay in English: they name fields for developers
    msg = "; ".join(reasons) or i18n.t(i18n.request_locale(request), "invalid request")
    if wants_json(request):
        return JSONResponse({"detail": msg, "errors": [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()]},
                            status_code=422)
    return render_error(request, 422, msg)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OperationalError, database_down)
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(CSRFFailed, csrf_failed)
    app.add_exception_handler(RequestValidationError, validation_error)

"""A run's live progress as server-sent events, and its report (a page and JSON).

The event stream polls the run's row about once a second (sessions are sync SQLAlchemy,
so each poll runs in the threadpool and the event loop stays free for other requests)
and sends an event only when something changed. Each event carries the run as
``GET /api/runs/{id}`` has it plus the loss-chart points the client has not seen yet; the
event id is the step of the last point sent, so a reconnecting EventSource (which sends
it back as Last-Event-ID) gets only newer points. The stream ends when the run is
finished, when the client goes away, when the server is stopping (``stop_streams``:
uvicorn waits for open responses before it stops) and after STREAM_SECONDS in any case;
the browser then reconnects by itself, so no connection is held forever.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app import i18n
from app import repositories as repo
from app import serializers as ser
from app.db import close_session, session_scope
from app.deps import Ctx, ctx
from app.routes.pages import render
from app.services import runs, waiting

router = APIRouter(tags=["runs"])
log = logging.getLogger("domainstudio.live")

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 15.0  # a comment line, so that proxies and browsers keep the connection open
STREAM_SECONDS = 300.0
RETRY_MS = 2000  # how long the browser waits before it reconnects
_stopping = threading.Event()


def stop_streams() -> None:
    """Ends every open event stream within a poll, without the ``end`` event, so that the
    browsers reconnect to the server that comes next. The server calls it when it is told
    to stop (see app/embedded.py): uvicorn would otherwise wait for the streams to end."""
    _stopping.set()


def _event(name: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _snapshot(sessions: sessionmaker[Session], team_id, run_id, lang: str) -> tuple[dict, list[dict]] | None:
    """The run as the API shows it (its error in ``lang``), and its loss history; None
    once the run is deleted."""
    with session_scope(sessions) as db:
        run = repo.run(db, team_id, run_id)
        if run is None:
            return None
        return ser.run(run, lang=lang, queue=waiting.queue_spot(db, team_id, run)), list(run.loss_history or [])


def _seen_step(request: Request, after: int) -> int:
    """The step of the last loss point the client has: Last-Event-ID on a reconnect,
    else the ``after`` the page put in the URL (the points it rendered)."""
    raw = request.headers.get("last-event-id", "")
    return int(raw) if raw.lstrip("-").isdigit() else after


async def _run_events(sessions: sessionmaker[Session], team_id, run_id, seen: int, lang: str) -> AsyncIterator[str]:
    started = last_write = time.monotonic()
    sent = None
    reason = "ended"
    yield f"retry: {RETRY_MS}\n\n"
    try:
        while True:
            try:
                snap = await run_in_threadpool(_snapshot, sessions, team_id, run_id, lang)
            except SQLAlchemyError as exc:  # the database is unreachable: the browser asks again in RETRY_MS
                reason = f"database error: {type(exc).__name__}"
                return
            if snap is None:
                reason = "deleted"
                yield _event("end", {"status": "deleted"})
                return
            body, history = snap
            new = [p for p in history if p["step"] > seen]
            state = json.dumps(body, sort_keys=True)
            if new or state != sent:
                seen, sent, last_write = (new[-1]["step"] if new else seen), state, time.monotonic()
                yield _event("run", {**body, "history": new}, seen)
            if body["status"] in runs.TERMINAL:
                reason = body["status"]
                yield _event("end", {"status": body["status"]})
                return
            if time.monotonic() - started >= STREAM_SECONDS or _stopping.is_set():
                reason = "server stopping" if _stopping.is_set() else "lifetime"
                return
            if time.monotonic() - last_write >= HEARTBEAT_SECONDS:
                last_write = time.monotonic()
                yield ": heartbeat\n\n"
            await asyncio.sleep(POLL_SECONDS)
    except (asyncio.CancelledError, GeneratorExit):  # Starlette cancels the stream when the client goes
        reason = "disconnected"
        raise
    except Exception as exc:
        reason = f"error: {type(exc).__name__}"
        log.exception("run.events.failed", extra={"run": str(run_id)})
        raise
    finally:
        log.info("run.events.closed", extra={"run": str(run_id), "reason": reason,
                                             "seconds": round(time.monotonic() - started, 1)})


class EventStream(StreamingResponse):
    """A StreamingResponse that closes its generator when it stops. Starlette abandons the
    body iterator when the client goes away while a chunk is being sent (the send is
    cancelled, the generator stays suspended at its ``yield``): its cleanup and its
    "closed" log line would wait for garbage collection or the server's shutdown."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # we may be here because of a cancellation
                await self.body_iterator.aclose()


@router.get("/api/runs/{run_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
def run_events(run_id: uuid.UUID, request: Request, after: int = -1, c: Ctx = Depends(ctx)) -> StreamingResponse:
    """Server-sent events: ``run`` (the run, with the new loss points as ``history``) when
    it changes, ``end`` when it is finished; heartbeat comments in between."""
    run = runs.get_run(c.db, c.team_id, run_id)  # another team's run is a 404, as everywhere
    close_session(c.db)  # the stream opens its own short sessions: don't hold a connection for its lifetime
    stream = _run_events(request.app.state.sessionmaker, c.team_id, run.id, _seen_step(request, after), c.lang)
    return EventStream(stream, media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/api/runs/{run_id}/report")
def run_report_json(run_id: uuid.UUID, c: Ctx = Depends(ctx)) -> dict:
    """Settings with readable names, loss curves, gallery diversity and stage times."""
    return ser.run_report(*runs.run_report(c.db, c.team_id, run_id), lang=c.lang)


@router.get("/runs/{run_id}/report", include_in_schema=False)
def run_report_page(request: Request, run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    run, galleries = runs.run_report(c.db, c.team_id, run_id)
    lang = i18n.request_locale(request)
    # the copy guard's built-in feature networks have names in each language (as on the gallery page)
    return render(request, "run_report.html", user=c.user, run=run, report=ser.run_report(run, galleries, lang=c.lang),
                  network_name=lambda name: i18n.t(lang, name))

"""A run's live progress as server-sent events, and its report (a page and JSON).

The event stream is woken by the process's one poller (app/runwatch.py: one SELECT of
every watched run about once a second, in the threadpool) and sends an event only when
something changed; open streams are capped per user and per process (429 above). Each event carries the run as
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
from starlette.concurrency import run_in_threadpool

from app import i18n
from app import schemas
from app import serializers as ser
from app.db import session_scope
from app.deps import Ctx, ctx, current_user
from app.errors import BadInput
from app.models import TERMINAL
from app.routes.pages import render
from app.runwatch import RunWatch, StreamSlot
from app.services import runs

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


MAX_EVENT_ID_DIGITS = 18  # an event id is a training step: anything longer did not come from us


def _seen_step(request: Request, after: int) -> int:
    """The step of the last loss point the client has: Last-Event-ID on a reconnect,
    else the ``after`` the page put in the URL (the points it rendered)."""
    raw = request.headers.get("last-event-id", "").strip()
    if not raw:
        return after
    if len(raw.lstrip("-")) > MAX_EVENT_ID_DIGITS or not raw.lstrip("-").isdigit():
        raise BadInput("Last-Event-ID must be the id of an event this stream sent (a step number)")
    return int(raw)


def poll_seconds() -> float:
    return POLL_SECONDS


async def _run_events(watch: RunWatch, slot: StreamSlot, run_id, seen: int, lang: str) -> AsyncIterator[str]:
    """The stream of one run: it waits on the process's one poller (app/runwatch.py), so it
    holds no database connection and no thread while it waits."""
    started = last_write = time.monotonic()
    sent = None
    reason = "ended"
    generation = watch.watch(run_id)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        while True:
            generation = await watch.after(generation, run_id)
            if watch.error:  # the database is unreachable: the browser asks again in RETRY_MS
                reason = watch.error
                return
            view = watch.view(run_id, lang)
            if view is None:
                reason = "deleted"
                yield _event("end", {"status": "deleted"})
                return
            body, state, history = view
            new = [p for p in history if p["step"] > seen]
            if new or state != sent:
                seen, sent, last_write = (new[-1]["step"] if new else seen), state, time.monotonic()
                yield _event("run", {**body, "history": new}, seen)
            if body["status"] in TERMINAL:
                reason = body["status"]
                yield _event("end", {"status": body["status"]})
                return
            if time.monotonic() - started >= STREAM_SECONDS or _stopping.is_set():
                reason = "server stopping" if _stopping.is_set() else "lifetime"
                return
            if time.monotonic() - last_write >= HEARTBEAT_SECONDS:
                last_write = time.monotonic()
                yield ": heartbeat\n\n"
    except (asyncio.CancelledError, GeneratorExit):  # Starlette cancels the stream when the client goes
        reason = "disconnected"
        raise
    except Exception as exc:
        reason = f"error: {type(exc).__name__}"
        log.exception("run.events.failed", extra={"run": str(run_id)})
        raise
    finally:
        watch.unwatch(run_id)
        slot.release()
        log.info("run.events.closed", extra={"run": str(run_id), "reason": reason,
                                             "seconds": round(time.monotonic() - started, 1)})


class EventStream(StreamingResponse):
    """A StreamingResponse that closes its generator when it stops. Starlette abandons the
    body iterator when the client goes away while a chunk is being sent (the send is
    cancelled, the generator stays suspended at its ``yield``): its cleanup and its
    "closed" log line would wait for garbage collection or the server's shutdown. It gives
    the stream's slot back even when the generator never started."""

    def __init__(self, content, slot: StreamSlot, **kwargs):
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # we may be here because of a cancellation
                await self.body_iterator.aclose()


def _stream_owner(request: Request, run_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """The signed-in user's id and the run's id, in one session used on one thread: a burst
    of stream requests then never holds pooled connections while it waits for a thread
    (with the usual dependencies each request held one from the user's lookup to the
    route, and hundreds of them waited on each other until the pool timed out)."""
    with session_scope(request.app.state.sessionmaker) as db:
        user = current_user(request, db)
        return user.id, runs.get_run(db, user.team_id, run_id).id  # another team's run is a 404, as everywhere


@router.get("/api/runs/{run_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def run_events(run_id: uuid.UUID, request: Request, after: int = -1) -> StreamingResponse:
    """Server-sent events: ``run`` (the run, with the new loss points as ``history``) when
    it changes, ``end`` when it is finished; heartbeat comments in between."""
    seen = _seen_step(request, after)
    user_id, run_id = await run_in_threadpool(_stream_owner, request, run_id)
    slot = request.app.state.stream_slots.take(user_id)  # 429 over the caps
    stream = _run_events(request.app.state.run_watch, slot, run_id, seen, i18n.request_locale(request))
    return EventStream(stream, slot, media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/api/runs/{run_id}/report", response_model=schemas.RunReport, **schemas.API)
def run_report_json(run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    """Settings with readable names, loss curves, gallery diversity and stage times."""
    return ser.run_report(*runs.run_report(c.db, c.team_id, run_id), lang=c.lang)


@router.get("/runs/{run_id}/report", include_in_schema=False)
def run_report_page(request: Request, run_id: uuid.UUID, c: Ctx = Depends(ctx)):
    run, galleries = runs.run_report(c.db, c.team_id, run_id)
    lang = i18n.request_locale(request)
    # the copy guard's built-in feature networks have names in each language (as on the gallery page)
    return render(request, "run_report.html", user=c.user, run=run, report=ser.run_report(run, galleries, lang=c.lang),
                  network_name=lambda name: i18n.t(lang, name))

"""What the runs' event streams wait on: one poller per process and caps on open streams.

Each open stream used to poll its run's row once a second in the threadpool, with a
session of its own: ~100 streams kept the connection pool (5 + 10 on the embedded
default) and the threadpool busy, and every other request waited for a connection until
it timed out. Now one poller reads every watched run in one SELECT per period, holding a
connection only for that query, and wakes the streams; a stream holds no connection and no
thread while it waits, so its cost does not grow with the number of streams. The number
of open streams is capped per user and per process (``max_event_streams_per_user``,
``max_event_streams``): one more is a 429 with the reason.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app import repositories as repo
from app import serializers as ser
from app.db import session_scope
from app.errors import TooManyRequests
from app.models import JobStatus, Run
from app.services import waiting
from app.services.waiting import QueueSpot

log = logging.getLogger("domainstudio.live")
RETRY_AFTER_SECONDS = 30  # a browser that was refused a stream tries again after this


class StreamSlot:
    """One open stream's place in the count; released once, however often asked."""

    def __init__(self, slots: "StreamSlots", user_id: uuid.UUID):
        self._slots, self.user_id, self._held = slots, user_id, True

    def release(self) -> None:
        with self._slots.lock:
            if self._held:
                self._held = False
                self._slots.release_locked(self.user_id)


class StreamSlots:
    """Open event streams, per user and in all, within their caps (thread-safe: routes take
    slots in the threadpool, streams release them on the event loop)."""

    def __init__(self, per_user: int, total: int):
        self.per_user, self.total = per_user, total
        self.lock = threading.Lock()
        self.open = 0
        self.by_user: dict[uuid.UUID, int] = {}

    def take(self, user_id: uuid.UUID) -> StreamSlot:
        with self.lock:
            if self.by_user.get(user_id, 0) >= self.per_user:
                raise TooManyRequests(
                    "you have %(count)s live progress streams open, the most one user may have; "
                    "close other run pages and try again", params={"count": self.per_user},
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            if self.open >= self.total:
                raise TooManyRequests("the server has as many live progress streams open as it serves; "
                                      "try again in a minute", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            self.open += 1
            self.by_user[user_id] = self.by_user.get(user_id, 0) + 1
        return StreamSlot(self, user_id)

    def release_locked(self, user_id: uuid.UUID) -> None:
        self.open -= 1
        left = self.by_user.get(user_id, 1) - 1
        if left > 0:
            self.by_user[user_id] = left
        else:
            self.by_user.pop(user_id, None)


def fetch_runs(sessions: sessionmaker[Session], run_ids: list[uuid.UUID]) -> tuple[dict[uuid.UUID, Run],
                                                                                   dict[uuid.UUID, QueueSpot]]:
    """The watched runs, in one short session (runs deleted since are missing), and where
    each queued one stands in the queue (its page reloads when that changes)."""
    with session_scope(sessions) as db:
        runs = {run.id: run for run in repo.runs_by_ids(db, run_ids)}
        spots = {run.id: waiting.queue_spot(db, run.team_id, run) for run in runs.values() if run.status == JobStatus.QUEUED}
        return runs, spots


class RunWatch:
    """Polls the watched runs every ``poll_seconds()`` while at least one stream watches,
    and wakes every stream after each poll. ``generation`` counts the polls; ``rows`` holds
    the last one's runs (detached, read-only), ``error`` its database error if it failed."""

    def __init__(self, sessions: sessionmaker[Session], poll_seconds: Callable[[], float]):
        self.sessions, self.poll_seconds = sessions, poll_seconds
        self.watchers: dict[uuid.UUID, int] = {}
        self.rows: dict[uuid.UUID, Run] = {}
        self.spots: dict[uuid.UUID, QueueSpot] = {}  # the last poll's queued runs' places in the queue
        self.fetched: set[uuid.UUID] = set()  # ids the last poll asked for
        self.error: str | None = None
        self.generation = 0
        self._views: dict[tuple[uuid.UUID, str], tuple[dict, str, list] | None] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._polled: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None

    def watch(self, run_id: uuid.UUID) -> int:
        """Called on the event loop by a stream as it starts; the stream's first event
        comes from a poll newer than the generation this returns."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._polled, self._wake = loop, asyncio.Event(), asyncio.Event()
            self._task = loop.create_task(self._poll())
        if run_id not in self.watchers:
            self._wake.set()  # a run nobody watched yet: poll now, so its first event comes at once
        self.watchers[run_id] = self.watchers.get(run_id, 0) + 1
        return self.generation

    def unwatch(self, run_id: uuid.UUID) -> None:
        left = self.watchers.get(run_id, 1) - 1
        if left > 0:
            self.watchers[run_id] = left
        else:
            self.watchers.pop(run_id, None)

    async def after(self, generation: int, run_id: uuid.UUID) -> int:
        """Waits for a poll newer than ``generation`` that asked for ``run_id``."""
        while self.generation <= generation or run_id not in self.fetched:
            await self._polled.wait()
        return self.generation

    def view(self, run_id: uuid.UUID, lang: str) -> tuple[dict, str, list] | None:
        """The run as ``GET /api/runs/{id}`` shows it in ``lang``, that as sorted JSON text
        (to tell a change) and its loss history, as of the last poll; None once deleted.
        Worked out once per poll and language, however many streams watch the run."""
        key = (run_id, lang)
        if key not in self._views:
            run = self.rows.get(run_id)
            body = ser.run(run, lang=lang, queue=self.spots.get(run_id)) if run is not None else None
            self._views[key] = None if body is None else \
                (body, json.dumps(body, sort_keys=True), list(run.loss_history or []))
        return self._views[key]

    async def _poll(self) -> None:
        while self.watchers:
            self._wake.clear()
            ids = list(self.watchers)
            try:
                rows, spots = await run_in_threadpool(fetch_runs, self.sessions, ids)
                self.rows, self.spots, self.error = rows, spots, None
            except SQLAlchemyError as exc:  # each stream ends; the browsers ask again in their retry time
                self.rows, self.spots, self.error = {}, {}, f"database error: {type(exc).__name__}"
            except Exception as exc:  # never leave the streams waiting for a poller that died
                log.exception("run.watch.poll_failed")
                self.rows, self.spots, self.error = {}, {}, f"error: {type(exc).__name__}"
            self.fetched, self._views = set(ids), {}
            self.generation += 1
            polled, self._polled = self._polled, asyncio.Event()
            polled.set()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds())
            except asyncio.TimeoutError:
                pass

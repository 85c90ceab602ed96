"""Leases on jobs, and retries after the object store failed for a moment.

A delivery works on a job only after claiming it: a queued job, or a running one whose
worker stopped sending heartbeats (it died). The claim bumps ``attempts`` in one UPDATE,
so two deliveries of the same job (a redelivered message, a re-queue by the watchdog)
never work on it at once, and a worker that lost its claim stops.
"""
from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
from datetime import datetime, timedelta
from pathlib import Path

from app import repositories as repo
from app.db import utcnow as _now
from app.errors import Message, error_values
from app.models import JobStatus
from app.settings import get_settings
from app.storage import StorageError
from worker.tasks.env import Env

log = logging.getLogger("domainstudio.worker")


class Superseded(Exception):
    """Another delivery claimed the job (this worker was taken for dead)."""


def stale_before(e: Env) -> datetime:
    """A running job whose last heartbeat is older than this was abandoned: its worker died."""
    return _now() - timedelta(seconds=e.settings.job_stale_seconds)


def _machine() -> str:
    """This host and PID namespace: two containers may share a hostname (host networking),
    never a PID namespace, so a process id is only checked where it means the same."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def worker_id() -> str:
    return f"{_machine()}:{os.getpid()}"


def holder_died(holder: str | None) -> bool:
    """True when the job's worker process ran on this machine and is gone (a prefork child
    killed by the OOM killer, a worker restarted here): no need to wait for its heartbeat
    to go stale."""
    host, _, pid = (holder or "").rpartition(":")
    if host != _machine() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie not yet reaped by its parent is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def claim(e: Env, model, obj_id) -> int | None:
    """The attempt number this delivery now holds, or None when the job is done, canceled
    or held by a live worker."""
    with e.sessions() as db:
        row = repo.job_lease(db, model, obj_id)
        if row is None:
            return None
        attempts, status, holder = row
        dead_holder = holder if status == JobStatus.RUNNING and holder_died(holder) else None
        done = repo.claim_job(db, model, obj_id, attempts, stale_before=stale_before(e), dead_holder=dead_holder,
                              worker=worker_id(), at=_now())
        db.commit()
    if not done:
        log.info("job.claim.skipped", extra={"job": model.__tablename__, "id": str(obj_id)})
        return None
    return attempts + 1


class Heartbeat:
    """Marks the job alive every job_heartbeat_seconds from a thread, while the task runs
    (a long training step or sampling batch holds no Python lock the thread needs)."""

    def __init__(self, e: Env, model, obj_id, attempt: int):
        self.e, self.model, self.obj_id, self.attempt = e, model, obj_id, attempt
        self.superseded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{obj_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        m = self.model
        while not self._stop.wait(self.e.settings.job_heartbeat_seconds):
            try:
                with self.e.sessions() as db:
                    mine = repo.update_held_job(db, m, self.obj_id, self.attempt, heartbeat_at=_now())
                    db.commit()
                if not mine:
                    self.superseded = True
                    log.warning("job.superseded", extra={"job": m.__tablename__, "id": str(self.obj_id)})
                    return
            except Exception as exc:  # the database is down: try again on the next beat
                log.warning("job.heartbeat.failed", extra={"id": str(self.obj_id), "error": str(exc)[:200]})

    def check(self) -> None:
        if self.superseded:
            raise Superseded()


# -------------------------------------------------------------- transient storage errors
# An object store that fails for a moment (a restart, a network blip) used to fail the
# whole job. Jobs are idempotent and resume where they stopped (a run from its training
# state, a gallery from its missing seeds, a pack from the start), so the job goes back to
# the queue and its task is sent again after storage_retry_seconds, doubling, up to
# storage_retries times; only then does it fail with the store's error.
_retries_left: contextvars.ContextVar[int] = contextvars.ContextVar("storage_retries_left", default=0)


class RetryLater(Exception):
    """The job was put back in the queue; the task sends itself again after a delay."""


def retry_delay(retries: int) -> float:
    return min(get_settings().storage_retry_seconds * 2 ** retries, 600)


def retry_or_fail(e: Env, model, obj_id, heartbeat: Heartbeat, exc: StorageError) -> None:
    """Puts the job back in the queue (raising RetryLater) while retries are left; returns
    when none are (the caller fails the job). ``sent_at`` becomes the time the retry is
    due, so that the watchdog sends the job again should the retry's message be lost."""
    if _retries_left.get() <= 0 or heartbeat.superseded:
        return
    message = Message("the object store failed (%(detail)s); trying again shortly", {"detail": str(exc)[:300]})
    due = _now() + timedelta(seconds=retry_delay(e.settings.storage_retries - _retries_left.get()))
    with e.sessions() as db:
        mine = repo.update_held_job(db, model, obj_id, heartbeat.attempt, status=JobStatus.QUEUED, heartbeat_at=None,
                                    worker=None, sent_at=due, **error_values(message))
        db.commit()
    if mine:
        log.warning("job.retry_later", extra={"job": model.__tablename__, "id": str(obj_id), "error": str(exc)[:200]})
        raise RetryLater()


def with_storage_retries(task, run):
    """Runs a job with the retries its task has left; a RetryLater sends the task again."""
    settings = get_settings()
    token = _retries_left.set(settings.storage_retries - task.request.retries)
    try:
        return run()
    except RetryLater:
        raise task.retry(countdown=retry_delay(task.request.retries), max_retries=settings.storage_retries) from None
    finally:
        _retries_left.reset(token)



"""The watchdog: every worker runs one, a thread beside its tasks.

Redis hands an unacknowledged message to another worker only after its visibility
timeout (hours: longer than a run may last), and loses every queued message when it
restarts without persistence. Every worker therefore runs a watchdog thread that, every
watchdog_seconds (and once when the worker starts):
- re-queues running jobs whose heartbeat is older than job_stale_seconds: their worker
  died (SIGKILL, OOM, power). The re-queue is a compare-and-set on the row, so of all
  watchdogs exactly one sends the job again; the claim keeps it to one worker;
- sends again every queued job when the broker lost its data: a marker key that lives
  in Redis next to the queues is gone (Redis restarted empty). A job sent twice runs once;
- sends the jobs whose send never happened, and deletes the objects whose deletion failed.
"""
from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import signals

from app import repositories as repo
from app.db import utcnow
from app.errors import Message, error_values
from app.jobs import JOBS
from app.models import JobStatus
from app.storage import StorageError
from worker.tasks.env import Env, env
from worker.tasks.leases import holder_died, stale_before

log = logging.getLogger("domainstudio.worker")


def _given_up(model, failures: int) -> dict:
    """The values of a job failed because its workers kept dying on it."""
    values = {"status": JobStatus.FAILED, "heartbeat_at": None,
              **error_values(Message("the worker stopped %(n)s times while working on this (killed, or out of "
                                     "memory); it was given up: try again with smaller settings", {"n": failures}))}
    if hasattr(model, "finished_at"):
        values["finished_at"] = utcnow()
    return values


def recover_orphans(e: Env) -> int:
    """Re-queues the jobs of dead workers and of a broker that lost its queues; returns
    how many jobs were sent again."""
    sent = 0
    lost = _broker_lost(e)
    for model, task in JOBS:
        with e.sessions() as db:
            # (id, attempts, failures, how it was found): a stale heartbeat, or its worker process gone
            stale = stale_before(e)
            orphans = [(*job, {"stale_before": stale}) for job in repo.stale_jobs(db, model, stale)]
            orphans += [(obj_id, attempts, failures, {"holder": holder})
                        for obj_id, attempts, failures, holder in repo.running_jobs(db, model) if holder_died(holder)]
            for obj_id, attempts, failures, found in orphans:
                # a job that killed its worker max_job_attempts times would kill the next one too
                give_up = failures + 1 >= e.settings.max_job_attempts
                moved = repo.take_orphan(db, model, obj_id, attempts, **found, failures=failures + 1,
                                         **(_given_up(model, failures + 1) if give_up
                                            else {"status": JobStatus.QUEUED, "sent_at": None}))
                db.commit()
                if moved and give_up:
                    log.error("job.given_up", extra={"job": model.__tablename__, "id": str(obj_id),
                                                     "failures": failures + 1})
                elif moved:
                    log.warning("job.requeued", extra={"job": model.__tablename__, "id": str(obj_id),
                                                       "reason": "its worker died"})
                    e.queue.send_row(db, model, task, obj_id)
                    sent += 1
            if lost:
                for obj_id in repo.queued_job_ids(db, model):
                    log.warning("job.resent", extra={"job": model.__tablename__, "id": str(obj_id),
                                                     "reason": "the broker lost its queues"})
                    e.queue.send(task, obj_id)
                    sent += 1
    return sent


def resend_unsent(e: Env) -> int:
    """Sends the jobs of rows committed as queued whose send never happened (the api or
    worker process died between the commit and the send), once they are
    job_unsent_seconds old, and of jobs waiting for a storage retry whose retry is that
    much overdue (its message was lost): a send that is merely slow has happened by then,
    and a job sent twice runs once (the claim)."""
    sent = 0
    before = utcnow() - timedelta(seconds=e.settings.job_unsent_seconds)
    for model, task in JOBS:
        with e.sessions() as db:
            for obj_id in repo.unsent_job_ids(db, model, before):
                log.warning("job.resent", extra={"job": model.__tablename__, "id": str(obj_id),
                                                 "reason": "it was never sent"})
                e.queue.send_row(db, model, task, obj_id)
                sent += 1
    return sent


def sweep_deletions(e: Env, limit: int = 200) -> int:
    """Deletes the objects whose deletion failed while the object store was down."""
    done = 0
    with e.sessions() as db:
        for p in repo.pending_deletions(db, limit):
            if not p.prefix and repo.photo_object_in_use(db, p.key):
                db.delete(p)  # the same photo was uploaded again: its object is in use
                continue
            try:
                e.storage.delete_prefix(p.key) if p.prefix else e.storage.delete(p.key)
            except StorageError:
                p.attempts += 1
                break  # still unreachable: next round
            db.delete(p)
            done += 1
        db.commit()
    if done:
        log.info("object.delete_done", extra={"objects": done})
    return done


def _broker_lost(e: Env) -> bool:
    """True once after Redis came back without its data (and on the very first check)."""
    url = e.settings.resolved_broker_url
    if not url.startswith(("redis://", "rediss://")):
        return False  # the embedded default's SQL broker keeps its messages in a file
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return bool(client.set(f"domainstudio:broker-marker:{e.settings.queue_gpu}", "1", nx=True))
    finally:
        client.close()


class Watchdog(threading.Thread):
    """The worker's chores, every watchdog_seconds, in a thread of their own."""

    def __init__(self):
        super().__init__(name="domainstudio-watchdog", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        e = env()
        while True:
            for chore in (recover_orphans, resend_unsent, sweep_deletions):
                try:
                    chore(e)
                except Exception as exc:  # database, broker or store down: try again next round
                    log.warning("watchdog.failed", extra={"chore": chore.__name__,
                                                          "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            if self.stopped.wait(e.settings.watchdog_seconds):
                return


_watchdog: Watchdog | None = None


@signals.worker_ready.connect
def _start_watchdog(**_kwargs) -> None:
    global _watchdog
    _watchdog = Watchdog()
    _watchdog.start()


@signals.worker_shutdown.connect
def _stop_watchdog(**_kwargs) -> None:
    if _watchdog is not None:
        _watchdog.stopped.set()

"""Sending jobs to the workers. The web side sends tasks by name, so it never imports the
task module (and with it the core and torch)."""
from __future__ import annotations

import logging

from app.errors import Unavailable

log = logging.getLogger("domainstudio.jobs")

ADAPT_RUN = "worker.tasks.adapt_run"
SAMPLE_GALLERY = "worker.tasks.sample_gallery"
BUILD_PACK = "worker.tasks.build_pack"


class JobQueue:
    def __init__(self, celery_app):
        self.celery = celery_app

    def send(self, task: str, object_id) -> str:
        try:
            result = self.celery.send_task(task, args=[str(object_id)], retry=False)
        except Exception as exc:  # kombu raises OperationalError and friends
            log.warning("job.send.failed", extra={"task": task, "id": str(object_id), "error": str(exc)})
            raise Unavailable("the job queue is unreachable; try again in a minute") from exc
        log.info("job.sent", extra={"task": task, "id": str(object_id)})
        return result.id

    def send_row(self, db, model, task: str, object_id) -> None:
        """Sends the job of a committed row, then marks it sent. A row left queued and
        unsent (the process died between its commit and the send) is sent by the workers'
        watchdog (worker/tasks.py, resend_unsent)."""
        from datetime import datetime, timezone

        from sqlalchemy import update

        self.send(task, object_id)
        db.execute(update(model).where(model.id == object_id).values(sent_at=datetime.now(timezone.utc)))
        db.commit()

    def revoke(self, task_id: str) -> None:
        try:
            self.celery.control.revoke(task_id)
        except Exception:  # best effort: the task also checks the row before working
            log.warning("job.revoke.failed", extra={"task_id": task_id})

    def ping(self) -> None:
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

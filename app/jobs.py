"""The job queue, the one place that knows the tasks by name: their names, which queue each
goes to, the Celery application (made here for both sides), and sending a job.

The web side sends tasks by name, so it never imports the task modules (and with them the
core and torch); the workers register their tasks under these same names.

Long GPU jobs: a task is acknowledged only when it finishes (``acks_late``) and is put
back on the queue if its worker dies (``reject_on_worker_lost``); each worker takes one
job at a time; Redis's visibility timeout is longer than the hard time limit, so a slow
run is never handed to a second worker while the first still works on it.
"""
from __future__ import annotations

import logging

from celery import Celery
from kombu import Exchange, Queue

from app import repositories as repo
from app.db import utcnow
from app.errors import Unavailable
from app.models import Gallery, Pack, Run
from app.settings import Settings

log = logging.getLogger("domainstudio.jobs")

# the names stay those of the first task module: a message already in a queue keeps its name
ADAPT_RUN = "worker.tasks.adapt_run"
SAMPLE_GALLERY = "worker.tasks.sample_gallery"
BUILD_PACK = "worker.tasks.build_pack"
TASK_MODULES = ("worker.tasks",)  # what a worker imports to register the tasks

# each job's table and task: the watchdog and the embedded app's restart go through them all
JOBS = ((Run, ADAPT_RUN), (Gallery, SAMPLE_GALLERY), (Pack, BUILD_PACK))


def task_routes(settings: Settings) -> dict[str, dict[str, str]]:
    """Runs and galleries need the GPU; packs only a CPU (a pack is built while a run trains)."""
    gpu, cpu = settings.queue_gpu, settings.queue_cpu
    return {ADAPT_RUN: {"queue": gpu}, SAMPLE_GALLERY: {"queue": gpu}, BUILD_PACK: {"queue": cpu}}


def make_celery(settings: Settings) -> Celery:
    """The Celery application of the web app (which only sends) and of the workers
    (``celery -A worker.celery_app worker -Q gpu`` on GPU nodes, ``-Q cpu`` elsewhere)."""
    app = Celery("domainstudio", broker=settings.resolved_broker_url)
    gpu, cpu = settings.queue_gpu, settings.queue_cpu
    app.conf.update(
        imports=TASK_MODULES,
        # each queue with its own exchange and key: a message goes to exactly one queue
        task_queues=tuple(Queue(q, Exchange(q, type="direct"), routing_key=q) for q in (gpu, cpu)),
        task_default_queue=cpu,
        task_default_exchange=cpu,
        task_default_routing_key=cpu,
        task_routes=task_routes(settings),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=5,
        broker_connection_retry_on_startup=True,
        # Redis (and SQS) redeliver an unacknowledged message after this long; the SQL
        # broker of the embedded default passes its options to create_engine, so none
        broker_transport_options=(
            {} if settings.resolved_broker_url.startswith("sqla+")
            else {"visibility_timeout": settings.run_hard_time_limit + 3600}
        ),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


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
        watchdog (worker/tasks/watchdog.py, resend_unsent)."""
        self.send(task, object_id)
        repo.mark_sent(db, model, object_id, utcnow())
        db.commit()

    def revoke(self, task_id: str) -> None:
        try:
            self.celery.control.revoke(task_id)
        except Exception:  # best effort: the task also checks the row before working
            log.warning("job.revoke.failed", extra={"task_id": task_id})

    def ping(self) -> None:
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

"""The Celery application shared by the web app (which only sends tasks, by name) and the
workers (``celery -A worker.celery_app worker -Q gpu`` on GPU nodes, ``-Q cpu`` elsewhere).

Long GPU jobs: a task is acknowledged only when it finishes (``acks_late``) and is put
back on the queue if its worker dies (``reject_on_worker_lost``); each worker takes one
job at a time; Redis's visibility timeout is longer than the hard time limit, so a slow
run is never handed to a second worker while the first still works on it.
"""
from __future__ import annotations

from celery import Celery, signals
from kombu import Exchange, Queue

from app.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("domainstudio", broker=settings.resolved_broker_url)
    gpu, cpu = settings.queue_gpu, settings.queue_cpu
    app.conf.update(
        imports=("worker.tasks",),
        # each queue with its own exchange and key: a message goes to exactly one queue
        task_queues=tuple(Queue(q, Exchange(q, type="direct"), routing_key=q) for q in (gpu, cpu)),
        task_default_queue=cpu,
        task_default_exchange=cpu,
        task_default_routing_key=cpu,
        task_routes={
            "worker.tasks.adapt_run": {"queue": gpu},
            "worker.tasks.sample_gallery": {"queue": gpu},
            "worker.tasks.build_pack": {"queue": cpu},
        },
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


app = celery_app = make_celery(get_settings())


@signals.after_setup_logger.connect
def _json_logs(**_kwargs):
    from app import logs

    logs.setup(get_settings().log_level)

"""The workers' Celery application (``celery -A worker.celery_app worker -Q gpu``); it is
made by the job queue (app/jobs.py), which the web app sends with too."""
from __future__ import annotations

from celery import signals

from app.jobs import make_celery
from app.settings import get_settings

app = celery_app = make_celery(get_settings())


@signals.after_setup_logger.connect
def _json_logs(**_kwargs):
    from app import logs

    logs.setup(get_settings().log_level)

"""The Celery tasks, one module per job (runs, galleries, packs), on the machinery they
share: env.py (what a task works with), leases.py (claim, heartbeat, storage retries),
job.py (the one claim -> heartbeat -> outcome wrapper), watchdog.py (the worker's chores).

Importing this package registers the tasks under their names (app/jobs.py) and the
watchdog's start and stop with the worker. Tasks take ids, reload their row and return
early when the work is done; object keys are fixed per object (``.../previews/0.png``,
``.../images/<seed>.png``), so a redelivered task overwrites what an earlier attempt wrote
instead of duplicating it.
"""
from __future__ import annotations

from worker.tasks import watchdog
from worker.tasks.galleries import sample_gallery
from worker.tasks.packs import build_pack
from worker.tasks.runs import adapt_run

__all__ = ["adapt_run", "build_pack", "sample_gallery", "watchdog"]

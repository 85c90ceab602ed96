from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import BadInput, NotFound, Unavailable
from app.jobs import ADAPT_RUN, JobQueue
from app.models import Run
from app.presets import SettingsError, build_settings
from app.settings import Settings

log = logging.getLogger("domainstudio.runs")
TERMINAL = ("succeeded", "failed", "canceled")


def start_run(
    db: Session, queue: JobQueue, settings: Settings, team_id, photo_set_id, *, preset: str,
    base_model: str | None = None, expert: dict[str, Any] | None = None, gallery_size: int | None = None,
) -> Run:
    ps = repo.photo_set(db, team_id, photo_set_id)
    if ps is None:
        raise NotFound("photo set not found")
    n = repo.photo_count(db, ps.id)
    if n < settings.min_photos:
        raise BadInput("a run needs at least %(min)s photos; this set has %(n)s", params={"min": settings.min_photos, "n": n})
    if n > settings.max_photos:
        raise BadInput("a run takes at most %(max)s photos; this set has %(n)s", params={"max": settings.max_photos, "n": n})
    allowed = settings.base_model_list
    base_model = base_model or (allowed[0] if allowed else "")
    if base_model not in allowed:
        raise BadInput("unknown base model %(model)s; choose one of: %(choices)s",
                       params={"model": repr(base_model), "choices": ", ".join(allowed)})
    gallery_size = settings.gallery_size if gallery_size in (None, "") else gallery_size
    try:
        gallery_size = int(gallery_size)
    except (TypeError, ValueError):
        raise BadInput("gallery size must be a whole number") from None
    if not 1 <= gallery_size <= 1000:
        raise BadInput("gallery size must be between 1 and 1000")
    try:
        run_settings = build_settings(preset, base_model, ps.class_word, expert or {}, settings.device)
    except SettingsError as exc:
        raise BadInput(exc.reason.msgid, params=exc.reason.params) from None
    run = Run(
        team_id=team_id, photo_set_id=ps.id, preset=preset, base_model=base_model, settings=run_settings,
        gallery_size=gallery_size, status="queued", total_steps=run_settings["steps"],
    )
    db.add(run)
    db.commit()  # the job is sent only once the row is committed
    try:
        queue.send(ADAPT_RUN, run.id)
    except Unavailable:
        run.status, run.error, run.finished_at = "failed", "the job queue was unreachable; start the run again", _now()
        db.commit()
        raise
    log.info("run.queued", extra={"run": str(run.id), "preset": preset, "base_model": base_model})
    return run


def get_run(db: Session, team_id, run_id) -> Run:
    run = repo.run(db, team_id, run_id)
    if run is None:
        raise NotFound("run not found")
    return run


def cancel_run(db: Session, team_id, run_id) -> Run:
    """A queued run is canceled at once; a running one is asked to stop and its worker
    notices within one training step."""
    run = get_run(db, team_id, run_id)
    if run.status in TERMINAL:
        return run
    run.cancel_requested = True
    if run.status == "queued":
        run.status, run.finished_at = "canceled", _now()
    db.commit()
    log.info("run.cancel.requested", extra={"run": str(run.id)})
    return run


def _now() -> datetime:
    return datetime.now(timezone.utc)

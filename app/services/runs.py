from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import repositories as repo
from app import runlimits
from app.basemodels import check_base_model
from app.services import quotas
from app.errors import BadInput, Message, NotFound, TooManyRequests, Unavailable, set_error
from app.jobs import ADAPT_RUN, JobQueue
from app.db import aware, utcnow
from app.models import TERMINAL, Gallery, JobStatus, Run
from app.progress import RUN_STAGES, total_seconds
from app.presets import SettingsError, build_settings
from app.settings import Settings

log = logging.getLogger("domainstudio.runs")


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
    check_base_model(base_model)
    gallery_size = settings.gallery_size if gallery_size in (None, "") else gallery_size
    try:
        gallery_size = int(gallery_size)
    except (TypeError, ValueError):
        raise BadInput("gallery size must be a whole number") from None
    if not 1 <= gallery_size <= settings.max_gallery_size:
        raise BadInput("gallery size must be between 1 and %(max)s", params={"max": settings.max_gallery_size})
    try:
        run_settings = build_settings(preset, base_model, ps.class_word, expert or {}, settings.device)
    except SettingsError as exc:
        raise BadInput(exc.reason.msgid, params=exc.reason.params) from None
    check_what_the_worker_can_do(settings, base_model, run_settings, n)
    quotas.check_storage(db, settings, team_id)
    repo.lock_team(db, team_id)  # two runs started at once are counted one after the other
    active = repo.active_runs(db, team_id)
    if active >= settings.max_active_runs_per_team:
        db.rollback()
        raise TooManyRequests("your team has %(n)s runs waiting or training, the most it may have; "
                              "wait for one to finish or cancel one", params={"n": active})
    run = Run(
        team_id=team_id, photo_set_id=ps.id, preset=preset, base_model=base_model, settings=run_settings,
        gallery_size=gallery_size, status=JobStatus.QUEUED, total_steps=run_settings["steps"],
    )
    db.add(run)
    db.commit()  # the job is sent only once the row is committed
    try:
        queue.send_row(db, Run, ADAPT_RUN, run.id)
    except Unavailable:
        run.status, run.finished_at = JobStatus.FAILED, utcnow()
        set_error(run, Message("the job queue was unreachable; start the run again"))
        db.commit()
        raise
    log.info("run.queued", extra={"run": str(run.id), "preset": preset, "base_model": base_model})
    return run


def check_what_the_worker_can_do(settings: Settings, base_model: str, run_settings: dict, num_photos: int) -> None:
    """Refuses at creation what the worker would refuse or could not hold: too many steps,
    LoRA on an unconditional model, a training step that needs more memory than a worker has."""
    if run_settings["steps"] > settings.max_run_steps:
        raise BadInput("a run may train at most %(max)s steps on this server", params={"max": settings.max_run_steps})
    facts = runlimits.model_facts(base_model)
    if facts is None:  # a model whose size cannot be read without loading it: the worker judges
        log.info("run.estimate.skipped", extra={"base_model": base_model})
        return
    if facts.kind == runlimits.UNCONDITIONAL and run_settings.get("mode") == "lora":
        raise BadInput("lora mode is for text-to-image models; use mode full for an unconditional model")
    values = runlimits.resolved(facts, run_settings, num_photos)
    need = runlimits.estimate_mb(facts, values)
    if need > settings.worker_memory_mb:
        raise BadInput("a training step with these settings needs about %(need)s MB of memory and the workers "
                       "have %(budget)s MB; lower the resolution (%(resolution)s), the batch size (%(batch)s) "
                       "or the similarity samples (%(samples)s)",
                       params={"need": format(round(need, -2), ",.0f"),
                               "budget": format(settings.worker_memory_mb, ","),
                               "resolution": values["resolution"], "batch": values["batch_size"],
                               "samples": values["num_similarity_samples"]})


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
    if run.status == JobStatus.QUEUED:
        run.status, run.finished_at = JobStatus.CANCELED, utcnow()
    db.commit()
    log.info("run.cancel.requested", extra={"run": str(run.id)})
    return run


def run_seconds(run: Run, now: datetime | None = None) -> float | None:
    """What the run page shows as "Elapsed", the time the user has waited for the run since
    starting it: while it is queued or running, the time since it was created (the wait in
    the queue included, shown beside it); once it is finished, its stages up to the
    checkpoint, so the figure stays put while the gallery is generated (the report's total
    adds the gallery). Not the core's ``elapsed_seconds``: that is the time of the training
    loop alone (of this attempt), without the queue, the download, loading the base model
    and saving the checkpoint."""
    if run.status in TERMINAL:
        times = run.stage_times or {}
        total = total_seconds({s: times[s] for s in RUN_STAGES if s in times})
        if total is None and run.finished_at is not None:  # canceled in the queue: nothing measured
            total = (aware(run.finished_at) - aware(run.created_at)).total_seconds()
        return total
    return max(0.0, ((now or utcnow()) - aware(run.created_at)).total_seconds())


def run_report(db: Session, team_id, run_id) -> tuple[Run, list[Gallery]]:
    """The run (with checkpoint) and its galleries, for the report page and its JSON."""
    run = get_run(db, team_id, run_id)
    return run, list(repo.galleries_of_run(db, run.id))

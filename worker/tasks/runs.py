"""Runs: the adapt_run task trains the run's model with the core and publishes its checkpoint,
then queues its first gallery. A run resumes from its training state, which follows it to
object storage, on any worker."""
from __future__ import annotations

import logging
import tempfile
import time
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from app import repositories as repo
from app.db import aware, utcnow
from app.errors import Message, error_values, message_of, set_error, set_warnings
from app.jobs import ADAPT_RUN, SAMPLE_GALLERY
from app.models import TERMINAL, Checkpoint, Gallery, JobStatus, Run
from app.progress import add_loss_point, loss_point, with_stage_time
from app.settings import get_settings
from app.storage import StorageError, run_prefix
from worker.celery_app import app
from worker.domainstudio.layout import STATE_FILE
from worker.tasks.env import Env, env, use_torch_threads
from worker.tasks.job import download_photos, png, run_job, set_row
from worker.tasks.leases import Heartbeat, with_storage_retries
from worker.turns import Turn, TurnOver, give_up_turn

log = logging.getLogger("domainstudio.worker")
_settings = get_settings()


@app.task(bind=True, name=ADAPT_RUN, acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=_settings.run_soft_time_limit, time_limit=_settings.run_hard_time_limit)
def adapt_run(self, run_id: str) -> str:
    use_torch_threads(env())
    return with_storage_retries(self, lambda: run_adaptation(env(), uuid.UUID(run_id)))


class RunReporter:
    """Writes the core's progress events to the run row (at most twice a second, plus
    every preview and the last step), each written training event also as a point of the
    loss chart (runs.loss_history), and answers the core's should_stop from the row."""

    def __init__(self, e: Env, run: Run, out: Path | None = None, heartbeat: Heartbeat | None = None,
                 turn: Turn | None = None):
        self.e, self.run_id, self.prefix = e, run.id, run_prefix(run.team_id, run.id)
        self.last = 0.0
        self.out, self.heartbeat, self.turn = out, heartbeat, turn
        self.step = run.step  # the last step the core reported
        self.synced = None  # (mtime, size) of the training state last copied to object storage
        # kept here and written whole: a resumed run continues the chart of its earlier attempt
        self.history = list(run.loss_history or [])

    def sync_state(self, strict: bool = False) -> None:
        """Copies the core's training state to object storage whenever the core saved a new
        one (every checkpoint_every steps), so that a run resumes on any worker. ``strict``:
        a failed copy raises (a run that gives up its turn must leave its state behind)."""
        path = self.out / STATE_FILE if self.out else None
        if path is None or not path.is_file():
            return
        stat = path.stat()
        if (stat.st_mtime_ns, stat.st_size) == self.synced:
            return
        try:
            self.e.storage.put_file(state_key(self.prefix), path)
        except StorageError as exc:  # keep training; the next checkpoint tries again
            if strict:
                raise
            log.warning("run.state.sync_failed", extra={"run": str(self.run_id), "error": str(exc)[:200]})
            return
        self.synced = (stat.st_mtime_ns, stat.st_size)
        log.info("run.state.synced", extra={"run": str(self.run_id)})

    def __call__(self, event) -> None:
        if event.stage == "training":
            self.sync_state()
            self.step = event.step
        now = time.monotonic()
        if not (event.previews or event.step >= event.total or now - self.last >= 0.5):
            return
        self.last = now
        values = dict(stage=event.stage, step=event.step if event.stage == "training" else 0,
                      losses={k: float(v) for k, v in (event.losses or {}).items()},
                      eta_seconds=event.eta_seconds, elapsed_seconds=event.elapsed_seconds)
        if event.stage == "training":
            values["total_steps"] = event.total
            if event.losses:
                point = loss_point(event.step, event.elapsed_seconds, event.losses)
                self.history = values["loss_history"] = add_loss_point(self.history, point)
        if event.previews:
            for i, img in enumerate(event.previews):
                self.e.storage.put_bytes(f"{self.prefix}/previews/{i}.png", png(img), "image/png")
            values.update(preview_count=len(event.previews), preview_step=event.step)
        try:
            with self.e.sessions() as db:
                repo.update_job(db, Run, self.run_id, **values)
                db.commit()
        except Exception as exc:  # progress is best effort: a database blip must not stop training
            log.warning("run.progress.failed", extra={"run": str(self.run_id), "error": str(exc)[:200]})
        log.info("run.step", extra={"run": str(self.run_id), "step": event.step, "total": event.total})

    def should_stop(self) -> bool:
        if self.heartbeat is not None:
            self.heartbeat.check()
        try:
            with self.e.sessions() as db:
                if repo.is_canceled(db, self.run_id):
                    return True
        except Exception:  # the database is unreachable: keep going, ask again next step
            return False
        if self.turn is not None:
            self.turn.check()  # raises TurnOver: the core saves the state and stops
        return False


def state_key(prefix: str) -> str:
    return f"{prefix}/{STATE_FILE}"


def _restore_state(e: Env, run: Run, out: Path) -> None:
    """Puts the run's last training state from object storage into the output folder, so
    that adapt(resume=True) continues at its step on this worker too."""
    key = state_key(run_prefix(run.team_id, run.id))
    if not e.storage.exists(key):
        return
    (out / STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    tmp = out / (STATE_FILE + ".download")
    e.storage.download(key, tmp)
    tmp.replace(out / STATE_FILE)
    log.info("run.state.restored", extra={"run": str(run.id)})


def record_stage_time(e: Env, run_id, stage: str, seconds: float, add: bool = False) -> None:
    """Stores how long a stage took in runs.stage_times (the run report). Best effort: a
    database blip must not fail a run whose work is done."""
    try:
        with e.sessions() as db:
            row = repo.run_for_update(db, run_id)  # a gallery may add to it at the same time
            if row is not None:
                row.stage_times = with_stage_time(row.stage_times, stage, seconds, add)
                db.commit()
    except Exception as exc:
        log.warning("run.stage_time.failed", extra={"run": str(run_id), "stage": stage, "error": str(exc)[:200]})


@contextmanager
def _timed_stage(e: Env, run_id, stage: str, shown_as: str | None = None, add: bool = False):
    """Times a stage of the run when it completes; ``shown_as`` names it on the run page
    meanwhile (the core names its own stages once its progress events come). ``add``: a
    stage done in turns (worker/turns.py) adds up the time of each."""
    set_row(e, Run, run_id, stage=shown_as or stage)
    started = time.monotonic()
    try:
        yield
    except TurnOver:
        record_stage_time(e, run_id, stage, time.monotonic() - started, add)
        raise
    record_stage_time(e, run_id, stage, time.monotonic() - started, add)


def _mark_started(e: Env, run_id) -> None:
    """The first delivery to start the run sets started_at, and the time it waited in
    the queue becomes its first stage; a resumed run keeps both."""
    with e.sessions() as db:
        row = db.get(Run, run_id)
        if row.started_at is None:
            row.started_at = utcnow()
            waited = (row.started_at - aware(row.created_at)).total_seconds()
            row.stage_times = with_stage_time(row.stage_times, "queued", waited)
            db.commit()


def _finish_run(e: Env, run_id, status: str, error: Message | None = None) -> None:
    with e.sessions() as db:
        repo.update_job(db, Run, run_id, status=status, finished_at=utcnow(), **error_values(error))
        db.commit()
    log.info(f"run.{status}", extra={"run": str(run_id), "error": error.render() if error else None})


def run_adaptation(e: Env, run_id: uuid.UUID) -> str:
    with e.sessions() as db:
        run = repo.run_by_id(db, run_id)
        if run is None or run.status in TERMINAL:
            if run is not None and run.status == JobStatus.CANCELED:
                _drop_state(e, run)  # canceled while it waited for its next turn
            return "skipped"
        if run.cancel_requested:
            _finish_run(e, run_id, JobStatus.CANCELED)
            _drop_state(e, run)
            return JobStatus.CANCELED
    photos = []

    def claimed() -> None:
        _mark_started(e, run_id)
        with e.sessions() as db:
            photos.extend(repo.photos_of_set(db, run.photo_set_id))

    def fail(heartbeat: Heartbeat, error: Message) -> str:
        return _end(e, run_id, heartbeat, JobStatus.FAILED, error)

    return run_job(e, Run, run_id, "run", lambda heartbeat: _adapt(e, run, photos, heartbeat), fail,
                   claimed=claimed, crashed=_crashed)


def _crashed(exc: Exception) -> Message:
    return Message("the run stopped on an unexpected error (%(kind)s: %(detail)s); the worker log has the details",
                   {"kind": type(exc).__name__, "detail": str(exc)[:300]})


def _end(e: Env, run_id, heartbeat: Heartbeat, status: str, error: Message | None = None) -> str:
    if heartbeat.superseded:  # another delivery owns the run now: leave its row alone
        return "superseded"
    _finish_run(e, run_id, status, error)
    return status


def _adapt(e: Env, run: Run, photos, heartbeat: Heartbeat) -> str:
    """The claimed run's work; the errors that are a run's own end it here, the others in run_job."""
    from worker.domainstudio import AdaptConfig, Canceled, DomainStudioError, adapt

    run_id = run.id
    work = e.settings.resolved_work_dir / "runs" / str(run_id)
    reporter = RunReporter(e, run, work / "output", heartbeat, Turn(e, run))
    try:
        with _timed_stage(e, run_id, "download"):
            paths = download_photos(e, photos, work / "photos")
            config = AdaptConfig.from_dict(run.settings)
            _restore_state(e, run, work / "output")
        with _timed_stage(e, run_id, "adapt", shown_as="loading", add=True):
            try:
                result = adapt(config, paths, work / "output", progress=reporter, should_stop=reporter.should_stop,
                               resume=True)
            except TurnOver:
                reporter.sync_state(strict=True)  # the core saved the state as it stopped
                raise
        if result.resumed_from:
            log.info("run.resumed", extra={"run": str(run_id), "step": result.resumed_from})
        heartbeat.check()
        set_row(e, Run, run_id, stage="publish")
        _publish_checkpoint(e, run, work / "output", result)
        _drop_state(e, run)
    except TurnOver as over:
        return give_up_turn(e, run_id, heartbeat, over.reason, reporter.step)
    except Canceled:
        _drop_state(e, run)
        return _end(e, run_id, heartbeat, JobStatus.CANCELED)
    except DomainStudioError as exc:
        return _end(e, run_id, heartbeat, JobStatus.FAILED, message_of(exc))
    except SoftTimeLimitExceeded:
        reporter.sync_state()  # the core saved the state on its way out
        return _end(e, run_id, heartbeat, JobStatus.FAILED,
                    Message("the run reached its time limit; its training state was saved"))
    return JobStatus.SUCCEEDED


def _drop_state(e: Env, run: Run) -> None:
    """The training state is only for resuming: gone once the run is over."""
    try:
        e.storage.delete(state_key(run_prefix(run.team_id, run.id)))
    except StorageError:
        log.warning("run.state.delete_failed", extra={"run": str(run.id)})


def _prompts_by_filename(db, run: Run, prompts: dict[str, str]) -> dict[str, str]:
    """The core names photos by their stored file (the object key's last part); the report
    shows the names people uploaded them under."""
    names = {p.key.rsplit("/", 1)[-1]: p.filename for p in repo.photos_of_set(db, run.photo_set_id)}
    return {names.get(stored, stored): prompt for stored, prompt in prompts.items()}


def _publish_checkpoint(e: Env, run: Run, out: Path, result) -> None:
    """Uploads the adapted model (not the resume state), records it, marks the run
    succeeded and queues its gallery, in that order. The publish time is stored in the
    same commit, so a run that reads succeeded has its report's times up to here."""
    import json

    started = time.monotonic()
    prefix = f"{run_prefix(run.team_id, run.id)}/checkpoint"
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "state")
    rel = [p.relative_to(out).as_posix() for p in files]
    for path, name in zip(files, rel):
        e.storage.put_file(f"{prefix}/{name}", path)
    if result.mode == "lora" and (out / "lora.safetensors").is_file():
        download_key, download_name = f"{prefix}/lora.safetensors", f"run-{str(run.id)[:8]}-lora.safetensors"
    else:
        download_key, download_name = f"{run_prefix(run.team_id, run.id)}/checkpoint.zip", f"run-{str(run.id)[:8]}-model.zip"
        with tempfile.TemporaryDirectory(dir=e.settings.resolved_work_dir) as tmp:
            zpath = Path(tmp) / "model.zip"
            with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path, name in zip(files, rel):
                    zf.write(path, name)
            e.storage.put_file(download_key, zpath, "application/zip")
    size = e.storage.size(download_key)
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else run.settings
    prompt = None
    if result.kind == "text-to-image":
        prompt = (config.get("instance_prompt") or "a photo of {token} {class}").replace(
            "{token}", config.get("instance_token", "sks")).replace("{class}", config.get("class_word", ""))
        # several prompts (the demo model's caption templates) are kept one per line
        prompt = "\n".join(config.get("gallery_prompts") or [prompt])
    with e.sessions() as db:
        row = db.get(Run, run.id)
        ck = repo.checkpoint_of_run(db, run.id) or Checkpoint(team_id=run.team_id, run_id=run.id)
        ck.kind, ck.base_model, ck.prefix = result.mode, run.base_model, prefix
        ck.download_key, ck.download_name, ck.size_bytes, ck.files = download_key, download_name, size, rel
        ck.settings = {k: v for k, v in config.items() if k not in ("photos", "prompts")}
        ck.prompts = _prompts_by_filename(db, run, config.get("prompts") or {}) or None
        db.add(ck)
        row.status, row.step, row.total_steps, row.finished_at = JobStatus.SUCCEEDED, result.steps, result.steps, utcnow()
        set_warnings(row, result.warnings or [])
        set_error(row, None)
        row.stage_times = with_stage_time(row.stage_times, "publish", time.monotonic() - started)
        gallery = repo.galleries_of_run(db, run.id)
        gallery = gallery[0] if gallery else _new_gallery(db, e.settings, row, prompt)
        db.commit()
        gallery_id = gallery.id
    log.info("run.succeeded", extra={"run": str(run.id), "steps": result.steps})
    with e.sessions() as db:  # a worker that dies before this leaves the gallery unsent: the watchdog sends it
        e.queue.send_row(db, Gallery, SAMPLE_GALLERY, gallery_id)


def _new_gallery(db, settings, run: Run, prompt: str | None) -> Gallery:
    """The run's first gallery, queued in the same commit as the run's success."""
    gallery = Gallery(team_id=run.team_id, run_id=run.id, size=run.gallery_size, prompt=prompt,
                      steps=settings.sample_steps, status=JobStatus.QUEUED)
    db.add(gallery)
    return gallery

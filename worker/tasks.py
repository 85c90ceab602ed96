"""Thin Celery tasks: each takes an id, reloads its row, returns early when the work is
already done, calls the core (``worker.domainstudio``) and writes results back.

Object keys are fixed per object (``.../previews/0.png``, ``.../images/<seed>.png``), so
a redelivered task overwrites what an earlier attempt wrote instead of duplicating it.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import contextvars
import uuid
import zipfile
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from celery import signals
from sqlalchemy import and_, or_, select, update

from app import repositories as repo
from app.db import make_engine, make_sessionmaker
from app.errors import Message, error_values, message_of, set_error, set_warnings
from app.imagecheck import make_thumbnail
from app.jobs import ADAPT_RUN, BUILD_PACK, SAMPLE_GALLERY, JobQueue
from app.models import Checkpoint, Gallery, Image, Pack, Run
from app.services.galleries import new_gallery
from app.services.packs import PackCanceled, PackSource, write_pack_zip
from app.services.runs import add_loss_point, loss_point, with_stage_time
from app.settings import get_settings
from app.storage import StorageError, gallery_prefix, make_storage, run_prefix
from worker.celery_app import app
from worker.turns import Turn, TurnOver, give_up_turn

log = logging.getLogger("domainstudio.worker")
TERMINAL = ("succeeded", "failed", "canceled")
_settings = get_settings()


class Env:
    def __init__(self):
        self.settings = get_settings()
        self.sessions = make_sessionmaker(make_engine(self.settings.resolved_database_url))
        self.storage = make_storage(self.settings)
        self.queue = JobQueue(app)


@lru_cache(maxsize=1)
def env() -> Env:
    return Env()


def use_torch_threads(e: Env) -> None:
    """Sets this worker's torch CPU threads (DOMAINSTUDIO_TORCH_THREADS) before a run or a
    gallery: torch's default, one per core, is 8-10x slower per step when other processes
    share the cores (benchmarks/worker_step.py)."""
    import torch

    if torch.get_num_threads() != e.settings.resolved_torch_threads:
        torch.set_num_threads(e.settings.resolved_torch_threads)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _png(img) -> bytes:
    out = BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------ leases and heartbeats
# A delivery works on a job only after claiming it: a queued job, or a running one whose
# worker stopped sending heartbeats (it died). The claim bumps ``attempts`` in one UPDATE,
# so two deliveries of the same job (a redelivered message, a re-queue by the watchdog)
# never work on it at once, and a worker that lost its claim stops.
class Superseded(Exception):
    """Another delivery claimed the job (this worker was taken for dead)."""


def _stale_before(e: Env) -> datetime:
    return _now() - timedelta(seconds=e.settings.job_stale_seconds)


def _abandoned(model, e: Env, or_never_beat: bool = True):
    """Running, but its worker stopped sending heartbeats. A running job without any
    heartbeat was released by its owner (the embedded app's restart) or predates them."""
    stale = model.heartbeat_at < _stale_before(e)
    return and_(model.status == "running", or_(model.heartbeat_at.is_(None), stale) if or_never_beat else stale)


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
        row = db.execute(select(model.attempts, model.status, model.worker).where(model.id == obj_id)).first()
        if row is None:
            return None
        attempts, status, holder = row
        free = or_(model.status == "queued", _abandoned(model, e))
        if status == "running" and holder_died(holder):
            free = and_(model.status == "running", model.worker == holder)
        done = db.execute(
            update(model).where(model.id == obj_id, model.attempts == attempts, free)
            .values(status="running", heartbeat_at=_now(), attempts=attempts + 1, worker=worker_id()))
        db.commit()
    if done.rowcount != 1:
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
                    mine = db.execute(update(m).where(m.id == self.obj_id, m.attempts == self.attempt)
                                      .values(heartbeat_at=_now()))
                    db.commit()
                if mine.rowcount == 0:
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
    return min(_settings.storage_retry_seconds * 2 ** retries, 600)


def retry_or_fail(e: Env, model, obj_id, heartbeat: Heartbeat, exc: StorageError) -> None:
    """Puts the job back in the queue (raising RetryLater) while retries are left; returns
    when none are (the caller fails the job). ``sent_at`` becomes the time the retry is
    due, so that the watchdog sends the job again should the retry's message be lost."""
    if _retries_left.get() <= 0 or heartbeat.superseded:
        return
    message = Message("the object store failed (%(detail)s); trying again shortly", {"detail": str(exc)[:300]})
    due = _now() + timedelta(seconds=retry_delay(e.settings.storage_retries - _retries_left.get()))
    with e.sessions() as db:
        mine = db.execute(update(model).where(model.id == obj_id, model.attempts == heartbeat.attempt)
                          .values(status="queued", heartbeat_at=None, worker=None, sent_at=due,
                                  **error_values(message)))
        db.commit()
    if mine.rowcount == 1:
        log.warning("job.retry_later", extra={"job": model.__tablename__, "id": str(obj_id), "error": str(exc)[:200]})
        raise RetryLater()


def with_storage_retries(task, run):
    """Runs a job with the retries its task has left; a RetryLater sends the task again."""
    settings = _settings
    token = _retries_left.set(settings.storage_retries - task.request.retries)
    try:
        return run()
    except RetryLater:
        raise task.retry(countdown=retry_delay(task.request.retries), max_retries=settings.storage_retries) from None
    finally:
        _retries_left.reset(token)


# ------------------------------------------------------------------------------ runs
@app.task(bind=True, name="worker.tasks.adapt_run", acks_late=True, reject_on_worker_lost=True,
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
                self.e.storage.put_bytes(f"{self.prefix}/previews/{i}.png", _png(img), "image/png")
            values.update(preview_count=len(event.previews), preview_step=event.step)
        try:
            with self.e.sessions() as db:
                db.execute(update(Run).where(Run.id == self.run_id).values(**values))
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


STATE_FILE = "state/training_state.pt"  # the core's (worker.domainstudio.training.STATE_FILE)


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


def _set_run(e: Env, run_id, **values) -> None:
    with e.sessions() as db:
        db.execute(update(Run).where(Run.id == run_id).values(**values))
        db.commit()


def _aware(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC); Postgres aware ones."""
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _record_stage_time(e: Env, run_id, stage: str, seconds: float, add: bool = False) -> None:
    """Stores how long a stage took in runs.stage_times (the run report). Best effort: a
    database blip must not fail a run whose work is done."""
    try:
        with e.sessions() as db:
            row = db.get(Run, run_id, with_for_update=True)  # a gallery may add to it at the same time
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
    _set_run(e, run_id, stage=shown_as or stage)
    started = time.monotonic()
    try:
        yield
    except TurnOver:
        _record_stage_time(e, run_id, stage, time.monotonic() - started, add)
        raise
    _record_stage_time(e, run_id, stage, time.monotonic() - started, add)


def _mark_started(e: Env, run_id) -> None:
    """The first delivery to start the run sets started_at, and the time it waited in
    the queue becomes its first stage; a resumed run keeps both."""
    with e.sessions() as db:
        row = db.get(Run, run_id)
        if row.started_at is None:
            row.started_at = _now()
            waited = (row.started_at - _aware(row.created_at)).total_seconds()
            row.stage_times = with_stage_time(row.stage_times, "queued", waited)
            db.commit()


def _finish_run(e: Env, run_id, status: str, error: Message | None = None) -> None:
    with e.sessions() as db:
        db.execute(update(Run).where(Run.id == run_id).values(status=status, finished_at=_now(),
                                                               **error_values(error)))
        db.commit()
    log.info(f"run.{status}", extra={"run": str(run_id), "error": error.render() if error else None})


def run_adaptation(e: Env, run_id: uuid.UUID) -> str:
    with e.sessions() as db:
        run = repo.run_by_id(db, run_id)
        if run is None or run.status in TERMINAL:
            if run is not None and run.status == "canceled":
                _drop_state(e, run)  # canceled while it waited for its next turn
            return "skipped"
        if run.cancel_requested:
            _finish_run(e, run_id, "canceled")
            _drop_state(e, run)
            return "canceled"
    attempt = claim(e, Run, run_id)
    if attempt is None:
        return "skipped"
    _mark_started(e, run_id)
    with e.sessions() as db:
        photos = list(repo.photos_of_set(db, run.photo_set_id))
    with Heartbeat(e, Run, run_id, attempt) as heartbeat:
        return _adapt_claimed(e, run, photos, heartbeat)


def _adapt_claimed(e: Env, run: Run, photos, heartbeat: Heartbeat) -> str:
    run_id = run.id
    work = e.settings.resolved_work_dir / "runs" / str(run_id)
    from worker.domainstudio import AdaptConfig, Canceled, DomainStudioError, adapt

    reporter = RunReporter(e, run, work / "output", heartbeat, Turn(e, run))

    def end(status: str, error: Message | None = None) -> str:
        if heartbeat.superseded:  # another delivery owns the run now: leave its row alone
            return "superseded"
        _finish_run(e, run_id, status, error)
        return status

    try:
        with _timed_stage(e, run_id, "download"):
            paths = _download_photos(e, photos, work / "photos")
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
        _set_run(e, run_id, stage="publish")
        _publish_checkpoint(e, run, work / "output", result)
        _drop_state(e, run)
    except Superseded:
        return "superseded"  # the delivery that claimed the run after us owns it now
    except TurnOver as over:
        return give_up_turn(e, run_id, heartbeat, over.reason, reporter.step)
    except Canceled:
        _drop_state(e, run)
        return end("canceled")
    except DomainStudioError as exc:
        return end("failed", message_of(exc))
    except SoftTimeLimitExceeded:
        reporter.sync_state()  # the core saved the state on its way out
        return end("failed", Message("the run reached its time limit; its training state was saved"))
    except StorageError as exc:
        retry_or_fail(e, Run, run_id, heartbeat, exc)
        return end("failed", _storage_failed(exc))
    except Exception as exc:
        log.exception("run.crashed", extra={"run": str(run_id)})
        return end("failed", Message("the run stopped on an unexpected error (%(kind)s: %(detail)s); "
                                     "the worker log has the details",
                                     {"kind": type(exc).__name__, "detail": str(exc)[:300]}))
    return "succeeded"


def _storage_failed(exc: StorageError) -> Message:
    return Message("the object store failed: %(detail)s", {"detail": str(exc)})


def _internal_error(exc: Exception) -> Message:
    return Message("internal error (%(kind)s)", {"kind": type(exc).__name__})


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


def _download_photos(e: Env, photos, folder: Path) -> list[Path]:
    """The photos, each with its caption beside it as photo.txt (what the core reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in photos:
        path = folder / p.key.rsplit("/", 1)[-1]
        if not path.exists():
            e.storage.download(p.key, path)
        caption = path.with_suffix(".txt")
        if getattr(p, "caption", None):
            caption.write_text(p.caption, encoding="utf-8")
        elif caption.exists():  # removed since an earlier attempt of this run
            caption.unlink()
        paths.append(path)
    return paths


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
        row.status, row.step, row.total_steps, row.finished_at = "succeeded", result.steps, result.steps, _now()
        set_warnings(row, result.warnings or [])
        set_error(row, None)
        row.stage_times = with_stage_time(row.stage_times, "publish", time.monotonic() - started)
        gallery = repo.galleries_of_run(db, run.id)
        gallery = gallery[0] if gallery else new_gallery(db, e.settings, row, prompt)
        db.commit()
        gallery_id = gallery.id
    log.info("run.succeeded", extra={"run": str(run.id), "steps": result.steps})
    with e.sessions() as db:  # a worker that dies before this leaves the gallery unsent: the watchdog sends it
        e.queue.send_row(db, Gallery, SAMPLE_GALLERY, gallery_id)


# ------------------------------------------------------------------------- galleries
@app.task(bind=True, name="worker.tasks.sample_gallery", acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=_settings.run_soft_time_limit, time_limit=_settings.run_hard_time_limit)
def sample_gallery(self, gallery_id: str) -> str:
    use_torch_threads(env())
    return with_storage_retries(self, lambda: sample_gallery_images(env(), uuid.UUID(gallery_id)))


def _set_gallery(e: Env, gallery_id, **values) -> None:
    with e.sessions() as db:
        db.execute(update(Gallery).where(Gallery.id == gallery_id).values(**values))
        db.commit()


def _model_folder(e: Env, ck: Checkpoint) -> Path:
    """The run's output folder on this worker, fetched from storage when the run was
    trained elsewhere."""
    local = e.settings.resolved_work_dir / "runs" / str(ck.run_id) / "output"
    if (local / "checkpoint.json").is_file():
        return local
    cached = e.settings.resolved_work_dir / "models" / str(ck.run_id)
    if not (cached / "checkpoint.json").is_file():
        tmp = Path(tempfile.mkdtemp(dir=e.settings.resolved_work_dir))
        for name in ck.files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            e.storage.download(f"{ck.prefix}/{name}", tmp / name)
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    return cached


def sample_gallery_images(e: Env, gallery_id: uuid.UUID) -> str:
    with e.sessions() as db:
        gallery = repo.gallery_by_id(db, gallery_id)
        if gallery is None:
            return "skipped"
        ck = repo.checkpoint_of_run(db, gallery.run_id)
        missing = sorted(set(range(gallery.size)) - repo.image_seeds(db, gallery.id))
        if ck is None:
            _set_gallery(e, gallery_id, status="failed", **error_values(Message("the run has no checkpoint")))
            return "failed"
        if not missing and gallery.status in ("queued", "running"):
            _set_gallery(e, gallery_id, status="succeeded")
            return "skipped"
    attempt = claim(e, Gallery, gallery_id)
    if attempt is None:
        return "skipped"
    _set_gallery(e, gallery_id, **error_values(None))
    _record_gallery_wait(e, gallery)
    started = time.monotonic()
    with Heartbeat(e, Gallery, gallery_id, attempt) as heartbeat:
        outcome = _sample_claimed(e, gallery, ck, missing, heartbeat)
    if outcome != "superseded":  # added up: "generate more" samples the same gallery again
        _record_stage_time(e, gallery.run_id, "gallery", time.monotonic() - started, add=True)
    return outcome


def _record_gallery_wait(e: Env, gallery: Gallery) -> None:
    """The first gallery's wait in the queue after its run finished, part of what the user
    waited for (the report's total); recorded once, at its first claim."""
    try:
        with e.sessions() as db:
            row = db.get(Run, gallery.run_id, with_for_update=True)
            if row is None or "gallery_queued" in (row.stage_times or {}):
                return
            waited = (_now() - _aware(gallery.created_at)).total_seconds()
            row.stage_times = with_stage_time(row.stage_times, "gallery_queued", waited)
            db.commit()
    except Exception as exc:  # best effort, as _record_stage_time
        log.warning("run.stage_time.failed", extra={"run": str(gallery.run_id), "stage": "gallery_queued",
                                                     "error": str(exc)[:200]})


def _canceled(e: Env, model, obj_id) -> bool:
    try:
        with e.sessions() as db:
            return bool(db.scalar(select(model.cancel_requested).where(model.id == obj_id)))
    except Exception:  # the database is unreachable: keep going, ask again later
        return False


def seed_prompts(prompts: str | None, first_seed: int, n: int) -> list[str] | None:
    """The prompt of each image: a gallery's prompts (one per line) taken in turn by seed, so
    an image's prompt depends only on its seed ("generate more" continues the cycle)."""
    if not prompts:
        return None
    lines = prompts.split("\n")
    return [lines[seed % len(lines)] for seed in range(first_seed, first_seed + n)]


def _sample_claimed(e: Env, gallery: Gallery, ck: Checkpoint, missing: list[int], heartbeat: Heartbeat) -> str:
    gallery_id = gallery.id
    from worker.domainstudio import Canceled, DomainStudioError, sample

    def should_stop() -> bool:
        heartbeat.check()
        return _canceled(e, Gallery, gallery_id)

    try:
        model = _model_folder(e, ck)
        guard = _copy_guard(e, gallery)
        batch = e.settings.sample_batch_size
        for start in range(0, len(missing), batch):
            seeds = missing[start : start + batch]
            # seeds are consecutive except after a partial earlier attempt: sample runs
            for run_start, run_len in _consecutive(seeds):
                if should_stop():
                    raise Canceled("sampling was canceled")
                images = sample(model, run_len, prompt=seed_prompts(gallery.prompt, run_start, run_len),
                                seed=run_start, steps=gallery.steps,
                                batch_size=batch, device=e.settings.device, should_stop=should_stop)
                heartbeat.check()
                _save_images(e, gallery, images, guard)
        _measure_gallery(e, gallery, guard, should_stop)
    except Superseded:
        return "superseded"
    except Canceled:
        # the images saved so far stay (each with its object) and the gallery shrinks to
        # them, so "generate more" adds only what is asked for
        with e.sessions() as db:
            have = len(repo.image_seeds(db, gallery_id))
        _set_gallery(e, gallery_id, status="canceled", size=have)
        log.info("gallery.canceled", extra={"gallery": str(gallery_id)})
        return "canceled"
    except DomainStudioError as exc:
        _set_gallery(e, gallery_id, status="failed", **error_values(message_of(exc)))
        return "failed"
    except CopyGuardError as exc:
        _set_gallery(e, gallery_id, status="failed", **error_values(exc.message))
        return "failed"
    except StorageError as exc:
        retry_or_fail(e, Gallery, gallery_id, heartbeat, exc)
        _set_gallery(e, gallery_id, status="failed", **error_values(_storage_failed(exc)))
        return "failed"
    except Exception as exc:
        log.exception("gallery.crashed", extra={"gallery": str(gallery_id)})
        _set_gallery(e, gallery_id, status="failed", **error_values(_internal_error(exc)))
        return "failed"
    _set_gallery(e, gallery_id, status="succeeded")
    log.info("gallery.succeeded", extra={"gallery": str(gallery_id)})
    return "succeeded"


def _consecutive(seeds: list[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([s, 1])
    return [(a, b) for a, b in runs]


def _save_images(e: Env, gallery: Gallery, images, guard=None) -> None:
    """Stores a batch of images with their copy-guard measurement (taken right after
    sampling, while the images are in memory)."""
    prefix = gallery_prefix(gallery.team_id, gallery.id)
    rows = []
    measured = guard.measure([g.image for g in images]) if guard is not None else []
    for n, g in enumerate(images):
        key, thumb = f"{prefix}/images/{g.seed}.png", f"{prefix}/thumbs/{g.seed}.jpg"
        e.storage.put_bytes(key, _png(g.image), "image/png")
        e.storage.put_bytes(thumb, make_thumbnail(g.image), "image/jpeg")
        m = measured[n] if n < len(measured) else None
        rows.append(Image(team_id=gallery.team_id, gallery_id=gallery.id, seed=g.seed, prompt=g.prompt,
                          width=g.image.width, height=g.image.height, key=key, thumb_key=thumb,
                          nearest_distance=m.distance if m else None, nearest_photo_id=m.photo_id if m else None,
                          near_copy=bool(m and m.near_copy)))
        log.info("gallery.image.saved", extra={"gallery": str(gallery.id), "seed": g.seed})
    with e.sessions() as db:
        existing = repo.image_seeds(db, gallery.id)
        db.add_all(r for r in rows if r.seed not in existing)
        db.commit()


class CopyGuardError(Exception):
    """The copy guard could not be set up (its configured feature network would not load):
    the gallery fails with the reason. worker.copyguard's own error is raised again as this
    one, because that module (and torch) is only imported once a gallery is sampled."""

    def __init__(self, message: Message):
        super().__init__(message.render())
        self.message = message


DIVERSITY_SAMPLE = 256  # images the diversity figures are computed on (pairwise: O(n^2))


def _copy_guard(e: Env, gallery: Gallery):
    """The gallery's copy guard: its run's training photos through the feature network for
    the run's base model. Records the network and threshold in force on the gallery."""
    from worker import copyguard

    with e.sessions() as db:
        photos = list(repo.photos_of_set(db, gallery.run.photo_set_id))
    paths = _download_photos(e, photos, e.settings.resolved_work_dir / "runs" / str(gallery.run_id) / "photos")
    try:
        device = "cpu"
        if e.settings.copy_guard_model:
            from worker.domainstudio.training import resolve_device

            device = str(resolve_device(e.settings.device))
        network = copyguard.feature_network(gallery.run.base_model, e.settings.copy_guard_model, device)
    except copyguard.CopyGuardError as exc:
        raise CopyGuardError(message_of(exc)) from exc
    guard = copyguard.CopyGuard(network, [_open_image(p) for p in paths], [p.id for p in photos],
                                e.settings.near_copy_threshold)
    _set_gallery(e, gallery.id, feature_network=network.name, near_copy_threshold=guard.threshold)
    return guard


MEASURE_SIDE = 256  # what the feature networks see is smaller (32 px, CLIP/DINO 224 px)


def _open_image(source):
    """An image for the copy guard, scaled down to MEASURE_SIDE: a gallery's worth of
    full-size images (256 for its diversity) stays a few MB in memory."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    with PILImage.open(source) as img:
        img.draft("RGB", (MEASURE_SIDE, MEASURE_SIDE))  # JPEG photos decode at a fraction of their size
        img = ImageOps.exif_transpose(img)
        img.thumbnail((MEASURE_SIDE, MEASURE_SIDE), PILImage.LANCZOS)
        return img


def _measure_gallery(e: Env, gallery: Gallery, guard, should_stop) -> None:
    """After sampling: measures the images that were never measured with this network
    (earlier galleries, another configured network), re-applies the threshold in force to
    all, and writes the gallery's diversity on a sample of its images."""
    from worker.copyguard import FMNIST_MODELS, ClassifierFeatures

    same_network = gallery.feature_network in (None, guard.network.name)
    with e.sessions() as db:
        rows = list(repo.images_of_gallery(db, gallery.id))
    for start in range(0, len(rows), 64):
        todo = [r for r in rows[start:start + 64] if r.nearest_distance is None or not same_network]
        if not todo:
            continue
        if should_stop():
            return
        measured = guard.measure([_open_image(BytesIO(e.storage.get_bytes(r.key))) for r in todo])
        with e.sessions() as db:
            for r, m in zip(todo, measured):
                db.execute(update(Image).where(Image.id == r.id).values(
                    nearest_distance=m.distance, nearest_photo_id=m.photo_id))
            db.commit()
    with e.sessions() as db:
        db.execute(update(Image).where(Image.gallery_id == gallery.id, Image.nearest_distance.is_not(None))
                   .values(near_copy=Image.nearest_distance < guard.threshold))
        db.commit()
    step = max(1, -(-len(rows) // DIVERSITY_SAMPLE))
    sample = [_open_image(BytesIO(e.storage.get_bytes(r.key))) for r in rows[::step]]
    fits = gallery.run.base_model in FMNIST_MODELS and isinstance(guard.network, ClassifierFeatures)
    _set_gallery(e, gallery.id, diversity=guard.diversity(sample, proxy_lpips=fits))
    log.info("gallery.measured", extra={"gallery": str(gallery.id), "network": guard.network.name,
                                        "threshold": guard.threshold})


# ----------------------------------------------------------------------------- packs
@app.task(bind=True, name="worker.tasks.build_pack", acks_late=True, reject_on_worker_lost=True)
def build_pack(self, pack_id: str) -> str:
    return with_storage_retries(self, lambda: build_pack_zip(env(), uuid.UUID(pack_id)))


def _set_pack(e: Env, pack_id, **values) -> None:
    with e.sessions() as db:
        db.execute(update(Pack).where(Pack.id == pack_id).values(**values))
        db.commit()


class PackProgress:
    """Writes packs.progress (images written / images) for the page's progress bar, at
    most every half second; best effort, like a run's progress."""

    def __init__(self, e: Env, pack_id, every: float = 0.5):
        self.e, self.pack_id, self.every, self.last = e, pack_id, every, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        try:
            _set_pack(self.e, self.pack_id, progress=round(done / max(1, total), 4))
        except Exception as exc:  # a database blip must not stop the build
            log.warning("pack.progress.failed", extra={"pack": str(self.pack_id), "error": str(exc)[:200]})


def build_pack_zip(e: Env, pack_id: uuid.UUID) -> str:
    with e.sessions() as db:
        pack = repo.pack_by_id(db, pack_id)
        if pack is None or pack.status == "succeeded":
            return "skipped"
        gallery = repo.gallery_by_id(db, pack.gallery_id)
        images = list(repo.images_by_ids(db, gallery.id, pack.image_ids))
        source = PackSource(run_id=str(gallery.run_id), base_model=gallery.run.base_model)
    attempt = claim(e, Pack, pack_id)
    if attempt is None:
        return "skipped"
    _set_pack(e, pack_id, **error_values(None))
    with Heartbeat(e, Pack, pack_id, attempt) as heartbeat:
        return _build_claimed(e, pack, images, source, heartbeat)


def _build_claimed(e: Env, pack: Pack, images, source: PackSource, heartbeat: Heartbeat) -> str:
    pack_id = pack.id

    def should_stop() -> bool:
        heartbeat.check()
        return _canceled(e, Pack, pack_id)

    e.settings.resolved_work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=e.settings.resolved_work_dir) as tmp:
            path = Path(tmp) / "pack.zip"
            write_pack_zip(e.storage, pack, images, source, path, should_stop=should_stop,
                           progress=PackProgress(e, pack_id))
            if should_stop():  # last chance before the ZIP becomes visible
                raise PackCanceled()
            e.storage.put_file(pack.key, path, "application/zip")
            size = path.stat().st_size
    except Superseded:
        return "superseded"
    except PackCanceled:
        _set_pack(e, pack_id, status="canceled", finished_at=_now())
        log.info("pack.canceled", extra={"pack": str(pack_id)})
        return "canceled"
    except StorageError as exc:
        retry_or_fail(e, Pack, pack_id, heartbeat, exc)
        _set_pack(e, pack_id, status="failed", finished_at=_now(), **error_values(_storage_failed(exc)))
        return "failed"
    except Exception as exc:
        log.exception("pack.crashed", extra={"pack": str(pack_id)})
        _set_pack(e, pack_id, status="failed", finished_at=_now(), **error_values(_internal_error(exc)))
        return "failed"
    _set_pack(e, pack_id, status="succeeded", size_bytes=size, progress=1.0, finished_at=_now())
    log.info("pack.succeeded", extra={"pack": str(pack_id), "images": len(images)})
    return "succeeded"


# -------------------------------------------------------------------------- watchdog
# Redis hands an unacknowledged message to another worker only after its visibility
# timeout (hours: longer than a run may last), and loses every queued message when it
# restarts without persistence. Every worker therefore runs a watchdog thread that, every
# watchdog_seconds (and once when the worker starts):
#  - re-queues running jobs whose heartbeat is older than job_stale_seconds: their worker
#    died (SIGKILL, OOM, power). The re-queue is a compare-and-set on the row, so of all
#    watchdogs exactly one sends the job again; the claim keeps it to one worker;
#  - sends again every queued job when the broker lost its data: a marker key that lives
#    in Redis next to the queues is gone (Redis restarted empty). A job sent twice runs once.
JOBS = ((Run, ADAPT_RUN), (Gallery, SAMPLE_GALLERY), (Pack, BUILD_PACK))


def _given_up(model, failures: int) -> dict:
    """The values of a job failed because its workers kept dying on it."""
    values = {"status": "failed", "heartbeat_at": None,
              **error_values(Message("the worker stopped %(n)s times while working on this (killed, or out of "
                                     "memory); it was given up: try again with smaller settings", {"n": failures}))}
    if hasattr(model, "finished_at"):
        values["finished_at"] = _now()
    return values


def recover_orphans(e: Env) -> int:
    """Re-queues the jobs of dead workers and of a broker that lost its queues; returns
    how many jobs were sent again."""
    sent = 0
    lost = _broker_lost(e)
    for model, task in JOBS:
        with e.sessions() as db:
            orphans = [(obj_id, attempts, failures, _abandoned(model, e, False)) for obj_id, attempts, failures in
                       db.execute(select(model.id, model.attempts, model.failures).where(_abandoned(model, e, False)))]
            orphans += [(obj_id, attempts, failures, model.worker == holder) for obj_id, attempts, failures, holder in
                        db.execute(select(model.id, model.attempts, model.failures, model.worker)
                                   .where(model.status == "running"))
                        if holder_died(holder)]
            for obj_id, attempts, failures, still in orphans:
                # a job that killed its worker max_job_attempts times would kill the next one too
                give_up = failures + 1 >= e.settings.max_job_attempts
                moved = db.execute(update(model).where(model.id == obj_id, model.attempts == attempts,
                                                       model.status == "running", still)
                                   .values(failures=failures + 1,
                                           **(_given_up(model, failures + 1) if give_up
                                              else {"status": "queued", "sent_at": None})))
                db.commit()
                if moved.rowcount == 1 and give_up:
                    log.error("job.given_up", extra={"job": model.__tablename__, "id": str(obj_id),
                                                     "failures": failures + 1})
                elif moved.rowcount == 1:
                    log.warning("job.requeued", extra={"job": model.__tablename__, "id": str(obj_id),
                                                       "reason": "its worker died"})
                    e.queue.send_row(db, model, task, obj_id)
                    sent += 1
            if lost:
                for obj_id in db.scalars(select(model.id).where(model.status == "queued")):
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
    before = _now() - timedelta(seconds=e.settings.job_unsent_seconds)
    for model, task in JOBS:
        with e.sessions() as db:
            never = and_(model.sent_at.is_(None), model.created_at < before)
            overdue_retry = and_(model.error.is_not(None), model.sent_at < before)
            unsent = db.scalars(select(model.id).where(model.status == "queued", or_(never, overdue_retry))).all()
            for obj_id in unsent:
                log.warning("job.resent", extra={"job": model.__tablename__, "id": str(obj_id),
                                                 "reason": "it was never sent"})
                e.queue.send_row(db, model, task, obj_id)
                sent += 1
    return sent


def sweep_deletions(e: Env, limit: int = 200) -> int:
    """Deletes the objects whose deletion failed while the object store was down."""
    from app.models import PendingDeletion, Photo

    done = 0
    with e.sessions() as db:
        for p in db.scalars(select(PendingDeletion).order_by(PendingDeletion.created_at).limit(limit)).all():
            if not p.prefix and db.scalar(select(Photo.id).where(or_(Photo.key == p.key, Photo.thumb_key == p.key))
                                          .limit(1)):
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

"""Thin Celery tasks: each takes an id, reloads its row, returns early when the work is
already done, calls the core (``worker.domainstudio``) and writes results back.

Object keys are fixed per object (``.../previews/0.png``, ``.../images/<seed>.png``), so
a redelivered task overwrites what an earlier attempt wrote instead of duplicating it.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
import zipfile
from datetime import datetime, timezone
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update

from app import repositories as repo
from app.db import make_engine, make_sessionmaker
from app.imagecheck import make_thumbnail
from app.jobs import SAMPLE_GALLERY, JobQueue
from app.models import Checkpoint, Gallery, Image, Pack, Run
from app.services.galleries import new_gallery
from app.services.packs import PackSource, write_pack_zip
from app.settings import get_settings
from app.storage import StorageError, gallery_prefix, make_storage, run_prefix
from worker.celery_app import app

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


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _png(img) -> bytes:
    out = BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------------------ runs
@app.task(name="worker.tasks.adapt_run", acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=_settings.run_soft_time_limit, time_limit=_settings.run_hard_time_limit)
def adapt_run(run_id: str) -> str:
    return run_adaptation(env(), uuid.UUID(run_id))


class RunReporter:
    """Writes the core's progress events to the run row (at most twice a second, plus
    every preview and the last step) and answers the core's should_stop from the row."""

    def __init__(self, e: Env, run: Run):
        self.e, self.run_id, self.prefix = e, run.id, run_prefix(run.team_id, run.id)
        self.last = 0.0

    def __call__(self, event) -> None:
        now = time.monotonic()
        if not (event.previews or event.step >= event.total or now - self.last >= 0.5):
            return
        self.last = now
        values = dict(stage=event.stage, step=event.step if event.stage == "training" else 0,
                      losses={k: float(v) for k, v in (event.losses or {}).items()},
                      eta_seconds=event.eta_seconds, elapsed_seconds=event.elapsed_seconds)
        if event.stage == "training":
            values["total_steps"] = event.total
        if event.previews:
            for i, img in enumerate(event.previews):
                self.e.storage.put_bytes(f"{self.prefix}/previews/{i}.png", _png(img), "image/png")
            values.update(preview_count=len(event.previews), preview_step=event.step)
        with self.e.sessions() as db:
            db.execute(update(Run).where(Run.id == self.run_id).values(**values))
            db.commit()
        log.info("run.step", extra={"run": str(self.run_id), "step": event.step, "total": event.total})

    def should_stop(self) -> bool:
        with self.e.sessions() as db:
            return repo.is_canceled(db, self.run_id)


def _finish_run(e: Env, run_id, status: str, error: str | None = None) -> None:
    with e.sessions() as db:
        db.execute(update(Run).where(Run.id == run_id).values(status=status, error=error, finished_at=_now()))
        db.commit()
    log.info(f"run.{status}", extra={"run": str(run_id), "error": error})


def run_adaptation(e: Env, run_id: uuid.UUID) -> str:
    with e.sessions() as db:
        run = repo.run_by_id(db, run_id)
        if run is None or run.status in TERMINAL:
            return "skipped"
        if run.cancel_requested:
            _finish_run(e, run_id, "canceled")
            return "canceled"
        db.execute(update(Run).where(Run.id == run_id).values(status="running", started_at=run.started_at or _now()))
        db.commit()
        photos = list(repo.photos_of_set(db, run.photo_set_id))
    work = e.settings.resolved_work_dir / "runs" / str(run_id)
    from worker.domainstudio import AdaptConfig, Canceled, DomainStudioError, adapt

    try:
        paths = _download_photos(e, photos, work / "photos")
        config = AdaptConfig.from_dict(run.settings)
        reporter = RunReporter(e, run)
        result = adapt(config, paths, work / "output", progress=reporter, should_stop=reporter.should_stop, resume=True)
        _publish_checkpoint(e, run, work / "output", result)
    except Canceled:
        _finish_run(e, run_id, "canceled")
        return "canceled"
    except DomainStudioError as exc:
        _finish_run(e, run_id, "failed", str(exc))
        return "failed"
    except SoftTimeLimitExceeded:
        _finish_run(e, run_id, "failed", "the run reached its time limit; its training state was saved")
        return "failed"
    except StorageError as exc:
        _finish_run(e, run_id, "failed", f"the object store failed: {exc}")
        return "failed"
    except Exception as exc:
        log.exception("run.crashed", extra={"run": str(run_id)})
        _finish_run(e, run_id, "failed", f"the run stopped on an unexpected error ({type(exc).__name__}: {str(exc)[:300]}); "
                                         "the worker log has the details")
        return "failed"
    return "succeeded"


def _download_photos(e: Env, photos, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in photos:
        path = folder / p.key.rsplit("/", 1)[-1]
        if not path.exists():
            e.storage.download(p.key, path)
        paths.append(path)
    return paths


def _publish_checkpoint(e: Env, run: Run, out: Path, result) -> None:
    """Uploads the adapted model (not the resume state), records it, marks the run
    succeeded and queues its gallery, in that order."""
    import json

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
    with e.sessions() as db:
        row = db.get(Run, run.id)
        ck = repo.checkpoint_of_run(db, run.id) or Checkpoint(team_id=run.team_id, run_id=run.id)
        ck.kind, ck.base_model, ck.prefix = result.mode, run.base_model, prefix
        ck.download_key, ck.download_name, ck.size_bytes, ck.files = download_key, download_name, size, rel
        ck.settings = {k: v for k, v in config.items() if k != "photos"}
        db.add(ck)
        row.status, row.step, row.total_steps, row.finished_at = "succeeded", result.steps, result.steps, _now()
        row.warnings, row.error = list(result.warnings or []), None
        gallery = repo.galleries_of_run(db, run.id)
        gallery = gallery[0] if gallery else new_gallery(db, e.settings, row, prompt)
        db.commit()
        gallery_id = gallery.id
    log.info("run.succeeded", extra={"run": str(run.id), "steps": result.steps})
    e.queue.send(SAMPLE_GALLERY, gallery_id)


# ------------------------------------------------------------------------- galleries
@app.task(name="worker.tasks.sample_gallery", acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=_settings.run_soft_time_limit, time_limit=_settings.run_hard_time_limit)
def sample_gallery(gallery_id: str) -> str:
    return sample_gallery_images(env(), uuid.UUID(gallery_id))


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
            _set_gallery(e, gallery_id, status="failed", error="the run has no checkpoint")
            return "failed"
        if not missing:
            _set_gallery(e, gallery_id, status="succeeded")
            return "skipped"
    _set_gallery(e, gallery_id, status="running", error=None)
    from worker.domainstudio import DomainStudioError, sample

    try:
        model = _model_folder(e, ck)
        batch = e.settings.sample_batch_size
        for start in range(0, len(missing), batch):
            seeds = missing[start : start + batch]
            # seeds are consecutive except after a partial earlier attempt: sample runs
            for run_start, run_len in _consecutive(seeds):
                images = sample(model, run_len, prompt=gallery.prompt, seed=run_start, steps=gallery.steps,
                                batch_size=batch, device=e.settings.device)
                _save_images(e, gallery, images)
    except DomainStudioError as exc:
        _set_gallery(e, gallery_id, status="failed", error=str(exc))
        return "failed"
    except StorageError as exc:
        _set_gallery(e, gallery_id, status="failed", error=f"the object store failed: {exc}")
        return "failed"
    except Exception as exc:
        log.exception("gallery.crashed", extra={"gallery": str(gallery_id)})
        _set_gallery(e, gallery_id, status="failed", error=f"internal error ({type(exc).__name__})")
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


def _save_images(e: Env, gallery: Gallery, images) -> None:
    prefix = gallery_prefix(gallery.team_id, gallery.id)
    rows = []
    for g in images:
        key, thumb = f"{prefix}/images/{g.seed}.png", f"{prefix}/thumbs/{g.seed}.jpg"
        e.storage.put_bytes(key, _png(g.image), "image/png")
        e.storage.put_bytes(thumb, make_thumbnail(g.image), "image/jpeg")
        rows.append(Image(team_id=gallery.team_id, gallery_id=gallery.id, seed=g.seed, prompt=g.prompt,
                          width=g.image.width, height=g.image.height, key=key, thumb_key=thumb))
        log.info("gallery.image.saved", extra={"gallery": str(gallery.id), "seed": g.seed})
    with e.sessions() as db:
        existing = repo.image_seeds(db, gallery.id)
        db.add_all(r for r in rows if r.seed not in existing)
        db.commit()


# ----------------------------------------------------------------------------- packs
@app.task(name="worker.tasks.build_pack", acks_late=True, reject_on_worker_lost=True)
def build_pack(pack_id: str) -> str:
    return build_pack_zip(env(), uuid.UUID(pack_id))


def _set_pack(e: Env, pack_id, **values) -> None:
    with e.sessions() as db:
        db.execute(update(Pack).where(Pack.id == pack_id).values(**values))
        db.commit()


def build_pack_zip(e: Env, pack_id: uuid.UUID) -> str:
    with e.sessions() as db:
        pack = repo.pack_by_id(db, pack_id)
        if pack is None or pack.status == "succeeded":
            return "skipped"
        gallery = repo.gallery_by_id(db, pack.gallery_id)
        images = list(repo.images_by_ids(db, gallery.id, pack.image_ids))
        source = PackSource(run_id=str(gallery.run_id), base_model=gallery.run.base_model)
    _set_pack(e, pack_id, status="running", error=None)
    e.settings.resolved_work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=e.settings.resolved_work_dir) as tmp:
            path = Path(tmp) / "pack.zip"
            write_pack_zip(e.storage, pack, images, source, path)
            e.storage.put_file(pack.key, path, "application/zip")
            size = path.stat().st_size
    except StorageError as exc:
        _set_pack(e, pack_id, status="failed", error=f"the object store failed: {exc}", finished_at=_now())
        return "failed"
    except Exception as exc:
        log.exception("pack.crashed", extra={"pack": str(pack_id)})
        _set_pack(e, pack_id, status="failed", error=f"internal error ({type(exc).__name__})", finished_at=_now())
        return "failed"
    _set_pack(e, pack_id, status="succeeded", size_bytes=size, finished_at=_now())
    log.info("pack.succeeded", extra={"pack": str(pack_id), "images": len(images)})
    return "succeeded"

"""Packs: the build_pack task writes a pack's ZIP (its images in the chosen sizes and format,
with a manifest) and stores it. CPU only: a pack is built while a run trains."""
from __future__ import annotations

import logging
import tempfile
import time
import uuid
from pathlib import Path

from app import repositories as repo
from app.db import utcnow
from app.errors import Message, error_values
from app.jobs import BUILD_PACK
from app.models import JobStatus, Pack
from app.packfiles import PackCanceled, PackSource, write_pack_zip
from worker.celery_app import app
from worker.tasks.env import Env, env
from worker.tasks.job import cancel_asked, run_job, set_row
from worker.tasks.leases import Heartbeat, with_storage_retries

log = logging.getLogger("domainstudio.worker")


@app.task(bind=True, name=BUILD_PACK, acks_late=True, reject_on_worker_lost=True)
def build_pack(self, pack_id: str) -> str:
    return with_storage_retries(self, lambda: build_pack_zip(env(), uuid.UUID(pack_id)))


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
            set_row(self.e, Pack, self.pack_id, progress=round(done / max(1, total), 4))
        except Exception as exc:  # a database blip must not stop the build
            log.warning("pack.progress.failed", extra={"pack": str(self.pack_id), "error": str(exc)[:200]})


def build_pack_zip(e: Env, pack_id: uuid.UUID) -> str:
    with e.sessions() as db:
        pack = repo.pack_by_id(db, pack_id)
        if pack is None or pack.status == JobStatus.SUCCEEDED:
            return "skipped"
        gallery = repo.gallery_by_id(db, pack.gallery_id)
        images = list(repo.images_by_ids(db, gallery.id, pack.image_ids))
        source = PackSource(run_id=str(gallery.run_id), base_model=gallery.run.base_model)

    def claimed() -> None:
        set_row(e, Pack, pack_id, **error_values(None))
        e.settings.resolved_work_dir.mkdir(parents=True, exist_ok=True)

    def fail(heartbeat: Heartbeat, error: Message) -> str:
        set_row(e, Pack, pack_id, status=JobStatus.FAILED, finished_at=utcnow(), **error_values(error))
        return JobStatus.FAILED

    return run_job(e, Pack, pack_id, "pack", lambda heartbeat: _build(e, pack, images, source, heartbeat), fail,
                   claimed=claimed)


def _build(e: Env, pack: Pack, images, source: PackSource, heartbeat: Heartbeat) -> str:
    """The claimed pack's work: the ZIP in the work folder, then to object storage."""
    pack_id = pack.id

    def should_stop() -> bool:
        heartbeat.check()
        return cancel_asked(e, Pack, pack_id)

    try:
        with tempfile.TemporaryDirectory(dir=e.settings.resolved_work_dir) as tmp:
            path = Path(tmp) / "pack.zip"
            write_pack_zip(e.storage, pack, images, source, path, should_stop=should_stop,
                           progress=PackProgress(e, pack_id))
            if should_stop():  # last chance before the ZIP becomes visible
                raise PackCanceled()
            e.storage.put_file(pack.key, path, "application/zip")
            size = path.stat().st_size
    except PackCanceled:
        set_row(e, Pack, pack_id, status=JobStatus.CANCELED, finished_at=utcnow())
        log.info("pack.canceled", extra={"pack": str(pack_id)})
        return JobStatus.CANCELED
    set_row(e, Pack, pack_id, status=JobStatus.SUCCEEDED, size_bytes=size, progress=1.0, finished_at=utcnow())
    log.info("pack.succeeded", extra={"pack": str(pack_id), "images": len(images)})
    return JobStatus.SUCCEEDED

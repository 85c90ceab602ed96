"""Galleries: the sample_gallery task samples a gallery's missing seeds from its run's
checkpoint, stores each image with its thumbnail and its copy-guard measurement, and
measures the gallery's diversity."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from io import BytesIO
from pathlib import Path


from app import repositories as repo
from app.db import aware, utcnow
from app.errors import Message, error_values, message_of
from app.jobs import SAMPLE_GALLERY
from app.models import ACTIVE, Checkpoint, Gallery, Image, JobStatus
from app.progress import with_stage_time
from app.settings import get_settings
from app.storage import gallery_prefix
from app.thumbnails import make_thumbnail
from worker.celery_app import app
from worker.tasks.env import Env, env, use_torch_threads
from worker.tasks.job import cancel_asked, download_photos, png, run_job, set_row
from worker.tasks.leases import Heartbeat, with_storage_retries
from worker.tasks.runs import record_stage_time

log = logging.getLogger("domainstudio.worker")
_settings = get_settings()


@app.task(bind=True, name=SAMPLE_GALLERY, acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=_settings.run_soft_time_limit, time_limit=_settings.run_hard_time_limit)
def sample_gallery(self, gallery_id: str) -> str:
    use_torch_threads(env())
    return with_storage_retries(self, lambda: sample_gallery_images(env(), uuid.UUID(gallery_id)))


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
            set_row(e, Gallery, gallery_id, status=JobStatus.FAILED, **error_values(Message("the run has no checkpoint")))
            return JobStatus.FAILED
        if not missing and gallery.status in ACTIVE:
            set_row(e, Gallery, gallery_id, status=JobStatus.SUCCEEDED)
            return "skipped"
    started = []

    def claimed() -> None:
        set_row(e, Gallery, gallery_id, **error_values(None))
        _record_gallery_wait(e, gallery)
        started.append(time.monotonic())

    def fail(heartbeat: Heartbeat, error: Message) -> str:
        set_row(e, Gallery, gallery_id, status=JobStatus.FAILED, **error_values(error))
        return JobStatus.FAILED

    outcome = run_job(e, Gallery, gallery_id, "gallery", lambda heartbeat: _sample(e, gallery, ck, missing, heartbeat),
                      fail, claimed=claimed)
    if started and outcome != "superseded":  # added up: "generate more" samples the same gallery again
        record_stage_time(e, gallery.run_id, "gallery", time.monotonic() - started[0], add=True)
    return outcome


def _record_gallery_wait(e: Env, gallery: Gallery) -> None:
    """The first gallery's wait in the queue after its run finished, part of what the user
    waited for (the report's total); recorded once, at its first claim."""
    try:
        with e.sessions() as db:
            row = repo.run_for_update(db, gallery.run_id)
            if row is None or "gallery_queued" in (row.stage_times or {}):
                return
            waited = (utcnow() - aware(gallery.created_at)).total_seconds()
            row.stage_times = with_stage_time(row.stage_times, "gallery_queued", waited)
            db.commit()
    except Exception as exc:  # best effort, as record_stage_time
        log.warning("run.stage_time.failed", extra={"run": str(gallery.run_id), "stage": "gallery_queued",
                                                     "error": str(exc)[:200]})


def seed_prompts(prompts: str | None, first_seed: int, n: int) -> list[str] | None:
    """The prompt of each image: a gallery's prompts (one per line) taken in turn by seed, so
    an image's prompt depends only on its seed ("generate more" continues the cycle)."""
    if not prompts:
        return None
    lines = prompts.split("\n")
    return [lines[seed % len(lines)] for seed in range(first_seed, first_seed + n)]


def _sample(e: Env, gallery: Gallery, ck: Checkpoint, missing: list[int], heartbeat: Heartbeat) -> str:
    """The claimed gallery's work: its missing seeds, in batches, each image measured by
    the copy guard; a copy guard that cannot load fails it as a core error does."""
    from worker.domainstudio import Canceled, DomainStudioError, sample

    gallery_id = gallery.id

    def should_stop() -> bool:
        heartbeat.check()
        return cancel_asked(e, Gallery, gallery_id)

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
    except Canceled:
        # the images saved so far stay (each with its object) and the gallery shrinks to
        # them, so "generate more" adds only what is asked for
        with e.sessions() as db:
            have = len(repo.image_seeds(db, gallery_id))
        set_row(e, Gallery, gallery_id, status=JobStatus.CANCELED, size=have)
        log.info("gallery.canceled", extra={"gallery": str(gallery_id)})
        return JobStatus.CANCELED
    except DomainStudioError as exc:  # the core's, and the copy guard's (CopyGuardError)
        set_row(e, Gallery, gallery_id, status=JobStatus.FAILED, **error_values(message_of(exc)))
        return JobStatus.FAILED
    set_row(e, Gallery, gallery_id, status=JobStatus.SUCCEEDED)
    log.info("gallery.succeeded", extra={"gallery": str(gallery_id)})
    return JobStatus.SUCCEEDED


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
        e.storage.put_bytes(key, png(g.image), "image/png")
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


DIVERSITY_SAMPLE = 256  # images the diversity figures are computed on (pairwise: O(n^2))


def _copy_guard(e: Env, gallery: Gallery):
    """The gallery's copy guard: its run's training photos through the feature network for
    the run's base model. Records the network and threshold in force on the gallery."""
    from worker import copyguard

    with e.sessions() as db:
        photos = list(repo.photos_of_set(db, gallery.run.photo_set_id))
    paths = download_photos(e, photos, e.settings.resolved_work_dir / "runs" / str(gallery.run_id) / "photos")
    device = "cpu"
    if e.settings.copy_guard_model:
        from worker.domainstudio.training import resolve_device

        device = str(resolve_device(e.settings.device))
    network = copyguard.feature_network(gallery.run.base_model, e.settings.copy_guard_model, device)
    guard = copyguard.CopyGuard(network, [_open_image(p) for p in paths], [p.id for p in photos],
                                e.settings.near_copy_threshold)
    set_row(e, Gallery, gallery.id, feature_network=network.name, near_copy_threshold=guard.threshold)
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
                repo.set_nearest(db, r.id, m.distance, m.photo_id)
            db.commit()
    with e.sessions() as db:
        repo.mark_near_copies(db, gallery.id, guard.threshold)
        db.commit()
    step = max(1, -(-len(rows) // DIVERSITY_SAMPLE))
    sample = [_open_image(BytesIO(e.storage.get_bytes(r.key))) for r in rows[::step]]
    fits = gallery.run.base_model in FMNIST_MODELS and isinstance(guard.network, ClassifierFeatures)
    set_row(e, Gallery, gallery.id, diversity=guard.diversity(sample, proxy_lpips=fits))
    log.info("gallery.measured", extra={"gallery": str(gallery.id), "network": guard.network.name,
                                        "threshold": guard.threshold})

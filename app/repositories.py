"""Every query lives here (SELECT and UPDATE; services add and delete rows through the
session). Functions that take a ``team_id`` only ever return that team's
rows, so a route cannot forget the team check: another team's id reads as missing."""
from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from app.models import (ACTIVE, Checkpoint, Gallery, Image, JobStatus, Pack, PendingDeletion, Photo, PhotoSet,
                        Run, Team, User)


def user_by_email(db: Session, email: str) -> User | None:
    return db.scalar(select(User).where(User.email == email.lower()))


def user_by_id(db: Session, user_id: uuid.UUID) -> User | None:
    return db.get(User, user_id)


def _owned(db: Session, model, team_id: uuid.UUID, obj_id: uuid.UUID, *options):
    return db.scalar(select(model).where(model.id == obj_id, model.team_id == team_id).options(*options))


def photo_set(db: Session, team_id, photo_set_id, with_photos: bool = False) -> PhotoSet | None:
    opts = (selectinload(PhotoSet.photos),) if with_photos else ()
    return _owned(db, PhotoSet, team_id, photo_set_id, *opts)


def photo_sets(db: Session, team_id) -> Sequence[tuple[PhotoSet, int]]:
    count = select(func.count(Photo.id)).where(Photo.photo_set_id == PhotoSet.id).scalar_subquery()
    rows = db.execute(select(PhotoSet, count).where(PhotoSet.team_id == team_id).order_by(PhotoSet.created_at.desc()))
    return [(ps, n) for ps, n in rows]


def lock_team(db: Session, team_id) -> None:
    """Serializes what counts a team's work against its quotas until the transaction ends
    (as lock_photo_set)."""
    db.execute(update(Team).where(Team.id == team_id).values(name=Team.name))


def active_runs(db: Session, team_id) -> int:
    """The team's runs waiting in the queue or training."""
    return db.scalar(select(func.count(Run.id)).where(Run.team_id == team_id, Run.status.in_(ACTIVE))) or 0


def active_packs(db: Session, team_id) -> int:
    """The team's packs waiting in the queue or being built."""
    return db.scalar(select(func.count(Pack.id)).where(Pack.team_id == team_id, Pack.status.in_(ACTIVE))) or 0


def stored_bytes(db: Session, team_id) -> int:
    """What the team's photos, checkpoints and packs take in object storage (gallery images
    have no recorded size; a gallery is bounded by max_gallery_size)."""
    total = 0
    for model in (Photo, Checkpoint, Pack):
        total += db.scalar(select(func.coalesce(func.sum(model.size_bytes), 0)).where(model.team_id == team_id)) or 0
    return int(total)


def lock_photo_set(db: Session, photo_set_id) -> None:
    """Serializes the uploads into one photo set until the transaction ends: a no-op UPDATE
    takes the row lock on Postgres and the write lock on SQLite, before the photos are
    read again."""
    db.execute(update(PhotoSet).where(PhotoSet.id == photo_set_id).values(name=PhotoSet.name))


def photo(db: Session, team_id, photo_id) -> Photo | None:
    return _owned(db, Photo, team_id, photo_id)


def photos_of_set(db: Session, photo_set_id) -> Sequence[Photo]:
    return db.scalars(select(Photo).where(Photo.photo_set_id == photo_set_id).order_by(Photo.created_at, Photo.id)).all()


def photo_count(db: Session, photo_set_id) -> int:
    return db.scalar(select(func.count(Photo.id)).where(Photo.photo_set_id == photo_set_id)) or 0


def photo_hashes(db: Session, photo_set_id) -> set[str]:
    return set(db.scalars(select(Photo.sha256).where(Photo.photo_set_id == photo_set_id)))


def run(db: Session, team_id, run_id) -> Run | None:
    return _owned(db, Run, team_id, run_id, selectinload(Run.photo_set), selectinload(Run.checkpoint))


def run_by_id(db: Session, run_id) -> Run | None:
    """For workers, which act on an id they were given by the app."""
    return db.get(Run, run_id, options=[selectinload(Run.photo_set), selectinload(Run.checkpoint)])


def runs_by_ids(db: Session, run_ids) -> Sequence[Run]:
    """For the event streams' poller, which checked each run's team when its stream opened."""
    return db.scalars(select(Run).where(Run.id.in_(list(run_ids))).options(selectinload(Run.checkpoint))).all()


def runs(db: Session, team_id, photo_set_id=None, limit: int = 50) -> Sequence[Run]:
    q = select(Run).where(Run.team_id == team_id).options(selectinload(Run.photo_set))
    if photo_set_id is not None:
        q = q.where(Run.photo_set_id == photo_set_id)
    return db.scalars(q.order_by(Run.created_at.desc()).limit(limit)).all()


def is_canceled(db: Session, run_id) -> bool:
    return bool(db.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def checkpoint_of_run(db: Session, run_id) -> Checkpoint | None:
    return db.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id))


def galleries_of_run(db: Session, run_id) -> Sequence[Gallery]:
    return db.scalars(select(Gallery).where(Gallery.run_id == run_id).order_by(Gallery.created_at)).all()


def gallery(db: Session, team_id, gallery_id) -> Gallery | None:
    return _owned(db, Gallery, team_id, gallery_id, selectinload(Gallery.run).selectinload(Run.photo_set))


def gallery_by_id(db: Session, gallery_id) -> Gallery | None:
    return db.get(Gallery, gallery_id, options=[selectinload(Gallery.run).selectinload(Run.photo_set)])


def images_of_gallery(db: Session, gallery_id, review: str | None = None) -> Sequence[Image]:
    q = select(Image).where(Image.gallery_id == gallery_id)
    if review:
        q = q.where(Image.review == review)
    return db.scalars(q.order_by(Image.seed)).all()


def image_seeds(db: Session, gallery_id) -> set[int]:
    return set(db.scalars(select(Image.seed).where(Image.gallery_id == gallery_id)))


def image(db: Session, team_id, image_id) -> Image | None:
    return _owned(db, Image, team_id, image_id)


def images_by_ids(db: Session, gallery_id, ids: list[str]) -> Sequence[Image]:
    wanted = [uuid.UUID(i) for i in ids]
    return db.scalars(select(Image).where(Image.gallery_id == gallery_id, Image.id.in_(wanted)).order_by(Image.seed)).all()


def pack(db: Session, team_id, pack_id) -> Pack | None:
    return _owned(db, Pack, team_id, pack_id)


def pack_by_id(db: Session, pack_id) -> Pack | None:
    return db.get(Pack, pack_id)


def packs_of_gallery(db: Session, gallery_id) -> Sequence[Pack]:
    return db.scalars(select(Pack).where(Pack.gallery_id == gallery_id).order_by(Pack.created_at.desc())).all()


# ------------------------------------------------------------------ gallery review pages
def where_shown(q, show: str):
    """Images of one filter of the gallery page: a review state, near copies, or all ("")."""
    if show == "near":
        return q.where(Image.near_copy.is_(True))
    if show:
        return q.where(Image.review == show)
    return q


def image_counts(db: Session, gallery_id) -> dict[str, int]:
    """{"new", "approved", "rejected", "near", "all"}: one GROUP BY, not the rows."""
    counts = {"new": 0, "approved": 0, "rejected": 0, "near": 0}
    rows = db.execute(select(Image.review, Image.near_copy, func.count(Image.id))
                      .where(Image.gallery_id == gallery_id).group_by(Image.review, Image.near_copy))
    for review, near, n in rows:
        counts[review] = counts.get(review, 0) + n
        if near:
            counts["near"] += n
    counts["all"] = counts["new"] + counts["approved"] + counts["rejected"]
    return counts


def images_page(db: Session, gallery_id, show: str, offset: int, limit: int) -> Sequence[Image]:
    q = where_shown(select(Image).where(Image.gallery_id == gallery_id), show)
    return db.scalars(q.order_by(Image.seed).offset(offset).limit(limit)).all()


def image_ids_shown(db: Session, gallery_id, show: str) -> list[uuid.UUID]:
    """The ids of one filter, in gallery order (the large view's previous / next)."""
    return list(db.scalars(where_shown(select(Image.id).where(Image.gallery_id == gallery_id), show).order_by(Image.seed)))


# ----------------------------------------------------------------- the queue and speeds
# These read every team's rows on purpose: the gpu queue and the machine's speed are
# shared. Callers show another team's rows only as counts (app/services/waiting.py).
def in_line_since(model):
    """When a job joined the broker's line: its last send (for a storage retry, the time the
    retry is due), or its creation while it is committed but not sent yet."""
    return func.coalesce(model.sent_at, model.created_at)


def gpu_jobs_ahead(db: Session, since) -> tuple[Sequence[tuple[Run, str]], Sequence[tuple[Gallery, str]]]:
    """Runs and galleries a job in line since ``since`` waits behind: those running, and
    those in line before it (the gpu workers take jobs in the order they were sent); each
    with its photo set's name."""
    def ahead(model):
        return (model.status == JobStatus.RUNNING) | ((model.status == JobStatus.QUEUED) & (in_line_since(model) < since))

    run_rows = db.execute(select(Run, PhotoSet.name).join(PhotoSet, PhotoSet.id == Run.photo_set_id)
                          .where(ahead(Run)).order_by(in_line_since(Run)))
    gallery_rows = db.execute(select(Gallery, PhotoSet.name).join(Run, Run.id == Gallery.run_id)
                              .join(PhotoSet, PhotoSet.id == Run.photo_set_id)
                              .where(ahead(Gallery)).order_by(in_line_since(Gallery)))
    return [tuple(r) for r in run_rows], [tuple(g) for g in gallery_rows]


def _in_turn_line(model, now):
    """Queued and handed to the broker (a storage retry only once it is due), not canceled."""
    return and_(model.status == JobStatus.QUEUED, model.sent_at.is_not(None), model.sent_at <= now,
                model.cancel_requested.is_(False))


def waiting_for_a_turn(db: Session, run: Run, now) -> str | None:
    """What waits in line for ``run``'s worker (worker/turns.py): a gallery, another team's
    run, or an earlier run of its team; None when nothing does."""
    if db.scalar(select(Gallery.id).where(_in_turn_line(Gallery, now)).limit(1)) is not None:
        return "a gallery is waiting"
    runs = select(Run.id).where(_in_turn_line(Run, now), Run.id != run.id).limit(1)
    if db.scalar(runs.where(Run.team_id != run.team_id)) is not None:
        return "another team's run is waiting"
    if db.scalar(runs.where(Run.team_id == run.team_id, Run.created_at < run.created_at)) is not None:
        return "an earlier run of its team is waiting"
    return None


def run_back_in_line(db: Session, run_id, attempt: int, step: int) -> bool:
    """A running run goes back to queued at ``step`` while delivery ``attempt`` still holds it."""
    done = db.execute(update(Run).where(Run.id == run_id, Run.attempts == attempt, Run.status == JobStatus.RUNNING)
                      .values(status=JobStatus.QUEUED, step=step, heartbeat_at=None, worker=None, sent_at=None,
                              eta_seconds=None))
    return done.rowcount == 1


def finished_runs_of_model(db: Session, base_model: str, limit: int = 5) -> Sequence[Run]:
    """The latest succeeded runs of a base model on this installation (their stage times
    tell how fast this machine is)."""
    return db.scalars(select(Run).where(Run.base_model == base_model, Run.status == JobStatus.SUCCEEDED)
                      .order_by(Run.finished_at.desc()).limit(limit)).all()


def busy_jobs(db: Session, run_ids: list, gallery_ids: list) -> bool:
    """Whether a run of ``run_ids``, a gallery of those runs or of ``gallery_ids``, or a
    pack of those galleries is queued or running (its worker would write to what a
    deletion removes)."""
    packs_of = Gallery.run_id.in_(run_ids) if run_ids else Gallery.id.in_(gallery_ids)
    return bool(
        (run_ids and db.scalar(select(Run.id).where(Run.id.in_(run_ids), Run.status.in_(ACTIVE)).limit(1)))
        or (run_ids and db.scalar(select(Gallery.id).where(Gallery.run_id.in_(run_ids), Gallery.status.in_(ACTIVE))
                                  .limit(1)))
        or (gallery_ids and db.scalar(select(Gallery.id).where(Gallery.id.in_(gallery_ids),
                                                                Gallery.status.in_(ACTIVE)).limit(1)))
        or db.scalar(select(Pack.id).join(Gallery, Pack.gallery_id == Gallery.id)
                     .where(Pack.status.in_(ACTIVE), packs_of).limit(1)))


# -------------------------------------------------------------------------- images
def review_images(db: Session, team_id, gallery_id, review: str, *, show: str | None = None,
                  image_ids: set[uuid.UUID] | None = None) -> int:
    """Sets the review of the gallery's images of filter ``show`` (where_shown), or of
    ``image_ids``, in one UPDATE; returns how many were updated."""
    q = update(Image).where(Image.gallery_id == gallery_id, Image.team_id == team_id)
    q = where_shown(q, show) if show is not None else q.where(Image.id.in_(image_ids or ()))
    return db.execute(q.values(review=review).execution_options(synchronize_session=False)).rowcount


def set_nearest(db: Session, image_id, distance: float, photo_id) -> None:
    """The copy guard's measurement of one image: its distance to the nearest photo."""
    db.execute(update(Image).where(Image.id == image_id).values(nearest_distance=distance, nearest_photo_id=photo_id))


def mark_near_copies(db: Session, gallery_id, threshold: float) -> None:
    """near_copy of every measured image of the gallery, under ``threshold``."""
    db.execute(update(Image).where(Image.gallery_id == gallery_id, Image.nearest_distance.is_not(None))
               .values(near_copy=Image.nearest_distance < threshold))


# -------------------------------------------------------- jobs: leases and the watchdog
# ``model`` is a job table (Run, Gallery or Pack: app.models.Job). A worker serves every
# team, so these read and write any team's rows; they take ids the worker was sent.
def run_for_update(db: Session, run_id) -> Run | None:
    """The run, locked until the transaction ends (a run and its gallery both add to
    stage_times)."""
    return db.get(Run, run_id, with_for_update=True)


def update_job(db: Session, model, obj_id, **values) -> int:
    """Sets ``values`` on one job row; returns 1, or 0 when the row is gone."""
    return db.execute(update(model).where(model.id == obj_id).values(**values)).rowcount


def cancel_requested(db: Session, model, obj_id) -> bool:
    return bool(db.scalar(select(model.cancel_requested).where(model.id == obj_id)))


def mark_sent(db: Session, model, obj_id, at) -> None:
    db.execute(update(model).where(model.id == obj_id).values(sent_at=at))


def abandoned(model, stale_before, or_never_beat: bool = True):
    """Running, but its worker sent no heartbeat since ``stale_before``. A running job
    without any heartbeat was released by its owner (the embedded app's restart) or
    predates heartbeats: ``or_never_beat`` counts it too."""
    stale = model.heartbeat_at < stale_before
    return and_(model.status == JobStatus.RUNNING, or_(model.heartbeat_at.is_(None), stale) if or_never_beat else stale)


def job_lease(db: Session, model, obj_id):
    """(attempts, status, worker) of the job, or None when it is gone."""
    return db.execute(select(model.attempts, model.status, model.worker).where(model.id == obj_id)).first()


def claim_job(db: Session, model, obj_id, attempts: int, *, stale_before, dead_holder: str | None, worker: str,
              at) -> bool:
    """Claims the job in one compare-and-set on ``attempts``: a queued one, an abandoned
    one, or (``dead_holder``) one whose worker process is known to be gone."""
    if dead_holder is not None:
        free = and_(model.status == JobStatus.RUNNING, model.worker == dead_holder)
    else:
        free = or_(model.status == JobStatus.QUEUED, abandoned(model, stale_before))
    done = db.execute(update(model).where(model.id == obj_id, model.attempts == attempts, free)
                      .values(status=JobStatus.RUNNING, heartbeat_at=at, attempts=attempts + 1, worker=worker))
    return done.rowcount == 1


def update_held_job(db: Session, model, obj_id, attempt: int, **values) -> bool:
    """Sets ``values`` on the job while delivery ``attempt`` still holds it (a heartbeat, a
    retry); False when another delivery claimed it since."""
    done = db.execute(update(model).where(model.id == obj_id, model.attempts == attempt).values(**values))
    return done.rowcount == 1


def stale_jobs(db: Session, model, stale_before) -> list[tuple]:
    """(id, attempts, failures) of the running jobs whose heartbeat went stale."""
    return [tuple(r) for r in db.execute(select(model.id, model.attempts, model.failures)
                                         .where(abandoned(model, stale_before, False)))]


def running_jobs(db: Session, model) -> list[tuple]:
    """(id, attempts, failures, worker) of every running job."""
    return [tuple(r) for r in db.execute(select(model.id, model.attempts, model.failures, model.worker)
                                         .where(model.status == JobStatus.RUNNING))]


def take_orphan(db: Session, model, obj_id, attempts: int, *, stale_before=None, holder: str | None = None,
                **values) -> bool:
    """Sets ``values`` on a job whose worker died (its heartbeat older than
    ``stale_before``, or held by ``holder``), if no delivery claimed it since: of all
    watchdogs exactly one moves it."""
    still = abandoned(model, stale_before, False) if holder is None else model.worker == holder
    done = db.execute(update(model).where(model.id == obj_id, model.attempts == attempts,
                                          model.status == JobStatus.RUNNING, still).values(**values))
    return done.rowcount == 1


def queued_job_ids(db: Session, model) -> list:
    return list(db.scalars(select(model.id).where(model.status == JobStatus.QUEUED)))


def unsent_job_ids(db: Session, model, before) -> list:
    """Queued jobs created before ``before`` and never sent, or whose storage retry was due
    before ``before``."""
    never = and_(model.sent_at.is_(None), model.created_at < before)
    overdue_retry = and_(model.error.is_not(None), model.sent_at < before)
    return list(db.scalars(select(model.id).where(model.status == JobStatus.QUEUED, or_(never, overdue_retry))))


def release_running_jobs(db: Session, model) -> None:
    """Frees every running job for the next claim and forgets its holder (the embedded
    app's workers died with it)."""
    db.execute(update(model).where(model.status == JobStatus.RUNNING).values(heartbeat_at=None, worker=None))


def active_job_ids(db: Session, model) -> list:
    return list(db.scalars(select(model.id).where(model.status.in_(ACTIVE))))


def pending_deletions(db: Session, limit: int) -> Sequence[PendingDeletion]:
    return db.scalars(select(PendingDeletion).order_by(PendingDeletion.created_at).limit(limit)).all()


def photo_object_in_use(db: Session, key: str) -> bool:
    """Whether a photo (or its thumbnail) is stored under ``key`` (the same photo uploaded
    again after its deletion failed)."""
    return db.scalar(select(Photo.id).where(or_(Photo.key == key, Photo.thumb_key == key)).limit(1)) is not None

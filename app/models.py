"""Tables: teams, users, photo sets, photos, runs, checkpoints, galleries, images, packs.
Runs, galleries and packs are jobs: they share the ``Job`` columns and ``JobStatus``.

Every row that belongs to a team carries ``team_id`` so that each query can be scoped to
the signed-in user's team in one WHERE clause.
"""
from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, false, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, utcnow



class JobStatus(enum.StrEnum):
    """Where a job (run, gallery, pack) stands. A str enum: the database stores, and the
    API and pages show, the plain values ("queued", ...); a value read back from the
    database is a plain str and compares equal to its member."""

    QUEUED = "queued"  # waiting for a worker (or for a storage retry, see sent_at)
    RUNNING = "running"  # claimed by a worker that sends heartbeats
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


# a job in one of these states is over: no worker touches it again
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
# a job waiting in the queue or being worked on
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def _team_fk() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)


def _heartbeat() -> Mapped[datetime | None]:
    """Written by the job's worker every few seconds; a stale one means the worker died."""
    return mapped_column(DateTime(timezone=True), nullable=True)


def _worker() -> Mapped[str | None]:
    """host:pid of the worker process that claimed the job."""
    return mapped_column(String(200), nullable=True)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow)


class Job:
    """The columns every job row (run, gallery, pack) has: its status, the lease a worker
    holds on it (app.jobs, worker/tasks/leases.py) and the error it ended with."""

    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the error as {"msgid", "params"} (English msgid, see worker/domainstudio/errors.py), so
    # that pages show it in the reader's language; ``error`` keeps the English text
    error_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    heartbeat_at: Mapped[datetime | None] = _heartbeat()
    worker: Mapped[str | None] = _worker()
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # deliveries that claimed the job
    # deliveries whose worker died on the job (the watchdog gives up after max_job_attempts)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # when the job was last handed to the broker; None: committed as queued, not sent yet
    # (the process died in between): the watchdog sends it
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    # sessions carry the epoch they were issued in; signing out bumps it, so a copied
    # cookie stops working (the session cookie itself is stateless)
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _created()
    team: Mapped[Team] = relationship(lazy="raise")


class PhotoSet(Base):
    __tablename__ = "photo_sets"
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    name: Mapped[str] = mapped_column(String(200))
    class_word: Mapped[str] = mapped_column(String(100))
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _created()
    photos: Mapped[list[Photo]] = relationship(
        back_populates="photo_set", lazy="raise", order_by="Photo.created_at",
        cascade="all, delete-orphan", passive_deletes=True,
    )


class Photo(Base):
    __tablename__ = "photos"
    __table_args__ = (UniqueConstraint("photo_set_id", "sha256", name="uq_photos_photo_set_id_sha256"),)
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    photo_set_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("photo_sets.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(50))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(500))
    thumb_key: Mapped[str] = mapped_column(String(500))
    # trained after the trigger words ("a photo of sks bottle, <caption>"); None: none
    caption: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = _created()
    photo_set: Mapped[PhotoSet] = relationship(back_populates="photos", lazy="raise")


class Run(Job, Base):
    __tablename__ = "runs"
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    photo_set_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("photo_sets.id", ondelete="CASCADE"), index=True)
    preset: Mapped[str] = mapped_column(String(50))
    base_model: Mapped[str] = mapped_column(String(500))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    gallery_size: Mapped[int] = mapped_column(Integer)
    # runs are looked up by status (the queue position, the speed of finished runs)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    stage: Mapped[str] = mapped_column(String(30), default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    losses: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    elapsed_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    preview_count: Mapped[int] = mapped_column(Integer, default=0)
    preview_step: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    warning_details: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)  # as Job.error_detail
    # one entry per progress event: {"step", "elapsed", "terms": {name: value}} (the loss chart)
    loss_history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    # seconds each stage took: {"queued", "download", "adapt", "publish", "gallery"} (the run report)
    stage_times: Mapped[dict[str, float]] = mapped_column(JSON, default=dict, server_default="{}")
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    photo_set: Mapped[PhotoSet] = relationship(lazy="raise")
    checkpoint: Mapped[Checkpoint | None] = relationship(
        back_populates="run", lazy="raise", uselist=False, cascade="all, delete-orphan", passive_deletes=True
    )


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # "lora" or "full"
    base_model: Mapped[str] = mapped_column(String(500))
    prefix: Mapped[str] = mapped_column(String(500))  # object prefix of the run's output files
    download_key: Mapped[str] = mapped_column(String(500))  # lora.safetensors or model.zip
    download_name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[list[str]] = mapped_column(JSON, default=list)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    # text-to-image: {photo file name: the prompt it was trained with}
    prompts: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = _created()
    run: Mapped[Run] = relationship(back_populates="checkpoint", lazy="raise")


class Gallery(Job, Base):
    __tablename__ = "galleries"
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    size: Mapped[int] = mapped_column(Integer)  # images wanted in total (grows with "generate more")
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    steps: Mapped[int] = mapped_column(Integer)
    # copy guard and diversity: which feature network measured them, the near-copy
    # threshold in force, and {"mean_pairwise_distance", "proxy_intra_lpips", "images"}
    feature_network: Mapped[str | None] = mapped_column(String(200), nullable=True)
    near_copy_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    diversity: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = _created()
    run: Mapped[Run] = relationship(lazy="raise")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("gallery_id", "seed", name="uq_images_gallery_id_seed"),)
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    gallery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(500))
    thumb_key: Mapped[str] = mapped_column(String(500))
    review: Mapped[str] = mapped_column(String(20), default="new")  # new / approved / rejected
    # copy guard: feature distance to the nearest training photo (no FK: a deleted photo
    # leaves the measurement standing) and whether it is under the near-copy threshold
    nearest_distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    nearest_photo_id: Mapped[uuid.UUID | None] = mapped_column(nullable=True)
    near_copy: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = _created()


class Pack(Job, Base):
    __tablename__ = "packs"
    id: Mapped[uuid.UUID] = _id()
    team_id: Mapped[uuid.UUID] = _team_fk()
    gallery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    selection: Mapped[str] = mapped_column(String(20))  # approved / all
    image_ids: Mapped[list[str]] = mapped_column(JSON)  # fixed when the pack is requested
    format: Mapped[str] = mapped_column(String(10))
    size: Mapped[str] = mapped_column(String(100))
    exclude_near_copies: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    estimated_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # 0..1 while building
    key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PendingDeletion(Base):
    """An object (or a folder of them, ``prefix``) whose rows are gone but whose deletion
    failed because the object store was unreachable; the workers' watchdog retries it."""

    __tablename__ = "pending_deletions"
    id: Mapped[uuid.UUID] = _id()
    key: Mapped[str] = mapped_column(String(500))
    prefix: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _created()

"""Waiting with information: where a queued run or gallery stands in the gpu queue and what
is ahead of it, and how long each preset would take on this machine.

Both read the database only. The queue position counts the jobs running and those in line
before it: the gpu workers take jobs in the order they were sent, so a job sent again (a
storage retry, due later; a job the watchdog re-sent) counts from that send (``sent_at``,
issue 13), one not sent yet from its creation; the times come from the
runs this installation finished with the same base model, so they are this machine's own.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session

from app import repositories as repo
from app.models import Gallery, JobStatus, Run
from app.presets import PRESETS


@dataclass
class Ahead:
    kind: str  # "run" or "gallery"
    id: str
    photo_set: str
    status: str
    step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None


@dataclass
class QueueSpot:
    position: int  # 1: the next job a worker takes
    ahead: list[Ahead] = field(default_factory=list)  # this team's jobs ahead, by name
    others_ahead: int = 0  # other teams' jobs ahead, counted only
    wait_seconds: float | None = None  # None: some job ahead has no estimate yet

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "others_ahead": self.others_ahead, "wait_seconds": self.wait_seconds,
                "ahead": [vars(a) for a in self.ahead]}


@dataclass
class Speed:
    """This machine's measured times for one base model (medians of its latest runs)."""
    seconds_per_step: float
    seconds_per_image: float | None
    fixed_seconds: float  # download, loading and saving: what does not grow with the steps

    def run_seconds(self, steps: int, gallery_size: int) -> float:
        gallery = gallery_size * self.seconds_per_image if self.seconds_per_image is not None else 0.0
        return self.fixed_seconds + steps * self.seconds_per_step + gallery


def machine_speed(db: Session, base_model: str) -> Speed | None:
    """None until a run of this base model succeeded here."""
    per_step, per_image, fixed = [], [], []
    for run in repo.finished_runs_of_model(db, base_model):
        times = run.stage_times or {}
        if times.get("adapt") and run.total_steps:
            per_step.append(times["adapt"] / run.total_steps)
            fixed.append(times.get("download", 0.0) + times.get("publish", 0.0))
        if times.get("gallery") and run.gallery_size:
            per_image.append(times["gallery"] / run.gallery_size)
    if not per_step:
        return None
    return Speed(statistics.median(per_step), statistics.median(per_image) if per_image else None,
                 statistics.median(fixed))


def preset_estimates(db: Session, base_model: str, gallery_size: int) -> dict[str, float]:
    """Seconds each preset would take with ``base_model``, from training to gallery; empty
    until this machine finished a run of the model (nothing honest to say before)."""
    speed = machine_speed(db, base_model)
    if speed is None:
        return {}
    return {name: speed.run_seconds(p.settings["steps"], gallery_size) for name, p in PRESETS.items()}


def _remaining(db: Session, job: Run | Gallery, speeds: dict) -> float | None:
    if isinstance(job, Run):
        if job.status == JobStatus.RUNNING and job.eta_seconds is not None:
            return job.eta_seconds
        speed = speeds.setdefault(job.base_model, machine_speed(db, job.base_model))
        return speed.run_seconds(job.total_steps - job.step, 0) if speed else None
    run = repo.run_by_id(db, job.run_id)
    speed = speeds.setdefault(run.base_model, machine_speed(db, run.base_model)) if run else None
    if speed is None or speed.seconds_per_image is None:
        return None
    done = len(repo.image_seeds(db, job.id))
    return max(job.size - done, 0) * speed.seconds_per_image


def _in_line_since(job: Run | Gallery) -> datetime:
    """As repositories.in_line_since, in Python (UTC: SQLite hands back naive datetimes)."""
    moment = job.sent_at or job.created_at
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def queue_spot(db: Session, team_id, job: Run | Gallery) -> QueueSpot | None:
    """Where a queued job stands; None when it is not waiting in the queue."""
    if job.status != JobStatus.QUEUED:
        return None
    runs, galleries = repo.gpu_jobs_ahead(db, _in_line_since(job))
    jobs = [(r, name, "run") for r, name in runs if r.id != job.id] + \
        [(g, name, "gallery") for g, name in galleries if g.id != job.id]
    spot = QueueSpot(position=len(jobs) + 1)
    speeds: dict = {}
    waits = []
    for row, name, kind in sorted(jobs, key=lambda j: (j[0].status != JobStatus.RUNNING, _in_line_since(j[0]))):
        waits.append(_remaining(db, row, speeds))
        if row.team_id != team_id:
            spot.others_ahead += 1
            continue
        spot.ahead.append(Ahead(kind, str(row.id), name, row.status, getattr(row, "step", 0),
                                getattr(row, "total_steps", 0), getattr(row, "eta_seconds", None)))
    spot.wait_seconds = sum(waits) if all(w is not None for w in waits) else None
    return spot

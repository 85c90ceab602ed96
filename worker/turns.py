"""Turns on the gpu queue: a long run gives its worker up to what waits behind it.

The gpu queue is first-in-first-out on both brokers (Redis lists; the SQL broker of the
embedded default), and a run held its worker for its whole training: a finished run's
gallery sat ~30 minutes behind the next run on the embedded default's one training worker,
and one team's queued runs went before another team's run. Broker priorities exist on
Redis only and reorder only messages not yet taken, so the workers take turns instead, in
time slices decided from the database:

- a run that has trained for ``run_slice_seconds`` in this turn asks before each further
  step (at most every ``job_heartbeat_seconds``) whether something waits in line that
  should go first: a gallery (galleries are short and never give up theirs), a run of
  another team, or a run of its own team created before it;
- if so, the core stops and saves the training state as on any interruption, the worker
  copies it to object storage, puts the run back to queued (a compare-and-set on its claim:
  a delivery taken for dead touches nothing) and sends its job again, to the back of the
  queue. The task ends cleanly; its lease and heartbeat end with it. The next delivery
  resumes from the saved state, on any worker, with the same steps and seeds.

A turn given up is no failure: ``failures`` (which ``max_job_attempts`` caps) counts the
deaths of workers only, and the run keeps no error. ``attempts`` counts claims, so it grows
by one per turn. Waiting jobs count only once they are in line (sent, and a storage retry
only once due), so a job that merely waits for its retry makes nobody give up a turn.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from sqlalchemy.exc import SQLAlchemyError

from app import repositories as repo
from app.errors import Unavailable
from app.jobs import ADAPT_RUN
from app.models import Run

log = logging.getLogger("domainstudio.worker")


class TurnOver(Exception):
    """Raised from the core's should_stop: the run gives its worker to what waits."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def waiting_before(db, run: Run) -> str | None:
    """Why ``run`` should let a job waiting in line have the worker, or None."""
    return repo.waiting_for_a_turn(db, run, datetime.now(timezone.utc))


class Turn:
    """One delivery's turn of a run on its worker. ``check()`` is called before each
    training step; the slice counts from the turn's first step (loading the model is no
    turn: a run whose loading outlasted the slice would otherwise never train)."""

    def __init__(self, e, run: Run):
        self.e, self.run = e, run
        self.started: float | None = None
        self.next_check = 0.0

    def check(self) -> None:
        slice_seconds = self.e.settings.run_slice_seconds
        now = time.monotonic()
        if slice_seconds <= 0:
            return
        if self.started is None:
            self.started = now
            return
        if now - self.started < slice_seconds or now < self.next_check:
            return
        self.next_check = now + self.e.settings.job_heartbeat_seconds
        try:
            with self.e.sessions() as db:
                reason = waiting_before(db, self.run)
        except SQLAlchemyError:  # the database is unreachable: keep training, ask again later
            return
        if reason:
            raise TurnOver(reason)


def give_up_turn(e, run_id, heartbeat, reason: str, step: int) -> str:
    """After the core stopped at ``step`` and its state went to object storage: the run back
    in line (only while this delivery still holds it) and its job sent to the back of the
    queue. A send that fails leaves the row unsent: the watchdog sends it (resend_unsent)."""
    if heartbeat.superseded:
        return "superseded"
    with e.sessions() as db:
        mine = repo.run_back_in_line(db, run_id, heartbeat.attempt, step)
        db.commit()
        if not mine:
            return "superseded"
        log.info("run.turn.given", extra={"run": str(run_id), "step": step, "reason": reason})
        try:
            e.queue.send_row(db, Run, ADAPT_RUN, run_id)
        except Unavailable:
            log.warning("run.turn.send_failed", extra={"run": str(run_id)})
    return "turn given"

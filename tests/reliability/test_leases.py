"""The job leases on their own (no worker process): the watchdog re-queues exactly the jobs
whose worker stopped sending heartbeats on another machine, a second delivery of a live job
is refused, and a worker whose job was taken over learns it from its heartbeat."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis
from sqlalchemy import update

from app.jobs import JobQueue, make_celery
from app.models import Run
from web_helpers import REDIS, new_photo_set, production_settings, sign_up
from worker.tasks import leases, watchdog
from worker.tasks.env import Env


@pytest.fixture(autouse=True)
def no_jobs_left_waiting(pg_url):
    """These tests write queued and running rows straight into the session's database; none
    is left waiting before or after each one, so that no watchdog of another module's worker
    sends them to its queues (it would train them) and the queue-order test sees only its own."""
    from sqlalchemy import create_engine

    from app.models import Gallery, Pack

    def cancel_all():
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            for model in (Run, Gallery, Pack):
                conn.execute(update(model).where(model.status.in_(("queued", "running"))).values(status="canceled"))
        engine.dispose()

    cancel_all()
    yield
    cancel_all()


def make_env(settings):
    from app.db import make_engine, make_sessionmaker

    return Env(settings, make_sessionmaker(make_engine(settings.resolved_database_url)), None,
               JobQueue(make_celery(settings)))


def add_run(e, team, ps, **values) -> uuid.UUID:
    with e.sessions() as db:
        run = Run(team_id=uuid.UUID(team), photo_set_id=uuid.UUID(ps), preset="quick", base_model="builtin:tiny-ddpm",
                  settings={"steps": 1}, gallery_size=1, **values)
        db.add(run)
        db.commit()
        return run.id


def test_watchdog_requeues_only_stale_jobs_and_a_live_job_is_claimed_once(make_client, pg_url, s3_endpoint, queues,
                                                                         tmp_path):
    q = {k: v + "-lease" for k, v in queues.items()}
    settings = production_settings(tmp_path, pg_url, s3_endpoint, q, job_stale_seconds=30)
    client = make_client(settings)
    team = sign_up(client)["user"]["team_id"]
    ps = new_photo_set(client, n_photos=0)
    e = make_env(settings)
    broker = redis.Redis.from_url(REDIS)
    broker.set(f"domainstudio:broker-marker:{q['queue_gpu']}", "1")  # the broker kept its data
    now = datetime.now(timezone.utc)
    dead = add_run(e, team, ps, status="running", heartbeat_at=now - timedelta(minutes=5), worker="gpu-7/4026531836:123",
                   attempts=1)
    alive = add_run(e, team, ps, status="running", heartbeat_at=now, worker="gpu-8/4026531836:456", attempts=1)
    queued = add_run(e, team, ps, status="queued")
    try:
        assert watchdog.recover_orphans(e) == 1
        assert broker.llen(q["queue_gpu"]) == 1
        with e.sessions() as db:
            assert [db.get(Run, i).status for i in (dead, alive, queued)] == ["queued", "running", "queued"]
        assert watchdog.recover_orphans(e) == 0  # and only once

        # a second delivery of the live run is refused; the re-queued one is claimed once
        assert leases.claim(e, Run, alive) is None
        assert leases.claim(e, Run, dead) == 2 and leases.claim(e, Run, dead) is None

        # Redis came back empty: every queued job is sent again
        broker.delete(q["queue_gpu"], f"domainstudio:broker-marker:{q['queue_gpu']}")
        assert watchdog.recover_orphans(e) == 1 and broker.llen(q["queue_gpu"]) == 1  # the queued run
    finally:
        broker.delete(*q.values(), f"domainstudio:broker-marker:{q['queue_gpu']}")
        broker.close()


def test_a_worker_whose_job_was_taken_over_stops(make_client, pg_url, s3_endpoint, queues, tmp_path):
    q = {k: v + "-lease2" for k, v in queues.items()}
    settings = production_settings(tmp_path, pg_url, s3_endpoint, q, job_heartbeat_seconds=0.1)
    client = make_client(settings)
    team = sign_up(client)["user"]["team_id"]
    ps = new_photo_set(client, n_photos=0)
    e = make_env(settings)
    run = add_run(e, team, ps, status="queued")
    attempt = leases.claim(e, Run, run)
    assert attempt == 1
    with leases.Heartbeat(e, Run, run, attempt) as beat:
        time.sleep(0.3)
        assert not beat.superseded
        with e.sessions() as db:  # another delivery took it over (this worker was taken for dead)
            db.execute(update(Run).where(Run.id == run).values(attempts=2))
            db.commit()
        deadline = time.monotonic() + 5
        while not beat.superseded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beat.superseded
        try:
            beat.check()
        except leases.Superseded:
            pass
        else:
            raise AssertionError("check() did not stop the superseded worker")


def test_a_holder_counts_as_dead_only_on_this_machine_and_namespace():
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    here = leases.worker_id().rpartition(":")[0]
    try:
        assert not leases.holder_died(f"{here}:{child.pid}")  # alive
        assert not leases.holder_died(f"{here}:{__import__('os').getpid()}")  # ourselves
    finally:
        child.kill()
        child.wait()
    assert leases.holder_died(f"{here}:{child.pid}")  # gone
    assert not leases.holder_died(f"other-host/1:{child.pid}")  # elsewhere: only the heartbeat can tell
    assert not leases.holder_died(None) and not leases.holder_died("garbage")


def test_a_job_whose_worker_keeps_dying_is_given_up_with_the_reason(make_client, pg_url, s3_endpoint, queues,
                                                                   tmp_path):
    """The finding: nothing capped attempts, so the watchdog (and a restart) sent a job that
    killed its worker (the OOM killer's SIGKILL) to the next worker, again and again."""
    q = {k: v + "-giveup" for k, v in queues.items()}
    settings = production_settings(tmp_path, pg_url, s3_endpoint, q, job_stale_seconds=30, max_job_attempts=3)
    client = make_client(settings)
    team = sign_up(client)["user"]["team_id"]
    ps = new_photo_set(client, n_photos=0)
    e = make_env(settings)
    broker = redis.Redis.from_url(REDIS)
    broker.set(f"domainstudio:broker-marker:{q['queue_gpu']}", "1")
    stale = datetime.now(timezone.utc) - timedelta(minutes=5)
    run = add_run(e, team, ps, status="running", heartbeat_at=stale, worker="gpu-7/4026531836:123", attempts=1)
    try:
        for died in (1, 2):  # the first two deaths: sent to the next worker, which dies on it too
            assert watchdog.recover_orphans(e) == 1
            assert leases.claim(e, Run, run) == died + 1
            with e.sessions() as db:
                db.execute(update(Run).where(Run.id == run).values(heartbeat_at=stale))
                db.commit()
        assert watchdog.recover_orphans(e) == 0  # the third: given up, not sent again
        with e.sessions() as db:
            row = db.get(Run, run)
            assert (row.status, row.failures, row.attempts) == ("failed", 3, 3) and row.finished_at is not None
            assert "stopped 3 times" in row.error and row.error_detail["params"] == {"n": 3}
        assert broker.llen(q["queue_gpu"]) == 2
        assert leases.claim(e, Run, run) is None
        r = client.get(f"/api/runs/{run}")
        assert r.json()["status"] == "failed" and "smaller settings" in r.json()["error"]
    finally:
        broker.delete(*q.values(), f"domainstudio:broker-marker:{q['queue_gpu']}")
        broker.close()


def test_a_job_committed_but_never_sent_is_sent_by_the_watchdog(make_client, pg_url, s3_endpoint, queues, tmp_path):
    """The finding: a run whose job could not be sent after its commit (the api died in
    between) stayed queued forever; the watchdog re-sent queued jobs only after Redis lost
    its data. The same held for a gallery whose run's worker died after the run's commit."""
    q = {k: v + "-unsent" for k, v in queues.items()}
    settings = production_settings(tmp_path, pg_url, s3_endpoint, q, job_unsent_seconds=60)
    client = make_client(settings)
    team = sign_up(client)["user"]["team_id"]
    ps = new_photo_set(client, n_photos=10)
    e = make_env(settings)
    broker = redis.Redis.from_url(REDIS)
    broker.set(f"domainstudio:broker-marker:{q['queue_gpu']}", "1")
    old = datetime.now(timezone.utc) - timedelta(minutes=5)
    try:
        r = client.post(f"/api/photo-sets/{ps}/runs", json={"preset": "quick"})  # sent, and marked so
        assert r.status_code == 201 and broker.llen(q["queue_gpu"]) == 1
        lost = add_run(e, team, ps, status="queued", created_at=old)  # committed; the api died before the send
        fresh = add_run(e, team, ps, status="queued")  # its send may still be on its way
        with e.sessions() as db:
            assert db.get(Run, uuid.UUID(r.json()["id"])).sent_at is not None
        assert watchdog.resend_unsent(e) == 1 and broker.llen(q["queue_gpu"]) == 2
        with e.sessions() as db:
            assert db.get(Run, lost).sent_at is not None and db.get(Run, fresh).sent_at is None
        assert watchdog.resend_unsent(e) == 0  # once
        assert leases.claim(e, Run, lost) == 1  # and the worker that takes it claims it as usual
        # a job waiting for a storage retry (due at sent_at) whose retry message was lost
        retrying = add_run(e, team, ps, status="queued", sent_at=old, error="the object store failed (x); trying again")
        waiting = add_run(e, team, ps, status="queued", sent_at=datetime.now(timezone.utc) + timedelta(seconds=30),
                          error="the object store failed (x); trying again")  # not due yet
        assert watchdog.resend_unsent(e) == 1 and broker.llen(q["queue_gpu"]) == 3
        with e.sessions() as db:
            assert db.get(Run, retrying).sent_at > old and db.get(Run, waiting).sent_at > old
    finally:
        broker.delete(*q.values(), f"domainstudio:broker-marker:{q['queue_gpu']}")
        broker.close()

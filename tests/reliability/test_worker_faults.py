"""Workers and the broker failing under real jobs: a GPU worker SIGKILLed mid-run (the run
resumes on another worker from its last checkpoint, kept in object storage), and Redis
restarted empty while runs are queued and running (no run lost, none run twice).

The workers run with a fast watchdog (heartbeat 0.5 s, stale after 4 s, checked every
second); production defaults are 10 s / 90 s / 30 s."""
from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.models import Checkpoint, Gallery, Image, Run
from web_helpers import REDIS, CeleryWorker, new_photo_set, poll, production_settings, sign_up

from .faults import PreforkWorker, RedisServer, events, until

pytestmark = pytest.mark.slow

FAST = {"job_heartbeat_seconds": 0.5, "job_stale_seconds": 4, "watchdog_seconds": 1, "sample_steps": 2,
        "gallery_size": 2, "sample_batch_size": 2}


def tiny_run(steps: int, checkpoint_every: int = 5) -> dict:
    return {"preset": "quick", "base_model": "builtin:tiny-ddpm", "gallery_size": 2,
            "settings": {"steps": steps, "batch_size": 2, "preview_every": 0, "checkpoint_every": checkpoint_every}}


def broker_kept_its_data(queues: dict) -> None:
    """Marks the shared Redis as not restarted for these queues, so that the watchdog does
    not resend queued jobs on its first round (harmless, but it would blur what is tested)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    client.set(f"domainstudio:broker-marker:{queues['queue_gpu']}", "1")
    client.close()


def rows(settings, model, **where):
    engine = create_engine(settings.resolved_database_url)
    try:
        with Session(engine) as db:
            q = select(model)
            for k, v in where.items():
                q = q.where(getattr(model, k) == v)
            return db.scalars(q).all()
    finally:
        engine.dispose()


def test_sigkilled_worker_run_resumes_on_another_worker_from_its_checkpoint(
        make_client, pg_url, s3_endpoint, queues, tmp_path):
    q = {k: v + "-kill" for k, v in queues.items()}
    broker_kept_its_data(q)
    settings = production_settings(tmp_path / "data", pg_url, s3_endpoint, q, **FAST)
    client = make_client(settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    a = CeleryWorker(settings.model_copy(update={"work_dir": tmp_path / "machine-a"}), tmp_path / "a.log")
    try:
        run = client.post(f"/api/photo-sets/{ps}/runs", json=tiny_run(steps=32)).json()
        poll(client, f"/api/runs/{run['id']}", lambda r: r["step"] >= 11 or r["status"] not in ("queued", "running"),
             120, "step 11")
        team = client.get("/api/me").json()["user"]["team_id"]
        state_key = f"teams/{team}/runs/{run['id']}/state/training_state.pt"
        until(lambda: client.app.state.storage.exists(state_key), 30, "the training state in object storage")
        a.proc.kill()  # SIGKILL: no warm shutdown, no ack, no requeue by the worker itself
        a.proc.wait()
        killed = time.monotonic()
    finally:
        a.stop()
    killed_at = client.get(f"/api/runs/{run['id']}").json()
    assert killed_at["status"] == "running" and killed_at["step"] < 32

    # another machine: empty work_dir, so the state can only come from object storage
    b = CeleryWorker(settings.model_copy(update={"work_dir": tmp_path / "machine-b"}), tmp_path / "b.log")
    try:
        done = poll(client, f"/api/runs/{run['id']}", lambda r: r["status"] not in ("queued", "running"), 150,
                    "the resumed run")
        assert done["status"] == "succeeded", done
        finished = time.monotonic()
        assert done["step"] == done["total_steps"] == 32
        gallery = poll(client, f"/api/galleries/{done['galleries'][0]['id']}",
                       lambda g: g["status"] not in ("queued", "running"), 90, "the gallery")
        log = b.output()
    finally:
        b.stop()
    assert gallery["status"] == "succeeded" and sorted(i["seed"] for i in gallery["images"]) == [0, 1]

    requeued = events(log, "job.requeued")
    assert [e["id"] for e in requeued] == [run["id"]]
    resumed = events(log, "run.resumed")
    assert resumed and resumed[0]["step"] >= 10 and resumed[0]["step"] % 5 == 0, log[-3000:]
    first_step_on_b = events(log, "run.step")[0]["step"]
    assert first_step_on_b == resumed[0]["step"] + 1  # not step 1: nothing trained twice from scratch
    print(f"\nkilled at step {killed_at['step']}; resumed at step {resumed[0]['step']} on a second worker; "
          f"finished 32 steps {finished - killed:.1f} s after the kill (worker start included)")

    # exactly one of everything, and the resume state is gone
    [row] = rows(settings, Run, id=uuid.UUID(run["id"]))
    assert row.attempts == 2
    assert len(rows(settings, Checkpoint, run_id=row.id)) == 1
    [g] = rows(settings, Gallery, run_id=row.id)
    assert sorted(i.seed for i in rows(settings, Image, gallery_id=g.id)) == [0, 1]
    storage = client.app.state.storage
    assert not storage.exists(state_key)
    images = storage.list_keys(f"teams/{team}/galleries/{g.id}")
    assert sorted(images) == sorted([f"teams/{team}/galleries/{g.id}/images/{s}.png" for s in (0, 1)]
                                    + [f"teams/{team}/galleries/{g.id}/thumbs/{s}.jpg" for s in (0, 1)])


def test_oom_killed_prefork_child_run_resumes_at_once(make_client, pg_url, s3_endpoint, queues, tmp_path):
    """The OOM killer's usual target is the pool child running the job: its parent requeues
    the message, and the next child claims the run at once (its holder's process is gone)
    instead of waiting for the heartbeat to go stale (here 10 minutes, so it cannot)."""
    import os
    import signal

    q = {k: v + "-oom" for k, v in queues.items()}
    broker_kept_its_data(q)
    settings = production_settings(tmp_path / "data", pg_url, s3_endpoint, q, **{**FAST, "job_stale_seconds": 600})
    client = make_client(settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    worker = PreforkWorker(settings, tmp_path / "worker.log")
    try:
        run = client.post(f"/api/photo-sets/{ps}/runs", json=tiny_run(steps=24)).json()
        poll(client, f"/api/runs/{run['id']}", lambda r: r["step"] >= 7 or r["status"] not in ("queued", "running"),
             120, "step 7")
        [child] = worker.children()
        os.kill(child, signal.SIGKILL)
        killed = time.monotonic()
        done = poll(client, f"/api/runs/{run['id']}", lambda r: r["status"] not in ("queued", "running"), 120,
                    "the resumed run")
        took = time.monotonic() - killed
        log = worker.output()
    finally:
        worker.stop()
    assert done["status"] == "succeeded" and done["step"] == done["total_steps"] == 24, done
    resumed = events(log, "run.resumed")
    assert len(resumed) == 1 and resumed[0]["step"] >= 5, log[-3000:]
    [row] = rows(settings, Run, id=uuid.UUID(run["id"]))
    assert row.attempts == 2 and len(rows(settings, Checkpoint, run_id=row.id)) == 1
    assert took < 60
    print(f"\nprefork child SIGKILLed; resumed at step {resumed[0]['step']}; finished {took:.1f} s after the kill")


def test_redis_restarted_empty_loses_no_run_and_runs_none_twice(make_client, pg_url, s3_endpoint, queues, tmp_path):
    redis_server = RedisServer(tmp_path / "redis")
    q = {k: v + "-redis" for k, v in queues.items()}
    settings = production_settings(tmp_path / "data", pg_url, s3_endpoint, q, broker_url=redis_server.url, **FAST)
    client = make_client(settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    worker = CeleryWorker(settings, tmp_path / "worker.log")
    try:
        first = client.post(f"/api/photo-sets/{ps}/runs", json=tiny_run(steps=16, checkpoint_every=4)).json()
        queued = [client.post(f"/api/photo-sets/{ps}/runs", json=tiny_run(steps=3)).json() for _ in range(2)]
        poll(client, f"/api/runs/{first['id']}", lambda r: r["step"] >= 2, 120, "the first run to train")
        assert all(client.get(f"/api/runs/{r['id']}").json()["status"] == "queued" for r in queued)
        redis_server.stop()  # a crash: the queued messages and the running one's are gone
        redis_server.start()
        runs = [poll(client, f"/api/runs/{r['id']}", lambda r: r["status"] not in ("queued", "running"), 180,
                     "every run") for r in [first, *queued]]
        galleries = [poll(client, f"/api/galleries/{r['galleries'][0]['id']}",
                          lambda g: g["status"] not in ("queued", "running"), 120, "every gallery") for r in runs]
        log = worker.output()
    finally:
        worker.stop()
        redis_server.stop()
    assert [r["status"] for r in runs] == ["succeeded"] * 3, runs
    assert [g["status"] for g in galleries] == ["succeeded"] * 3
    for r in runs:
        [row] = rows(settings, Run, id=uuid.UUID(r["id"]))
        assert row.attempts == 1, (r["id"], "ran more than once")
        assert len(rows(settings, Gallery, run_id=row.id)) == 1
    resent = {e["id"] for e in events(log, "job.resent")}
    assert {r["id"] for r in queued} <= resent  # the watchdog sent the lost ones again

"""Turns on the gpu queue (worker/turns.py), with a real Celery worker on the one gpu queue:
a long run of one team gives the worker to another team's run and to a finished run's
gallery when its slice is over, and then finishes from its saved state as if it had never
stopped. The rule itself (what counts as waiting) is checked on the database alone.

The finding (issue 13): a finished run's gallery sat queued ~30 minutes behind the next
run on the embedded default's single training worker, and one team's queued runs went
before another team's run, first in first out."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from app.models import Checkpoint, Gallery, Run
from web_helpers import TAG, CeleryWorker, create_database, drop_database, new_photo_set, poll, production_settings, \
    sign_up

from .faults import events
from .test_leases import add_run, make_env
from .test_worker_faults import FAST, broker_kept_its_data, rows, tiny_run

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def turns_db():
    """A database of this module's own: the session's is shared with other tests, whose
    jobs left queued there (their workers gone) would count as waiting in line."""
    from app.migrate import upgrade

    name = f"ds_turns_test_{TAG}"
    url = create_database(name)
    upgrade(url)
    yield url
    drop_database(name)


A_STEPS = 40  # team 1's long run (about 18 s of training on the shared 2-core machine)
SLICE = 1.0  # run_slice_seconds of the worker


def test_a_long_run_gives_its_turn_to_another_teams_run_and_to_a_gallery(make_client, turns_db, s3_endpoint,
                                                                        queues, tmp_path):
    q = {k: v + "-turns" for k, v in queues.items()}
    broker_kept_its_data(q)
    settings = production_settings(tmp_path / "data", turns_db, s3_endpoint, q, **FAST, run_slice_seconds=SLICE)
    first, second = make_client(settings), make_client(settings)
    team_a = sign_up(first)["user"]["team_id"]
    sign_up(second)
    ps_a, ps_b = new_photo_set(first, n_photos=10), new_photo_set(second, n_photos=10)
    worker = CeleryWorker(settings, tmp_path / "worker.log")
    try:
        posted = time.monotonic()
        a = first.post(f"/api/photo-sets/{ps_a}/runs", json=tiny_run(steps=A_STEPS, checkpoint_every=A_STEPS)).json()
        # checkpoint_every = all steps: the only states saved on the way are those of the turns given up
        a_url = f"/api/runs/{a['id']}"
        at_1 = poll(first, a_url, lambda r: r["step"] >= 1 or r["status"] not in ("queued", "running"), 300, "A's step 1")
        startup, t_1 = time.monotonic() - posted, time.monotonic()
        # nothing waits yet: A keeps the worker beyond its slice
        at_3 = poll(first, a_url, lambda r: r["step"] >= at_1["step"] + 2 or r["status"] != "running", 60 * startup,
                    "A's next steps")
        per_step = (time.monotonic() - t_1) / max(1, at_3["step"] - at_1["step"])
        b = second.post(f"/api/photo-sets/{ps_b}/runs", json=tiny_run(steps=2)).json()
        assert at_3["status"] == "running" and at_3["step"] < A_STEPS / 2, at_3
        # A trains its slice, B loads, trains and publishes, its gallery comes, A loads again twice:
        # a budget of what was seen of loading and training, with room for a busy machine
        budget = 4 * (6 * startup + (A_STEPS + 10) * per_step)
        b_done = poll(second, f"/api/runs/{b['id']}", lambda r: r["status"] not in ("queued", "running"), budget,
                      "B's run")
        gallery_url = f"/api/galleries/{b_done['galleries'][0]['id']}"
        gallery = poll(second, gallery_url, lambda g: g["status"] not in ("queued", "running"), budget,
                       "B's gallery")
        a_then = first.get(a_url).json()
        a_done = poll(first, a_url, lambda r: r["status"] not in ("queued", "running"), budget, "A's run")
        log = worker.output()
    finally:
        worker.stop()
    # B's run and its gallery were served while A was still training: neither waited for A's whole run
    assert b_done["status"] == "succeeded" and gallery["status"] == "succeeded", (b_done, gallery)
    assert a_then["status"] in ("queued", "running") and a_then["step"] < A_STEPS, a_then
    order = [(e["event"], e.get("run") or e.get("gallery")) for e in log_events(log)]
    assert order.index(("gallery.succeeded", gallery["id"])) < order.index(("run.succeeded", a["id"])), order

    given = [e for e in events(log, "run.turn.given") if e["run"] == a["id"]]
    assert [e["reason"] for e in given][:1] == ["another team's run is waiting"], given
    assert "a gallery is waiting" in [e["reason"] for e in given], given
    assert not [e for e in events(log, "run.turn.given") if e["run"] == b["id"]]  # B trained less than a slice

    # A finished from its saved states: every step once, all its steps, one checkpoint
    assert a_done["status"] == "succeeded" and a_done["step"] == a_done["total_steps"] == A_STEPS, a_done
    resumed = [e["step"] for e in given]
    assert resumed == sorted(resumed) and 0 < resumed[0] and resumed[-1] < A_STEPS, given
    assert [e["step"] for e in events(log, "run.resumed") if e["run"] == a["id"]] == resumed[-1:]
    a_log = [e for e in log_events(log) if e.get("run") == a["id"]]
    for n, e in enumerate(a_log):  # each turn's first step is the one after the last turn's: none twice
        if e["event"] == "run.turn.given":
            assert next(x for x in a_log[n:] if x["event"] == "run.step")["step"] == e["step"] + 1, a_log
    [row] = rows(settings, Run, id=uuid.UUID(a["id"]))
    assert row.failures == 0 and row.error is None and row.attempts == 1 + len(given)
    assert len(rows(settings, Checkpoint, run_id=row.id)) == 1
    assert not first.app.state.storage.exists(f"teams/{team_a}/runs/{a['id']}/state/training_state.pt")
    assert row.stage_times["adapt"] > 0  # the turns' training adds up
    print(f"\nA: {len(given)} turns given ({', '.join(e['reason'] for e in given)}), resumed at steps {resumed}; "
          f"B waited {b_done['stage_times']['queued']:.1f} s in the queue; B's gallery done while A was at step "
          f"{a_then['step']} of {A_STEPS}; startup {startup:.1f} s, {per_step:.2f} s per step")


def log_events(log: str) -> list[dict]:
    """The worker's steps, turns and outcomes of runs and galleries, in the log's order."""
    names = ("run.step", "run.succeeded", "gallery.succeeded", "run.turn.given")
    out = []
    for line in log.splitlines():
        try:
            event = json.loads(line[line.find("{"):]) if "{" in line else {}
        except ValueError:
            continue
        if event.get("event") in names:
            out.append(event)
    return out


def test_what_waits_in_line_decides_who_gives_up_a_turn(make_client, turns_db, s3_endpoint, queues, tmp_path):
    """The rule on the database: a gallery, another team's run, or an earlier run of the same
    team in line makes a run give up its turn; a later run of its team, a job not sent yet
    and a storage retry not yet due do not. The page of a run back in line after its turn
    says so."""
    from sqlalchemy import update

    from worker.turns import waiting_before

    q = {k: v + "-turnrule" for k, v in queues.items()}
    settings = production_settings(tmp_path, turns_db, s3_endpoint, q)
    first, second = make_client(settings), make_client(settings)
    team_a, team_b = sign_up(first)["user"]["team_id"], sign_up(second)["user"]["team_id"]
    ps_a, ps_b = new_photo_set(first, n_photos=0), new_photo_set(second, n_photos=0)
    e = make_env(settings)
    now = datetime.now(timezone.utc)
    running = add_run(e, team_a, ps_a, status="running", sent_at=now - timedelta(minutes=5))

    def reason():
        with e.sessions() as db:
            return waiting_before(db, db.get(Run, running))

    assert reason() is None
    later_own = add_run(e, team_a, ps_a, status="queued", sent_at=now)
    assert reason() is None  # its own team's later run waits for it to finish
    unsent = add_run(e, team_b, ps_b, status="queued")
    retry_due_later = add_run(e, team_b, ps_b, status="queued", sent_at=now + timedelta(minutes=1))
    assert reason() is None
    other = add_run(e, team_b, ps_b, status="queued", sent_at=now)
    assert reason() == "another team's run is waiting"
    with e.sessions() as db:
        db.execute(update(Run).where(Run.id.in_([other, unsent, retry_due_later])).values(status="canceled"))
        # an earlier run of its own team (one that gave up its turn before) waits
        db.execute(update(Run).where(Run.id == later_own).values(created_at=now - timedelta(hours=1)))
        db.commit()
    assert reason() == "an earlier run of its team is waiting"
    with e.sessions() as db:
        done = add_run(e, team_b, ps_b, status="succeeded")
        db.add(Gallery(team_id=uuid.UUID(team_b), run_id=done, size=2, steps=2, status="queued", sent_at=now))
        db.commit()
    assert reason() == "a gallery is waiting"

    # back in line after a turn: its page says it continues where it stopped
    with e.sessions() as db:
        db.execute(update(Run).where(Run.id == running).values(status="queued", step=3, total_steps=8, started_at=now))
        db.commit()
    assert "Waiting for its turn; training continues where it stopped" in first.get(f"/runs/{running}").text
    assert "順番を待っています" in first.get(f"/runs/{running}", headers={"Accept-Language": "ja"}).text

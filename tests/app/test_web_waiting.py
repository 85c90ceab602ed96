"""Waiting with information: a queued run's and gallery's place in the queue and what is
ahead (another team's jobs only counted), each preset's time on this machine from the runs
it finished, "Elapsed" that stays put once the run is over, and the report's total that
counts the gallery's wait. Each test has a database of its own (SQLite, the embedded
default's), so other tests' queued rows do not move the positions."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from app.migrate import upgrade
from app.models import Gallery, Run
from app.settings import Settings
from web_helpers import REDIS, new_photo_set, sign_up

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def own_db_settings(tmp_path, queues):
    settings = Settings(data_dir=tmp_path, broker_url=REDIS, storage_backend="local", secret_key="waiting-" + uuid.uuid4().hex,
                        base_models="builtin:fmnist-ddpm-32,builtin:tiny-ddpm", gallery_size=8, device="cpu", **queues)
    upgrade(settings.resolved_database_url)
    return settings


def team_of(client) -> uuid.UUID:
    return uuid.UUID(client.get("/api/me").json()["user"]["team_id"])


def add(client, model, **values):
    with client.app.state.sessionmaker() as db:
        row = model(**values)
        db.add(row)
        db.commit()
        return row.id


def add_run(client, ps: str, minutes: int, **values) -> uuid.UUID:
    row = dict(team_id=team_of(client), photo_set_id=uuid.UUID(ps), preset="quick", base_model="builtin:tiny-ddpm",
               settings={"steps": 300}, gallery_size=8, status="queued", total_steps=300,
               created_at=T0 + timedelta(minutes=minutes))
    row.update(values)
    return add(client, Run, **row)


def test_queued_run_shows_its_place_and_what_is_ahead(make_client, own_db_settings):
    mine, other = make_client(own_db_settings), make_client(own_db_settings)
    sign_up(mine), sign_up(other)
    ps = new_photo_set(mine, n_photos=0)
    theirs = other.post("/api/photo-sets", json={"name": "Secret launch", "class_word": "cup"}).json()["id"]
    training = add_run(mine, ps, 0, status="running", step=40, eta_seconds=125.0)
    add_run(other, theirs, 1)
    waiting = add_run(mine, ps, 2)
    gallery = add(mine, Gallery, team_id=team_of(mine), run_id=training, size=8, steps=2, status="queued",
                  created_at=T0 + timedelta(minutes=3))

    queue = mine.get(f"/api/runs/{waiting}").json()["queue"]
    assert queue["position"] == 3 and queue["others_ahead"] == 1
    assert [(a["kind"], a["status"], a["step"], a["total_steps"]) for a in queue["ahead"]] == [("run", "running", 40, 300)]
    assert queue["wait_seconds"] is None  # the other team's queued run: no run of its model finished here yet
    page = mine.get(f"/runs/{waiting}").text
    assert "Number 3 in the queue" in page and "running, step 40 of 300" in page and "0:02:05 left" in page
    assert "1 job of another team" in page and "Secret launch" not in page
    # the gallery waits behind all three; a running run has no place in the queue
    assert mine.get(f"/api/galleries/{gallery}").json()["queue"]["position"] == 4
    assert "Number 4 in the queue" in mine.get(f"/galleries/{gallery}").text
    assert mine.get(f"/api/runs/{training}").json()["queue"] is None

    # once this machine finished a run of the model, the wait has an estimate: the running
    # run's time left, plus the other team's run at 0.1 s per step and 2 s of fixed work
    add_run(other, theirs, -60, status="succeeded", stage_times={"adapt": 30.0, "download": 1.0, "publish": 1.0,
                                                                  "gallery": 4.0}, finished_at=T0)
    queue = mine.get(f"/api/runs/{waiting}").json()["queue"]
    assert queue["wait_seconds"] == pytest.approx(125 + 2 + 300 * 0.1)


def test_presets_show_this_machines_time_and_the_demo_model_says_what_it_draws(make_client, own_db_settings):
    client = make_client(own_db_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)  # colour photos
    page = client.get(f"/photo-sets/{ps}").text
    assert page.count("the time appears here once a run of this model has finished on this machine") == 6
    assert "What the demo model <code>builtin:fmnist-ddpm-32</code> can produce" in page
    assert "Your photos are in colour" in page
    add_run(client, ps, 0, base_model="builtin:fmnist-ddpm-32", status="succeeded", finished_at=T0,
            stage_times={"queued": 50.0, "download": 1.0, "adapt": 60.0, "publish": 2.0, "gallery": 16.0})
    page = client.get(f"/photo-sets/{ps}").text
    # Quick: 3 s fixed + 300 steps at 0.2 s + 8 images at 2 s = 79 s; High quality: 2,000 steps
    assert "about 0:01:19 on this machine, gallery included" in page
    assert "about 0:06:59 on this machine, gallery included" in page


def test_grayscale_photos_get_no_colour_notice(make_client, own_db_settings):
    from web_helpers import png_bytes, upload

    client = make_client(own_db_settings)
    sign_up(client)
    ps = client.post("/api/photo-sets", json={"name": "Gray", "class_word": "shoe"}).json()["id"]
    upload(client, ps, [(f"g{i}.png", png_bytes(i, mode="L")) for i in range(3)])
    page = client.get(f"/photo-sets/{ps}").text
    assert "What the demo model" in page and "Your photos are in colour" not in page


def test_elapsed_stays_put_and_the_report_counts_the_gallery_wait(make_client, own_db_settings):
    client = make_client(own_db_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=0)
    run = add_run(client, ps, 0, status="succeeded", finished_at=T0 + timedelta(minutes=2),
                  stage_times={"queued": 10.0, "download": 1.0, "adapt": 60.0, "publish": 2.0,
                               "gallery_queued": 30.0, "gallery": 20.0})
    # "Elapsed" of the finished run: its own stages (73 s), not the gallery generated later
    assert 'id="run-elapsed" data-seconds="73.0">0:01:13</dd>' in client.get(f"/runs/{run}").text
    report = client.get(f"/api/runs/{run}/report").json()
    assert report["total_seconds"] == 123.0
    assert {"stage": "gallery_queued", "seconds": 30.0} in report["stage_times"]
    assert "Gallery waiting in the queue" in client.get(f"/runs/{run}/report").text


def test_copy_guard_says_when_its_network_does_not_fit_the_photos(make_client, own_db_settings):
    from app.models import Image
    from web_helpers import png_bytes, upload

    client = make_client(own_db_settings)
    sign_up(client)
    colour = new_photo_set(client, n_photos=2)  # colour photos
    gray = client.post("/api/photo-sets", json={"name": "Gray", "class_word": "shoe"}).json()["id"]
    upload(client, gray, [(f"g{i}.png", png_bytes(i, mode="L")) for i in range(2)])
    classifier = "Fashion-MNIST classifier (last conv stage, 32x32 grayscale)"
    pages = {}
    for name, ps, network in (("colour", colour, classifier), ("gray", gray, classifier),
                              ("pixels", colour, "pixel descriptor (32x32 colour thumbnail; no feature network configured)")):
        run = add_run(client, ps, 0, base_model="builtin:fmnist-ddpm-32", status="succeeded", finished_at=T0)
        gallery = add(client, Gallery, team_id=team_of(client), run_id=run, size=1, steps=2, status="succeeded",
                      feature_network=network, near_copy_threshold=0.06)
        photo = client.get(f"/api/photo-sets/{ps}").json()["photos"][0]
        image = add(client, Image, team_id=team_of(client), gallery_id=gallery, seed=0, width=32, height=32,
                    key=photo["url"], thumb_key="x", nearest_distance=0.5, nearest_photo_id=uuid.UUID(photo["id"]))
        pages[name] = (client.get(f"/galleries/{gallery}").text, client.get(f"/images/{image}").text)
    misfit = "its distances say little about copies of them"
    assert all(misfit in page for page in pages["colour"])  # the gallery and the large view
    assert not any(misfit in page for page in pages["gray"] + pages["pixels"])
    assert "What the demo model" in pages["colour"][0]  # the gallery page (and its packs) says what it draws


def test_a_job_sent_again_waits_from_that_send(make_client, own_db_settings):
    """The workers take jobs in the order they were sent: a run sent again (a storage retry,
    due later; issue 13's sent_at) stands behind one sent before that, created later or not."""
    mine = make_client(own_db_settings)
    sign_up(mine)
    ps = new_photo_set(mine, n_photos=0)
    retried = add_run(mine, ps, 0, sent_at=T0 + timedelta(minutes=5))
    fresh = add_run(mine, ps, 1, sent_at=T0 + timedelta(minutes=1))
    assert mine.get(f"/api/runs/{fresh}").json()["queue"]["position"] == 1
    queue = mine.get(f"/api/runs/{retried}").json()["queue"]
    assert queue["position"] == 2 and [a["id"] for a in queue["ahead"]] == [str(fresh)]

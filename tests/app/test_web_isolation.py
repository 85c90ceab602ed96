"""Team isolation over every route: a user of another team gets 404 for every object of
the first team, whatever the method, and nothing of the first team changes."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from fastapi.routing import APIRoute

from app.models import Checkpoint, Gallery, Image, Pack, Run
from app.routes import api, files, pages
from web_helpers import new_photo_set, png_bytes, sign_up

ID_PARAMS = {"photo_set_id", "photo_id", "run_id", "gallery_id", "image_id", "pack_id"}


def routes_with_ids() -> list[tuple[str, str]]:
    out = []
    for router in (api.router, files.router, pages.router):
        for route in router.routes:
            if isinstance(route, APIRoute) and set(re.findall(r"{(\w+)}", route.path)) & ID_PARAMS:
                out.extend((m, route.path) for m in sorted(route.methods - {"HEAD"}))
    return out


@pytest.fixture
def team_a(make_client, local_pg_settings):
    """Team A with one of every object: photo set, photo, run with checkpoint and preview,
    gallery, image and a built pack."""
    client = make_client(local_pg_settings)
    user = sign_up(client)
    team = user["user"]["team_id"]
    ps = new_photo_set(client, n_photos=10)
    photo_id = client.get(f"/api/photo-sets/{ps}").json()["photos"][0]["id"]
    storage, sessions = client.app.state.storage, client.app.state.sessionmaker
    now = datetime.now(timezone.utc)
    with sessions() as db:
        run = Run(team_id=team, photo_set_id=ps, preset="quick", base_model="builtin:tiny-ddpm", settings={"steps": 1},
                  gallery_size=1, status="succeeded", step=1, total_steps=1, preview_count=1, finished_at=now)
        db.add(run)
        db.flush()
        prefix = f"teams/{team}/runs/{run.id}"
        storage.put_bytes(f"{prefix}/previews/0.png", png_bytes(1))
        storage.put_bytes(f"{prefix}/checkpoint.zip", b"zip")
        db.add(Checkpoint(team_id=team, run_id=run.id, kind="full", base_model="builtin:tiny-ddpm", prefix=prefix,
                          download_key=f"{prefix}/checkpoint.zip", download_name="model.zip", size_bytes=3,
                          files=["checkpoint.json"], settings={}))
        gallery = Gallery(team_id=team, run_id=run.id, size=1, steps=2, status="succeeded")
        db.add(gallery)
        db.flush()
        gprefix = f"teams/{team}/galleries/{gallery.id}"
        storage.put_bytes(f"{gprefix}/images/0.png", png_bytes(2))
        storage.put_bytes(f"{gprefix}/thumbs/0.jpg", png_bytes(3))
        image = Image(team_id=team, gallery_id=gallery.id, seed=0, width=48, height=40, key=f"{gprefix}/images/0.png",
                      thumb_key=f"{gprefix}/thumbs/0.jpg", review="approved")
        db.add(image)
        db.flush()
        pack = Pack(team_id=team, gallery_id=gallery.id, selection="approved", image_ids=[str(image.id)], format="png",
                    size="original", status="succeeded", key=f"teams/{team}/packs/p.zip", size_bytes=3)
        storage.put_bytes(pack.key, b"zip")
        db.add(pack)
        db.commit()
        ids = {"photo_set_id": ps, "photo_id": photo_id, "run_id": str(run.id), "gallery_id": str(gallery.id),
               "image_id": str(image.id), "pack_id": str(pack.id), "index": "0"}
    return client, ids


def call(client, method: str, path: str, ids: dict):
    url = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], path)
    token = client.headers["X-CSRF-Token"]
    if method == "GET":
        return client.get(url, follow_redirects=False)
    if method == "DELETE":
        return client.delete(url, follow_redirects=False)
    if path.endswith("/photos"):
        return client.post(url, files=[("files", ("x.png", png_bytes(99), "image/png"))], data={"csrf_token": token},
                           follow_redirects=False)
    if path.startswith("/api/"):
        body = {"review": "rejected"} if "review" in path else {"n": 1} if "more" in path else {"preset": "quick"} \
            if path.endswith("/runs") else {}
        return client.post(url, json=body, follow_redirects=False)
    return client.post(url, data={"csrf_token": token, "review": "rejected", "n": "1"}, follow_redirects=False)


def test_every_route_answers_404_to_another_team(team_a, make_client, local_pg_settings):
    owner, ids = team_a
    routes = routes_with_ids()
    assert len(routes) >= 30  # api, files and pages

    # the owner can read every object (the ids are real)
    for method, path in routes:
        if method == "GET":
            r = call(owner, method, path, ids)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])

    intruder = make_client(local_pg_settings)
    sign_up(intruder)
    for method, path in routes:
        r = call(intruder, method, path, ids)
        assert r.status_code == 404, (method, path, r.status_code, r.text[:300])

    # nothing of team A changed
    ps = owner.get(f"/api/photo-sets/{ids['photo_set_id']}").json()
    assert ps["photo_count"] == 10
    assert owner.get(f"/api/images/{ids['image_id']}").json()["review"] == "approved"
    assert owner.get(f"/api/runs/{ids['run_id']}").json()["status"] == "succeeded"
    assert len(owner.get(f"/api/photo-sets/{ids['photo_set_id']}/runs").json()["runs"]) == 1
    assert owner.get(f"/packs/{ids['pack_id']}/download").content == b"zip"
    # and the intruder's lists are empty
    assert intruder.get("/api/photo-sets").json() == {"photo_sets": []}


def test_anonymous_requests_are_refused(team_a, make_client, local_pg_settings):
    _, ids = team_a
    anon = make_client(local_pg_settings)
    anon.headers["X-CSRF-Token"] = "none"
    for method, path in routes_with_ids():
        r = call(anon, method, path, ids)
        if r.status_code == 303:
            assert r.headers["location"] == "/login"
        else:
            assert r.status_code in (401, 403), (method, path, r.status_code)

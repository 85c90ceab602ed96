"""Team isolation over every route: a user of another team gets 404 for every object of
the first team, whatever the method, and nothing of the first team changes."""
from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute

from app.routes import api, files, live, pages
from web_helpers import png_bytes, seed_team_objects, sign_up

ID_PARAMS = {"photo_set_id", "photo_id", "run_id", "gallery_id", "image_id", "pack_id"}


def routes_with_ids() -> list[tuple[str, str]]:
    out = []
    for router in (api.router, files.router, live.router, pages.router):
        for route in router.routes:
            if isinstance(route, APIRoute) and set(re.findall(r"{(\w+)}", route.path)) & ID_PARAMS:
                out.extend((m, route.path) for m in sorted(route.methods - {"HEAD"}))
    return out


@pytest.fixture
def team_a(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    return client, seed_team_objects(client)


def call(client, method: str, path: str, ids: dict):
    url = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], path)
    token = client.headers["X-CSRF-Token"]
    if method == "GET":
        return client.get(url, follow_redirects=False)
    if method == "DELETE":
        return client.delete(url, follow_redirects=False)
    if method == "PATCH":
        return client.patch(url, json={"caption": "changed by another team"}, follow_redirects=False)
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
    assert owner.get(f"/api/photos/{ids['photo_id']}").json()["caption"] == ""
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

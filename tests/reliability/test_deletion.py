"""Deletion on S3 and Postgres: deleting a gallery, a run or a photo set removes exactly its
objects and rows, and nothing of anything else (of the same team or another)."""
from __future__ import annotations

import uuid

from sqlalchemy import select

from app.models import Checkpoint, Gallery, Image, Pack, Photo, PhotoSet, Run
from app.storage import pack_key
from web_helpers import seed_team_objects, sign_up

MODELS = (PhotoSet, Photo, Run, Checkpoint, Gallery, Image, Pack)


def snapshot(client, teams: list[str]) -> tuple[set[str], set[tuple[str, str]]]:
    storage = client.app.state.storage
    keys = {k for t in teams for k in storage.list_keys(f"teams/{t}")}
    with client.app.state.sessionmaker() as db:
        rows = {(m.__tablename__, str(i)) for m in MODELS
                for i in db.scalars(select(m.id).where(m.team_id.in_([uuid.UUID(t) for t in teams])))}
    return keys, rows


def seed(client) -> dict:
    """seed_team_objects, with the pack's ZIP under its own key (as the worker stores it)."""
    ids = seed_team_objects(client)
    with client.app.state.sessionmaker() as db:
        pack = db.get(Pack, uuid.UUID(ids["pack_id"]))
        client.app.state.storage.delete(pack.key)
        pack.key = pack_key(pack.team_id, pack.id)
        client.app.state.storage.put_bytes(pack.key, b"zip")
        db.commit()
    return ids


def test_deleting_removes_its_objects_and_rows_and_nothing_else(make_client, pg_settings):
    a, b = make_client(pg_settings), make_client(pg_settings)
    team_a, team_b = sign_up(a)["user"]["team_id"], sign_up(b)["user"]["team_id"]
    first, second = seed(a), seed(a)
    other = seed(b)
    teams = [team_a, team_b]
    keys, rows = snapshot(a, teams)
    assert len(keys) == 3 * 25  # 10 photos + 10 thumbs, preview, checkpoint, image, thumb, pack

    # a gallery: its images (objects + rows) and packs go; its run and checkpoint stay
    g = first["gallery_id"]
    assert a.delete(f"/api/galleries/{g}").status_code == 200
    keys2, rows2 = snapshot(a, teams)
    assert keys - keys2 == {k for k in keys if k.startswith(f"teams/{team_a}/galleries/{g}/")} | \
        {f"teams/{team_a}/packs/{first['pack_id']}.zip"}
    assert rows - rows2 == {("galleries", g), ("images", first["image_id"]), ("packs", first["pack_id"])}
    assert a.get(f"/api/galleries/{g}").status_code == 404
    assert a.get(f"/api/runs/{first['run_id']}/checkpoint").status_code == 200

    # a run: its previews, checkpoint files and rows
    r = first["run_id"]
    assert a.delete(f"/api/runs/{r}").status_code == 200
    keys3, rows3 = snapshot(a, teams)
    assert keys2 - keys3 == {k for k in keys2 if k.startswith(f"teams/{team_a}/runs/{r}/")} and keys2 - keys3
    assert {t for t, _ in rows2 - rows3} == {"runs", "checkpoints"} and ("runs", r) in rows2 - rows3
    assert len(a.get(f"/api/photo-sets/{first['photo_set_id']}").json()["photos"]) == 10  # the photos stay

    # a photo set: its photos, and its runs with everything they made
    ps = second["photo_set_id"]
    assert a.delete(f"/api/photo-sets/{ps}").status_code == 200
    keys4, rows4 = snapshot(a, teams)
    gone = keys3 - keys4
    assert gone == {k for k in keys3 if f"/photo-sets/{ps}/" in k or f"/runs/{second['run_id']}/" in k
                    or f"/galleries/{second['gallery_id']}/" in k or k.endswith(f"/packs/{second['pack_id']}.zip")}
    assert {t for t, _ in rows3 - rows4} == {"photo_sets", "photos", "runs", "checkpoints", "galleries", "images",
                                              "packs"}
    # nothing else: the first set's photos and all of team B
    assert {k for k in keys4 if k.startswith(f"teams/{team_b}/")} == {k for k in keys if k.startswith(f"teams/{team_b}/")}
    assert {row for row in rows if row[1] in other.values()} <= rows4
    assert len([k for k in keys4 if f"/photo-sets/{first['photo_set_id']}/" in k]) == 20
    assert b.get(f"/api/galleries/{other['gallery_id']}").status_code == 200
    assert b.get(f"/packs/{other['pack_id']}/download", follow_redirects=False).status_code == 303


def test_deleting_a_busy_run_or_gallery_is_refused(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    ids = seed_team_objects(client)
    with client.app.state.sessionmaker() as db:
        db.get(Gallery, uuid.UUID(ids["gallery_id"])).status = "running"
        db.commit()
    for url in (f"/api/runs/{ids['run_id']}", f"/api/galleries/{ids['gallery_id']}"):
        r = client.delete(url)
        assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    assert client.get(f"/api/galleries/{ids['gallery_id']}").status_code == 200

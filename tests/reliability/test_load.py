"""Load on loopback, bounded in count and time: 20 users each uploading 100 photos at once,
then browsing a gallery of 1,000 images; every photo stored exactly once; throughput and
p50/p95/p99 latencies printed (docs/reliability.md has the figures). And memory: building a
pack of 1,000 full-size images and streaming it through the app stay within a fixed bound.

The app runs under uvicorn in a thread of this process, on Postgres with the local-folder
object store (moto, a Python S3 server on the same two cores, would measure itself)."""
from __future__ import annotations

import io
import os
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import psutil
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, insert, select

from app.main import create_app
from app.models import Gallery, Image, Pack, Photo, Run
from app.services.galleries import PAGE_SIZE
from app.packfiles import PackSource, write_pack_zip
from app.storage import LocalStorage
from web_helpers import png_bytes

from .faults import LiveServer, percentile

pytestmark = pytest.mark.slow

USERS, PHOTOS, GALLERY = 20, 100, 1000


def stats(name: str, latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    return (f"{name}: n={len(ms)} p50={percentile(ms, 50):.0f} ms p95={percentile(ms, 95):.0f} ms "
            f"p99={percentile(ms, 99):.0f} ms max={max(ms):.0f} ms")


def new_user(url: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=120)
    body = c.post("/api/auth/signup", json={"email": f"load-{uuid.uuid4().hex[:10]}@example.com",
                                           "password": "correct horse battery"}).json()
    c.headers["X-CSRF-Token"] = body["csrf_token"]
    return c


def test_twenty_users_upload_and_browse(local_pg_settings, tmp_path):
    settings = local_pg_settings.model_copy(update={"storage_dir": tmp_path / "objects"})
    app = create_app(settings)
    server = LiveServer(app)
    with ThreadPoolExecutor(4) as pool:  # password hashing (argon2) releases the GIL
        users = list(pool.map(lambda _: new_user(server.url), range(USERS)))
    try:
        sets = [c.post("/api/photo-sets", json={"name": "load", "class_word": "bottle"}).json()["id"] for c in users]
        batches = [[(f"u{u}-{i}.png", png_bytes(u * 1000 + i, size=(32, 32))) for i in range(PHOTOS)]
                   for u in range(USERS)]
        barrier = threading.Barrier(USERS)

        def upload(u: int) -> tuple[float, int]:
            files = [("files", (n, d, "image/png")) for n, d in batches[u]]
            barrier.wait()  # all at once
            started = time.monotonic()
            r = users[u].post(f"/api/photo-sets/{sets[u]}/photos", files=files)
            return time.monotonic() - started, r.status_code, len(r.json().get("added", []))

        started = time.monotonic()
        with ThreadPoolExecutor(USERS) as pool:
            results = list(pool.map(upload, range(USERS)))
        upload_wall = time.monotonic() - started
        assert [(code, n) for _, code, n in results] == [(200, PHOTOS)] * USERS

        # every photo exactly once: one row per photo, two objects per row, no stray object
        with app.state.sessionmaker() as db:
            per_set = dict(db.execute(select(Photo.photo_set_id, func.count(Photo.id)).where(
                Photo.photo_set_id.in_([uuid.UUID(s) for s in sets])).group_by(Photo.photo_set_id)).all())
            distinct = db.scalar(select(func.count(func.distinct(Photo.sha256))).where(
                Photo.photo_set_id.in_([uuid.UUID(s) for s in sets])))
        assert sorted(per_set.values()) == [PHOTOS] * USERS and distinct == USERS * PHOTOS
        storage = app.state.storage
        for c, s in zip(users, sets):
            team = c.get("/api/me").json()["user"]["team_id"]
            assert len(storage.list_keys(f"teams/{team}/photo-sets/{s}")) == 2 * PHOTOS

        # a gallery of 1,000 images for each team, browsed by all 20 users at once
        galleries = [seed_gallery(app, c, s, GALLERY) for c, s in zip(users, sets)]
        page, api, thumb = [], [], []

        def browse(u: int) -> None:
            c, g = users[u], galleries[u]
            barrier.wait()
            for _ in range(1):
                t = time.monotonic()
                r = c.get(f"/galleries/{g['id']}")
                page.append(time.monotonic() - t)
                # one page of the grid (the next ones load as the user scrolls)
                assert r.status_code == 200 and r.text.count("/thumb") >= PAGE_SIZE
                t = time.monotonic()
                r = c.get(f"/api/galleries/{g['id']}")
                api.append(time.monotonic() - t)
                assert r.status_code == 200 and r.json()["image_count"] == GALLERY
                for image_id in g["images"][:5]:
                    t = time.monotonic()
                    assert c.get(f"/images/{image_id}/thumb").status_code == 200
                    thumb.append(time.monotonic() - t)

        started = time.monotonic()
        with ThreadPoolExecutor(USERS) as pool:
            list(pool.map(browse, range(USERS)))
        browse_wall = time.monotonic() - started
    finally:
        for c in users:
            c.close()
        server.stop()

    uploads = [t for t, _, _ in results]
    report = "\n".join([
        f"uploads: {USERS} users x {PHOTOS} photos at once in {upload_wall:.1f} s = "
        f"{USERS * PHOTOS / upload_wall:.0f} photos/s",
        stats("upload request (100 photos)", uploads),
        f"browsing: {len(page) + len(api) + len(thumb)} requests in {browse_wall:.1f} s = "
        f"{(len(page) + len(api) + len(thumb)) / browse_wall:.0f} requests/s",
        stats("gallery page (1,000 images)", page), stats("gallery JSON (1,000 images)", api),
        stats("thumbnail", thumb),
    ])
    print("\n" + report)
    assert upload_wall < 120 and browse_wall < 120


def seed_gallery(app, client, photo_set_id: str, n: int) -> dict:
    """A finished run with a gallery of n images (rows, and one thumbnail object per image)."""
    team = uuid.UUID(client.get("/api/me").json()["user"]["team_id"])
    storage = app.state.storage
    thumb = png_bytes(7, size=(64, 64))
    with app.state.sessionmaker() as db:
        run = Run(team_id=team, photo_set_id=uuid.UUID(photo_set_id), preset="quick", base_model="builtin:tiny-ddpm",
                  settings={}, gallery_size=n, status="succeeded")
        db.add(run)
        db.flush()
        gallery = Gallery(team_id=team, run_id=run.id, size=n, steps=2, status="succeeded")
        db.add(gallery)
        db.flush()
        rows, now = [], datetime.now(timezone.utc)
        for seed in range(n):
            key = f"teams/{team}/galleries/{gallery.id}/thumbs/{seed}.jpg"
            if seed < 10:
                storage.put_bytes(key, thumb)
            rows.append(dict(id=uuid.uuid4(), team_id=team, gallery_id=gallery.id, seed=seed, width=32, height=32, key=key,
                             thumb_key=key, review="new", created_at=now))
        db.execute(insert(Image), rows)  # one multi-row INSERT, not 1,000 ORM objects
        db.commit()
        return {"id": str(gallery.id), "images": [str(r["id"]) for r in rows[:10]]}


class PeakRSS:
    """Samples this process's resident memory every 20 ms."""

    def __init__(self):
        self.proc, self.peak, self.stop = psutil.Process(os.getpid()), 0, threading.Event()
        self.base = self.proc.memory_info().rss

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def growth_mb(self) -> float:
        return max(0, self.peak - self.base) / 2**20


class SameImage:
    """A storage whose every image is one full-size photo (the pack code reads by key)."""

    def __init__(self, data: bytes):
        self.data = data

    def get_bytes(self, key: str) -> bytes:
        return self.data


def test_a_pack_of_1000_full_size_images_is_built_and_streamed_in_bounded_memory(local_pg_settings, tmp_path):
    side = 512  # the full size of a Stable Diffusion 1.5 image
    noise = PILImage.merge("RGB", [PILImage.effect_noise((side, side), 60 + k) for k in range(3)])
    out = io.BytesIO()
    noise.save(out, format="PNG")
    source = SameImage(out.getvalue())
    pack = Pack(id=uuid.uuid4(), format="jpeg", size="original", image_ids=[], selection="all", status="queued", key="")
    images = [Image(seed=i, key=f"k/{i}.png", prompt=None, created_at=datetime.now(timezone.utc)) for i in range(1000)]
    path = tmp_path / "pack.zip"
    started = time.monotonic()
    with PeakRSS() as build:
        write_pack_zip(source, pack, images, PackSource(run_id="r", base_model="m"), path)
    build_s = time.monotonic() - started
    size_mb = path.stat().st_size / 2**20
    with zipfile.ZipFile(path) as zf:
        assert len(zf.namelist()) == 1001
    assert size_mb > 100  # the whole ZIP would not fit in the bound below
    assert build.growth_mb < 60, f"building a {size_mb:.0f} MB pack grew memory by {build.growth_mb:.0f} MB"

    # streamed through the app (the local backend; on S3 the browser downloads a presigned link)
    settings = local_pg_settings.model_copy(update={"storage_dir": tmp_path / "objects"})
    app = create_app(settings)
    server = LiveServer(app)
    try:
        c = new_user(server.url)
        team = uuid.UUID(c.get("/api/me").json()["user"]["team_id"])
        ps = c.post("/api/photo-sets", json={"name": "pack", "class_word": "bottle"}).json()["id"]
        gallery = seed_gallery(app, c, ps, 1)
        with app.state.sessionmaker() as db:
            row = Pack(team_id=team, gallery_id=uuid.UUID(gallery["id"]), selection="all", image_ids=[], format="jpeg",
                       size="original", status="succeeded", key="", size_bytes=path.stat().st_size)
            db.add(row)
            db.flush()
            row.key = f"teams/{team}/packs/{row.id}.zip"
            LocalStorage(settings.resolved_storage_dir).put_file(row.key, path)
            db.commit()
            pack_id = row.id
        received = 0
        started = time.monotonic()
        with PeakRSS() as stream:
            with c.stream("GET", f"/packs/{pack_id}/download") as r:
                assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
                for chunk in r.iter_bytes():
                    received += len(chunk)
        stream_s = time.monotonic() - started
        c.close()
    finally:
        server.stop()
    assert received == path.stat().st_size
    assert stream.growth_mb < 40, f"streaming a {size_mb:.0f} MB pack grew memory by {stream.growth_mb:.0f} MB"
    print(f"\npack of 1,000 {side}x{side} JPEGs: {size_mb:.0f} MB built in {build_s:.1f} s (+{build.growth_mb:.0f} MB RSS), "
          f"streamed in {stream_s:.1f} s = {size_mb / stream_s:.0f} MB/s (+{stream.growth_mb:.0f} MB RSS)")

"""Helpers shared by the web app tests: services, clients, sample photos."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from PIL import Image

from app.models import Checkpoint, Gallery, Pack, Run
from app.models import Image as ImageRow
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("DOMAINSTUDIO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("DOMAINSTUDIO_TEST_REDIS", "redis://127.0.0.1:6379/0")
TAG = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# ------------------------------------------------------------------------------ services
def create_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def production_settings(tmp: Path, pg_url: str, s3_endpoint: str, queues: dict, **over) -> Settings:
    values = dict(
        data_dir=tmp, database_url=pg_url, broker_url=REDIS, storage_backend="s3", s3_endpoint_url=s3_endpoint,
        s3_bucket=f"ds-test-{TAG.replace('_', '-')}", s3_access_key_id="test", s3_secret_access_key="test",
        secret_key="test-secret-key-" + TAG, base_models="builtin:tiny-ddpm,builtin:tiny-sd", gallery_size=8,
        sample_steps=2, sample_batch_size=4, device="cpu", **queues,
    )
    values.update(over)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings."""
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("DOMAINSTUDIO_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"DOMAINSTUDIO_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class CeleryWorker:
    """A real Celery worker process on the settings' queues. ``pool`` is Celery's -P option
    plus its arguments (solo by default: the job runs in the worker process itself)."""

    pool: tuple[str, ...] = ("-P", "solo")

    def __init__(self, settings: Settings, log_path: Path, name: str | None = None):
        self.log_path = log_path
        queues = f"{settings.queue_gpu},{settings.queue_cpu}"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues, *self.pool,
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
             "-n", f"{name or 'test-' + TAG}@%h"],
            cwd=ROOT, env=settings_env(settings), stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: b"ready." in log_path.read_bytes() or self.proc.poll() is not None, 120, "the Celery worker")
        if self.proc.poll() is not None:
            raise RuntimeError("the Celery worker exited:\n" + log_path.read_text()[-3000:])

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------- clients
def sign_up(client, email: str | None = None) -> dict:
    """Signs up a new user (and team); the client keeps the cookie and the CSRF header."""
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    r = client.post("/api/auth/signup", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 201, r.text
    body = r.json()
    client.headers["X-CSRF-Token"] = body["csrf_token"]
    return body


def png_bytes(seed: int, size=(48, 40), mode="RGB", fmt="PNG") -> bytes:
    """A small image, different for each seed."""
    img = Image.effect_noise(size, 40 + seed).convert(mode) if mode != "RGB" else Image.merge(
        "RGB", [Image.effect_noise(size, 30 + seed + k * 7) for k in range(3)])
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def upload(client, photo_set_id: str, files: list[tuple[str, bytes]]):
    return client.post(f"/api/photo-sets/{photo_set_id}/photos",
                       files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def new_photo_set(client, n_photos: int = 10, class_word: str = "bottle") -> str:
    r = client.post("/api/photo-sets", json={"name": "Spring launch", "class_word": class_word})
    assert r.status_code == 201, r.text
    ps = r.json()["id"]
    if n_photos:
        r = upload(client, ps, [(f"photo-{i}.png", png_bytes(i)) for i in range(n_photos)])
        assert r.status_code == 200 and len(r.json()["added"]) == n_photos, r.text
    return ps


def poll(client, url: str, done, timeout: float = 120, what: str = ""):
    last = {}

    def check():
        nonlocal last
        last = client.get(url).json()
        return last if done(last) else None

    try:
        return wait_for(check, timeout, what or url, interval=0.3)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last answer: {last}") from None


def seed_team_objects(client) -> dict:
    """One of every object for the client's team, written directly (no worker needed):
    photo set with 10 photos, a succeeded run with checkpoint and preview, its gallery with
    one approved image, and a built pack. Returns their ids."""
    team = client.get("/api/me").json()["user"]["team_id"]
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
        image = ImageRow(team_id=team, gallery_id=gallery.id, seed=0, width=48, height=40, key=f"{gprefix}/images/0.png",
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
    return ids


def seed_failures(client, ids: dict) -> dict:
    """A failed run, gallery and pack for the seeded team, their errors stored the way the
    worker stores them (English text plus msgid and params): the run with the core's own
    refusal (LoRA asked for an unconditional model), the gallery and its pack with the
    worker's and the service's messages. Returns the failed objects' ids."""
    import tempfile

    from app.errors import Message, message_of, set_error, set_warnings
    from worker.domainstudio.config import AdaptConfig
    from worker.domainstudio.data import load_photos
    from worker.domainstudio.errors import InputError

    try:
        AdaptConfig.from_dict({"base_model": "builtin:tiny-ddpm", "mode": "lora"}).resolved("unconditional", 10, 32)
        raise AssertionError("the core accepted LoRA for an unconditional model")
    except InputError as exc:
        refusal = message_of(exc)
    with tempfile.TemporaryDirectory() as folder:  # the core's warnings about skipped photos
        for name, side in (("a.png", 64), ("b.png", 64), ("small.png", 16)):
            Image.new("RGB", (side, side)).save(f"{folder}/{name}")
        (Path(folder) / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        skipped = load_photos(Path(folder), 32, 3).warnings
    assert len(skipped) == 2, skipped
    team = client.get("/api/me").json()["user"]["team_id"]
    now = datetime.now(timezone.utc)
    with client.app.state.sessionmaker() as db:
        run = Run(team_id=team, photo_set_id=ids["photo_set_id"], preset="quick", base_model="builtin:tiny-ddpm",
                  settings={"mode": "lora"}, gallery_size=1, status="failed", finished_at=now)
        set_error(run, refusal)
        set_warnings(run, skipped)
        gallery = Gallery(team_id=team, run_id=ids["run_id"], size=4, steps=2, status="failed")
        set_error(gallery, Message("the run has no checkpoint"))
        db.add_all([run, gallery])
        db.flush()
        pack = Pack(team_id=team, gallery_id=gallery.id, selection="approved", image_ids=[], format="png",
                    size="original", status="failed", key=f"teams/{team}/packs/failed.zip", finished_at=now)
        set_error(pack, Message("the job queue was unreachable; build the pack again"))
        db.add(pack)
        db.commit()
        return {"run_id": str(run.id), "gallery_id": str(gallery.id), "pack_id": str(pack.id)}



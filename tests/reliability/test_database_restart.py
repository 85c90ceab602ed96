"""Postgres restarted under traffic: while it is down every request fails cleanly (503 with
a reason, never a 500 or a hang), and once it is back the same app process serves again
without a restart, with sessions intact. The fixture always starts Postgres again."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from fastapi import Depends
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app.deps import get_db
from app.main import create_app
from web_helpers import png_bytes

from .faults import LiveServer, pg_cluster, pg_up, until

pytestmark = pytest.mark.slow


@pytest.fixture
def restartable_postgres():
    assert pg_up()
    try:
        yield
    finally:
        if not pg_up():
            pg_cluster("start")
        until(pg_up, 60, "Postgres to accept connections again")


def test_postgres_restart_under_traffic(local_pg_settings, restartable_postgres):
    server = LiveServer(create_app(local_pg_settings))
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        body = client.post("/api/auth/signup", json={"email": f"pg-{time.time_ns()}@example.com",
                                                     "password": "correct horse battery"}).json()
        client.headers["X-CSRF-Token"] = body["csrf_token"]
        ps = client.post("/api/photo-sets", json={"name": "db", "class_word": "bottle"}).json()["id"]

        answers: list[tuple[float, int, float]] = []
        stop = threading.Event()

        def traffic():
            with httpx.Client(base_url=server.url, timeout=30, cookies=client.cookies) as c:
                while not stop.is_set():
                    for url in (f"/api/photo-sets/{ps}", f"/photo-sets/{ps}", "/api/photo-sets"):
                        started = time.monotonic()
                        try:
                            code = c.get(url).status_code
                        except httpx.TransportError:  # the server hung up: recorded, so the test says so
                            code = 0
                        answers.append((started, code, time.monotonic() - started))
                    time.sleep(0.05)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        time.sleep(0.5)
        pg_cluster("stop")
        down_at = time.monotonic()
        try:
            r = client.get(f"/api/photo-sets/{ps}")
            assert r.status_code == 503 and "database is unreachable" in r.json()["detail"]
            r = client.get(f"/photo-sets/{ps}")
            assert r.status_code == 503 and "database is unreachable" in r.text
            r = client.post(f"/api/photo-sets/{ps}/photos", files=[("files", ("a.png", png_bytes(1), "image/png"))])
            assert r.status_code == 503
            r = client.post("/api/auth/login", json={"email": body["user"]["email"], "password": "x"})
            assert r.status_code == 503
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["checks"]["database"].startswith("error")
            time.sleep(1.0)
        finally:
            pg_cluster("start")
        up_at = time.monotonic()
        until(pg_up, 60, "Postgres")
        # the same app process, the same session: served again within seconds
        until(lambda: client.get(f"/api/photo-sets/{ps}").status_code == 200, 20, "the app to serve again")
        recovered_in = time.monotonic() - up_at
        r = client.post(f"/api/photo-sets/{ps}/photos", files=[("files", ("a.png", png_bytes(1), "image/png"))])
        assert r.status_code == 200 and len(r.json()["added"]) == 1
        time.sleep(0.5)
        stop.set()
        thread.join(30)
    finally:
        client.close()
        server.stop()

    codes = {code for _, code, _ in answers}
    assert codes <= {200, 503}, f"answers during the restart (0 = no answer at all): {sorted(codes)}"
    assert 503 in codes and any(code == 200 and t > up_at for t, code, _ in answers)
    slowest_down = max((d for t, code, d in answers if code == 503), default=0)
    assert slowest_down < 10  # failed fast, no request hung on the dead database
    print(f"\npostgres down {up_at - down_at:.1f}s; {len(answers)} requests; recovered {recovered_in:.2f}s after start; "
          f"slowest 503 {slowest_down * 1000:.0f} ms")


def test_connection_killed_after_the_work_still_answers(local_pg_settings):
    """The database drops a request's connection after the request did its work (a restart,
    an idle-connection killer): the answer still goes out, and the next request gets a
    fresh connection. Before, the ROLLBACK sent on close raised and the client saw the
    server hang up."""
    app = create_app(local_pg_settings)
    admin = create_engine(local_pg_settings.resolved_database_url)

    def kill_my_connection(db: Session = Depends(get_db)) -> dict:
        pid = db.scalar(text("select pg_backend_pid()"))
        with admin.connect() as conn:
            assert conn.scalar(text("select pg_terminate_backend(:pid)"), {"pid": pid})
        return {"pid": pid}

    app.add_api_route("/test/kill-my-connection", kill_my_connection)
    try:
        with TestClient(app) as client:
            first = client.get("/test/kill-my-connection")
            assert first.status_code == 200
            second = client.get("/test/kill-my-connection")
            assert second.status_code == 200 and second.json()["pid"] != first.json()["pid"]
            assert client.get("/health").status_code == 200
    finally:
        admin.dispose()

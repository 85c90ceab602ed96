"""The embedded default, started the way the README says (scripts/run): SQLite, the
local-folder object store and the SQL broker, with its own worker processes. Then the
whole flow through HTTP, signed in with the account it printed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from web_helpers import ROOT, free_port, new_photo_set, poll, sign_up, wait_for
from test_web_flow import check_pack, run_flow

pytestmark = pytest.mark.slow


class Embedded:
    """scripts/run in its own process group, as a user would start it."""

    def __init__(self, data: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOMAINSTUDIO_")}
        env.update(DOMAINSTUDIO_DATA_DIR=str(data), DOMAINSTUDIO_BASE_MODELS="builtin:tiny-ddpm",
                   DOMAINSTUDIO_GALLERY_SIZE="8", DOMAINSTUDIO_SAMPLE_STEPS="2", DOMAINSTUDIO_DEVICE="cpu",
                   OMP_NUM_THREADS="1")
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "run"), "--port", str(self.port)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return self.proc.poll() is not None

        wait_for(up, 90, "scripts/run")
        assert self.proc.poll() is None, log_path.read_text()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture
def embedded(tmp_path):
    app = Embedded(tmp_path / "var", tmp_path / "run.log")
    try:
        yield app.url, app.log_path, tmp_path / "var"
    finally:
        app.stop()


def test_embedded_default_whole_flow(embedded):
    url, log_path, data = embedded
    out = log_path.read_text()
    assert f"DomainStudio is running at {url}" in out
    # a quiet start: no worker banners, no broker-table race, Celery's root warning at most once
    assert "SecurityWarning" not in out and "already exists" not in out and "-------------- [queues]" not in out, out
    email, password = re.search(r"Sign in as (\S+) with password (\S+)", out).groups()

    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/api/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        assert client.get("/health").json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok",
                                                          "workers": "ok"}  # both embedded workers run
        client.cookies.clear()
        result = run_flow(client, timeout=240)
        check_pack(client, result)
    assert (data / "domainstudio.sqlite").is_file() and (data / "broker.sqlite").is_file()
    assert any((data / "objects" / "teams").iterdir())


def test_embedded_default_resumes_a_run_after_a_crash(tmp_path):
    """Everything killed mid-run (power cut): the next scripts/run re-queues the run, which
    resumes from its saved training state and finishes."""
    first = Embedded(tmp_path / "var", tmp_path / "first.log")
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            sign_up(client)
            ps = new_photo_set(client, n_photos=10)
            body = {"preset": "quick", "gallery_size": 2,
                    "settings": {"steps": 80, "batch_size": 2, "checkpoint_every": 10, "preview_every": 0}}
            run = client.post(f"/api/photo-sets/{ps}/runs", json=body).json()
            poll(client, f"/api/runs/{run['id']}", lambda r: r["step"] >= 25, 120, "the run to pass step 25")
            cookies = dict(client.cookies)
    finally:
        first.stop(signal.SIGKILL)

    second = Embedded(tmp_path / "var", tmp_path / "second.log")
    try:
        assert "Resuming 1 job(s)" in second.output()
        with httpx.Client(base_url=second.url, timeout=30, cookies=cookies) as client:
            after = client.get(f"/api/runs/{run['id']}").json()
            # queued again (its dead worker's claim was freed), running or done; not back to step 0
            assert after["status"] in ("queued", "running", "succeeded") and after["step"] >= 20
            steps_seen = []

            def finished(r):
                steps_seen.append(r["step"])
                return r["status"] not in ("queued", "running")

            done = poll(client, f"/api/runs/{run['id']}", finished, 180, "the resumed run")
            assert done["status"] == "succeeded" and done["step"] == 80, done
            assert min(steps_seen) >= 20, steps_seen  # resumed from a saved state, never from step 0
    finally:
        second.stop()


def test_a_killed_embedded_worker_is_started_again_and_health_reports_the_gap(tmp_path):
    """The finding: an embedded worker killed by SIGKILL (what the OOM killer does) stayed a
    zombie; new runs stayed queued forever while /health answered ok."""
    from fastapi.testclient import TestClient

    from app.embedded import WorkerSupervisor, start_worker
    from app.main import create_app
    from app.migrate import upgrade
    from app.settings import Settings
    from web_helpers import settings_env

    settings = Settings(data_dir=tmp_path, secret_key="supervisor-test", base_models="builtin:tiny-ddpm")
    upgrade(settings.resolved_database_url)
    workers = WorkerSupervisor(settings, "WARNING", check_seconds=0.2, restart_delay=2.0,
                               start=lambda s, name, level: start_worker(s, name, level, env=settings_env(s)))
    try:
        with TestClient(create_app(settings, workers=workers)) as client:
            r = client.get("/health")
            assert r.status_code == 200 and r.json()["checks"]["workers"] == "ok"
            killed = workers.procs["gpu"].pid
            os.kill(killed, signal.SIGKILL)
            r = wait_for(lambda: (a := client.get("/health")).status_code == 503 and a, 10, "health to see the gap")
            assert r.json()["checks"]["workers"] == "missing: gpu" and r.json()["status"] == "unavailable"
            wait_for(lambda: client.get("/health").status_code == 200, 30, "the worker to be started again")
            assert workers.restarts == {"gpu": 1, "cpu": 0} and workers.procs["gpu"].pid != killed
            assert not Path(f"/proc/{killed}").exists()  # reaped: no zombie left behind
    finally:
        workers.stop()
    assert all(p.poll() is not None for p in workers.procs.values())


def claims(client, run_id: str) -> int:
    """How many deliveries have claimed the run (its attempts)."""
    import uuid

    from app.models import Run

    with client.app.state.sessionmaker() as db:
        return db.get(Run, uuid.UUID(run_id)).attempts


def test_a_run_that_keeps_killing_its_worker_fails_with_the_reason(tmp_path):
    """The finding, end to end on the embedded default: nothing capped attempts, so a job
    that killed its worker (the OOM killer) went to the next worker again and again. Here
    the gpu worker is SIGKILLed mid-run twice: each time it is started again, /health
    reports the gap, the new worker's watchdog takes the run back, and after
    max_job_attempts deaths the run fails with the reason."""
    from fastapi.testclient import TestClient

    from app.embedded import WorkerSupervisor, start_worker
    from app.main import create_app
    from app.migrate import upgrade
    from app.settings import Settings
    from web_helpers import settings_env

    settings = Settings(data_dir=tmp_path, secret_key="give-up-test", base_models="builtin:tiny-ddpm", device="cpu",
                        watchdog_seconds=0.5, job_heartbeat_seconds=0.5, max_job_attempts=2)
    upgrade(settings.resolved_database_url)
    workers = WorkerSupervisor(settings, "WARNING", check_seconds=0.2, restart_delay=3.0,
                               start=lambda s, name, level: start_worker(s, name, level, env=settings_env(s)))
    try:
        with TestClient(create_app(settings, workers=workers)) as client:
            sign_up(client)
            ps = new_photo_set(client, n_photos=10)
            body = {"preset": "quick", "settings": {"steps": 20_000, "batch_size": 2, "preview_every": 0}}
            run_id = client.post(f"/api/photo-sets/{ps}/runs", json=body).json()["id"]
            gaps = 0
            for death in (1, 2):
                # the delivery this death kills: the worker started after the last death has claimed the run
                wait_for(lambda: workers.restarts["gpu"] == death - 1 and claims(client, run_id) == death, 120,
                         f"delivery {death} to claim the run")
                poll(client, f"/api/runs/{run_id}", lambda r: r["status"] == "running", 120, f"delivery {death}")
                os.kill(workers.procs["gpu"].pid, signal.SIGKILL)  # what the OOM killer does
                health = wait_for(lambda: (h := client.get("/health")).status_code == 503 and h, 10, "the gap")
                gaps += health.json()["checks"]["workers"] == "missing: gpu"
            run = poll(client, f"/api/runs/{run_id}", lambda r: r["status"] not in ("queued", "running"), 120,
                       "the run to be given up")
            assert run["status"] == "failed" and "stopped 2 times" in run["error"], run
            assert gaps == 2  # (the cpu worker's watchdog may give the run up before the gpu worker is back)
            wait_for(lambda: client.get("/health").status_code == 200, 30, "the worker to be back")
            assert workers.restarts["gpu"] == 2
    finally:
        workers.stop()

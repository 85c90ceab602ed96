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

from web_helpers import ROOT, free_port, wait_for
from test_web_flow import check_pack, run_flow

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOMAINSTUDIO_")}
    env.update(DOMAINSTUDIO_DATA_DIR=str(tmp_path / "var"), DOMAINSTUDIO_BASE_MODELS="builtin:tiny-ddpm",
               DOMAINSTUDIO_GALLERY_SIZE="8", DOMAINSTUDIO_SAMPLE_STEPS="2", DOMAINSTUDIO_DEVICE="cpu",
               OMP_NUM_THREADS="1")
    log_path = tmp_path / "run.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "run"), "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        wait_for(up, 90, "scripts/run")
        assert proc.poll() is None, log_path.read_text()
        yield url, log_path, tmp_path / "var"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_embedded_default_whole_flow(embedded):
    url, log_path, data = embedded
    out = log_path.read_text()
    assert f"DomainStudio is running at {url}" in out
    email, password = re.search(r"Sign in as (\S+) with password (\S+)", out).groups()

    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/api/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        assert client.get("/health").json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
        client.cookies.clear()
        result = run_flow(client, timeout=240)
        check_pack(client, result)
    assert (data / "domainstudio.sqlite").is_file() and (data / "broker.sqlite").is_file()
    assert any((data / "objects" / "teams").iterdir())

"""Fixtures for the end-to-end browser test: the real app served by uvicorn in a
subprocess on a free port, on the same real services as tests/app (a Postgres database of
this suite's own, Redis, the moto S3 server, a Celery worker process), and Debian's
Chromium driven by Playwright.

Playwright's own browser download does not work here (no internet), so the test drives
/usr/bin/chromium, which scripts/install installs from Debian; without it the test fails
with the fix in the message rather than skipping, so CI cannot pass without it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service_fixtures import suite_fixtures
from web_helpers import ROOT, TAG, CeleryWorker, free_port, production_settings, settings_env, wait_for

_suite = suite_fixtures("e2e")  # a database, queue names and an S3 server of this suite's own
pg_url, queues, s3_endpoint = _suite.pg_url, _suite.queues, _suite.s3_endpoint

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
OUTPUT = Path(__file__).resolve().parent / "output"


@pytest.fixture(scope="session")
def e2e_settings(tmp_path_factory, pg_url, s3_endpoint, queues):
    """Production-like settings with the embedded default's demo models, the text-to-image one
    first: a gallery of 8 images of 10 sampling steps keeps the whole flow at a few minutes
    on 2 cores."""
    return production_settings(tmp_path_factory.mktemp("e2e-data"), pg_url, s3_endpoint, queues,
                               base_models="builtin:fmnist-sd-32,builtin:fmnist-ddpm-32", gallery_size=8,
                               sample_steps=10)


@pytest.fixture(scope="session")
def e2e_worker(e2e_settings, tmp_path_factory):
    worker = CeleryWorker(e2e_settings, tmp_path_factory.mktemp("e2e-worker") / "worker.log", name=f"e2e-{TAG}")
    yield worker
    worker.stop()


@dataclass
class AppServer:
    url: str
    log_path: Path

    def log_tail(self, lines: int = 80) -> str:
        """The end of uvicorn's log less its info events: a page that answers 500 leaves
        its traceback here."""
        kept = [line for line in self.log_path.read_text(errors="replace").splitlines()
                if '"level": "info"' not in line]
        return "\n".join(kept[-lines:]) or "(nothing but info events)"


@pytest.fixture(scope="session")
def app_server(e2e_settings, e2e_worker, tmp_path_factory):
    """The app, served by uvicorn in its own process exactly as in production (the
    browser's requests cross a real socket)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("e2e-app") / "uvicorn.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning",
         "--timeout-graceful-shutdown", "5"],  # as the Docker image: open event streams end then
        cwd=ROOT, env=settings_env(e2e_settings), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise RuntimeError("uvicorn exited:\n" + log_path.read_text(errors="replace")[-3000:])
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 60, "the app under uvicorn")
        yield AppServer(url, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install` (it installs the Debian packages "
                    "chromium and chromium-driver), or `apt-get install chromium chromium-driver`", pytrace=False)
    if shutil.which("fc-list") and not subprocess.run(["fc-list", ":lang=ja"], capture_output=True, text=True).stdout.strip():
        pytest.fail("no Japanese font, so the screenshots of the Japanese pages would show empty boxes: run "
                    "`bash scripts/install` (it installs the Debian package fonts-ipafont-gothic)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: run `bash scripts/install` (or `pip install -e .[test]`)", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _running(lock: Path) -> bool:
    """Whether the test session that wrote this lock file still runs."""
    try:
        os.kill(int(lock.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture
def output_dir(request):
    """tests/e2e/output/<test name>/, emptied first; its path is printed at the end. While
    another session's run of the same test is writing there, <test name>-<pid>/ instead,
    so that neither deletes the other's screenshots."""
    folder = OUTPUT / request.node.name
    if _running(folder / ".running"):
        folder = OUTPUT / f"{request.node.name}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / ".running").write_text(str(os.getpid()))
    yield folder
    (folder / ".running").unlink(missing_ok=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when pytest captures output
        print(f"\nscreenshots and downloads of {request.node.name}: {folder}")

"""The test suites' shared fixtures, a pytest plugin (tests/conftest.py names it in
``pytest_plugins``): real Postgres, Redis, an S3 server on loopback (moto's server mode)
and real Celery worker processes.

Each suite (tests/app, tests/security, tests/reliability, tests/e2e) keeps services of its
own, so that suites running at the same time, or one after the other in one session, never
share state: its conftest calls ``suite_fixtures`` with its own name and binds the
session fixtures it returns (a Postgres database and queue names named after the suite, an
S3 server, the settings on them, a Celery worker). What holds no state across tests
(``make_client``) is a fixture of the plugin itself."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest

from app.settings import Settings
from web_helpers import REDIS, TAG, CeleryWorker, create_database, drop_database, free_port, production_settings, wait_for


def suite_fixtures(suite: str) -> SimpleNamespace:
    """The session fixtures of one suite, named after ``suite``: s3_endpoint, pg_url,
    queues, pg_settings, local_pg_settings and celery_worker. A conftest binds the ones
    it uses to module names (pytest finds fixtures by the names in the conftest)."""

    @pytest.fixture(scope="session")
    def pg_url():
        """A database of this suite's own, migrated with Alembic."""
        from app.migrate import upgrade

        name = f"ds_{suite}_test_{TAG}"
        url = create_database(name)
        upgrade(url)
        yield url
        drop_database(name)

    @pytest.fixture(scope="session")
    def queues():
        """Queue names of this suite's own on the shared Redis, removed afterwards with any
        message a killed worker left unacknowledged there."""
        names = {"queue_gpu": f"test-gpu-{suite}-{TAG}", "queue_cpu": f"test-cpu-{suite}-{TAG}"}
        yield names
        import redis

        client = redis.Redis.from_url(REDIS)
        # the queues, their variants (tests add suffixes), kombu's bindings and our markers
        for key in client.scan_iter(match=f"*-{suite}-{TAG}*"):
            client.delete(key)
        for tag, raw in client.hgetall("unacked").items():
            if any(q.encode() in raw for q in names.values()):
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        client.close()

    @pytest.fixture(scope="session")
    def s3_endpoint(tmp_path_factory):
        """An S3 server (moto) on a free loopback port."""
        port = free_port()
        log = open(tmp_path_factory.mktemp(f"moto-{suite}") / "moto.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(url + "/moto-api/", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        try:
            wait_for(up, 30, "the moto S3 server")
            yield url
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()

    @pytest.fixture(scope="session")
    def pg_settings(tmp_path_factory, pg_url, s3_endpoint, queues) -> Settings:
        return production_settings(tmp_path_factory.mktemp("data"), pg_url, s3_endpoint, queues)

    @pytest.fixture(scope="session")
    def local_pg_settings(tmp_path_factory, pg_url, queues) -> Settings:
        """Postgres and Redis, with the local-folder object store (fast tests without S3)."""
        tmp = tmp_path_factory.mktemp("local")
        return Settings(data_dir=tmp, database_url=pg_url, broker_url=REDIS, storage_backend="local",
                        secret_key="test-secret-key-" + TAG, base_models="builtin:tiny-ddpm", gallery_size=8,
                        sample_steps=2, device="cpu", **queues)

    @pytest.fixture(scope="session")
    def celery_worker(pg_settings, tmp_path_factory):
        worker = CeleryWorker(pg_settings, tmp_path_factory.mktemp("worker") / "worker.log")
        yield worker
        worker.stop()

    return SimpleNamespace(pg_url=pg_url, queues=queues, s3_endpoint=s3_endpoint, pg_settings=pg_settings,
                           local_pg_settings=local_pg_settings, celery_worker=celery_worker)


@pytest.fixture
def make_client():
    """make_client(settings): a TestClient of the app on ``settings``, started (its
    lifespan run) and closed after the test."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    clients = []

    def make(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)

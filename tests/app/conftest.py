"""Fixtures for the web app tests, on real services: a Postgres database created for this
test session (migrated with Alembic), Redis as the Celery broker with queue names of our
own, an S3 server (moto's server mode) on a loopback port, and real Celery worker processes.
"""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from app.settings import Settings
from web_helpers import REDIS, TAG, CeleryWorker, create_database, drop_database, free_port, production_settings, wait_for


@pytest.fixture(scope="session")
def pg_url():
    from app.migrate import upgrade

    name = f"ds_app_test_{TAG}"
    url = create_database(name)
    upgrade(url)
    yield url
    drop_database(name)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
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


@pytest.fixture(scope="session")
def queues():
    """Queue names of our own on the shared Redis, removed afterwards."""
    names = {"queue_gpu": f"test-gpu-{TAG}", "queue_cpu": f"test-cpu-{TAG}"}
    yield names
    import redis

    client = redis.Redis.from_url(REDIS)
    client.delete(*names.values())
    client.close()


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


@pytest.fixture
def make_client():
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



"""The web app tests' fixtures (real Postgres, Redis, an S3 server on loopback, Celery
worker processes), shared with tests/app: loaded from its conftest under another name."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

APP_TESTS = Path(__file__).resolve().parents[1] / "app"
if str(APP_TESTS) not in sys.path:
    sys.path.insert(0, str(APP_TESTS))  # web_helpers

from web_helpers import REDIS, TAG, create_database, drop_database  # noqa: E402


def _app_fixtures():
    name = "_domainstudio_app_test_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, APP_TESTS / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


_fx = _app_fixtures()
s3_endpoint, pg_settings, local_pg_settings, celery_worker, make_client = (
    _fx.s3_endpoint, _fx.pg_settings, _fx.local_pg_settings, _fx.celery_worker, _fx.make_client)

SUFFIX = "rel"


@pytest.fixture(scope="session")
def pg_url():
    """A database of our own (tests/app's session may hold its own at the same time)."""
    from app.migrate import upgrade

    name = f"ds_{SUFFIX}_test_{TAG}"
    url = create_database(name)
    upgrade(url)
    yield url
    drop_database(name)


@pytest.fixture(scope="session")
def queues():
    """Queue names of our own on the shared Redis, removed afterwards with any message a
    killed worker left unacknowledged there."""
    names = {"queue_gpu": f"test-gpu-{SUFFIX}-{TAG}", "queue_cpu": f"test-cpu-{SUFFIX}-{TAG}"}
    yield names
    import redis

    client = redis.Redis.from_url(REDIS)
    # the queues, their variants (tests add suffixes), kombu's bindings and our markers
    for key in client.scan_iter(match=f"*-{SUFFIX}-{TAG}*"):
        client.delete(key)
    for tag, raw in client.hgetall("unacked").items():
        if any(q.encode() in raw for q in names.values()):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.close()

"""Fixtures that tests/security and tests/reliability share with tests/app: the app
tests' own fixtures (real Postgres, Redis, an S3 server on loopback, Celery worker
processes), plus a database and queue names of each suite's own, so suites running at the
same time never share state."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from web_helpers import REDIS, TAG, create_database, drop_database

APP_TESTS = Path(__file__).resolve().parent


def app_fixtures():
    """tests/app's conftest, loaded once under another module name: (s3_endpoint,
    pg_settings, local_pg_settings, celery_worker, make_client)."""
    name = "_domainstudio_app_test_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, APP_TESTS / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    fx = sys.modules[name]
    return fx.s3_endpoint, fx.pg_settings, fx.local_pg_settings, fx.celery_worker, fx.make_client


def own_database_and_queues(suffix: str):
    """The (pg_url, queues) session fixtures of one suite, named with ``suffix``."""

    @pytest.fixture(scope="session")
    def pg_url():
        """A database of our own (tests/app's session may hold its own at the same time)."""
        from app.migrate import upgrade

        name = f"ds_{suffix}_test_{TAG}"
        url = create_database(name)
        upgrade(url)
        yield url
        drop_database(name)

    @pytest.fixture(scope="session")
    def queues():
        """Queue names of our own on the shared Redis, removed afterwards with any message a
        killed worker left unacknowledged there."""
        names = {"queue_gpu": f"test-gpu-{suffix}-{TAG}", "queue_cpu": f"test-cpu-{suffix}-{TAG}"}
        yield names
        import redis

        client = redis.Redis.from_url(REDIS)
        # the queues, their variants (tests add suffixes), kombu's bindings and our markers
        for key in client.scan_iter(match=f"*-{suffix}-{TAG}*"):
            client.delete(key)
        for tag, raw in client.hgetall("unacked").items():
            if any(q.encode() in raw for q in names.values()):
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        client.close()

    return pg_url, queues

"""The web app tests' fixtures (real Postgres, Redis, an S3 server on loopback, Celery
worker processes), shared with tests/app: loaded from its conftest under another name."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

APP_TESTS = Path(__file__).resolve().parents[1] / "app"
if str(APP_TESTS) not in sys.path:
    sys.path.insert(0, str(APP_TESTS))  # web_helpers


def _app_fixtures():
    name = "_domainstudio_app_test_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, APP_TESTS / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


_fx = _app_fixtures()
pg_url, s3_endpoint, queues = _fx.pg_url, _fx.s3_endpoint, _fx.queues
pg_settings, local_pg_settings, celery_worker, make_client = (
    _fx.pg_settings, _fx.local_pg_settings, _fx.celery_worker, _fx.make_client)

"""The web app tests' fixtures (real Postgres, Redis, an S3 server on loopback, Celery
worker processes), each of this suite's own (tests/service_fixtures.py)."""
from service_fixtures import suite_fixtures

_suite = suite_fixtures("sec")
pg_url, queues, s3_endpoint = _suite.pg_url, _suite.queues, _suite.s3_endpoint
pg_settings, local_pg_settings, celery_worker = _suite.pg_settings, _suite.local_pg_settings, _suite.celery_worker

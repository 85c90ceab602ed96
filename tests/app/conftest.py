"""Fixtures for the web app tests, on real services: a Postgres database created for this
test session (migrated with Alembic), Redis as the Celery broker with queue names of our
own, an S3 server (moto's server mode) on a loopback port, and real Celery worker
processes; each of this suite's own (tests/service_fixtures.py)."""
from service_fixtures import suite_fixtures

_suite = suite_fixtures("app")
pg_url, queues, s3_endpoint = _suite.pg_url, _suite.queues, _suite.s3_endpoint
pg_settings, local_pg_settings, celery_worker = _suite.pg_settings, _suite.local_pg_settings, _suite.celery_worker

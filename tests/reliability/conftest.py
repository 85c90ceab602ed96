"""The web app tests' fixtures (real Postgres, Redis, an S3 server on loopback, Celery
worker processes), shared with tests/app: loaded from its conftest under another name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))  # web_helpers, service_fixtures

from service_fixtures import app_fixtures, own_database_and_queues  # noqa: E402

s3_endpoint, pg_settings, local_pg_settings, celery_worker, make_client = app_fixtures()
pg_url, queues = own_database_and_queues("rel")

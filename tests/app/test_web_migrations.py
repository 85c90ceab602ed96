"""Alembic: upgrade from empty to head and downgrade back, on Postgres (and SQLite, the
embedded default); the migrations match the models."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db import Base
from app.migrate import downgrade, upgrade
from web_helpers import TAG, create_database, drop_database

TABLES = {"teams", "users", "photo_sets", "photos", "runs", "checkpoints", "galleries", "images", "packs"}


@pytest.fixture(params=["postgres", "sqlite"])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite'}"
        return
    name = f"ds_migrations_{TAG}"
    yield create_database(name)
    drop_database(name)


def test_upgrade_to_head_and_back(empty_db):
    engine = create_engine(empty_db)
    try:
        upgrade(empty_db)
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == [], f"the models differ from the migrations: {diff}"
        downgrade(empty_db, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        upgrade(empty_db)  # and up again: downgrade left nothing behind
    finally:
        engine.dispose()

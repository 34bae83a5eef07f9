"""Alembic migrations build the models' schema on both backends, and refuse nothing twice."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from segs.hub.db import metadata
from segs.hub.db.engine import make_engine
from segs.hub.db.migrate import alembic_config, check_current, head_revision, migrate
from segs.hub.exceptions import SchemaNotCurrentError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import PostgresDatabase


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    database: PostgresDatabase = request.getfixturevalue("pg_fresh_database")
    return database.sqlalchemy_url


def test_migrate_builds_exactly_the_models_schema(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        with pytest.raises(SchemaNotCurrentError, match="segs hub migrate"):
            check_current(engine)
        assert migrate(empty_url) == head_revision()
        assert migrate(empty_url) == head_revision()  # a second run changes nothing
        check_current(engine)
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
            )
        assert diff == []
        assert set(inspect(engine).get_table_names()) >= set(metadata.tables)
    finally:
        engine.dispose()


def test_downgrade_removes_everything_and_upgrade_restores_it(empty_url: str) -> None:
    migrate(empty_url)
    engine = make_engine(empty_url)
    try:
        config = alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate(empty_url)
        assert set(inspect(engine).get_table_names()) >= set(metadata.tables)
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()

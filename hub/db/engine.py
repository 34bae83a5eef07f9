"""Engines for the hub's database URLs, configured the same way everywhere.

SQLite runs in WAL mode with a busy timeout, foreign keys on, ``synchronous =
FULL`` (an acknowledged window must survive a power cut, not only a crash) and
``BEGIN IMMEDIATE`` transactions, so two writers queue instead of failing on a
lock upgrade. PostgreSQL URLs without a driver get psycopg 3.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from segs.hub.exceptions import ConfigError

__all__ = [
    "POSTGRES_CONNECT_TIMEOUT_S",
    "SQLITE_BUSY_TIMEOUT_S",
    "is_sqlite",
    "make_engine",
    "normalize_url",
]

SQLITE_BUSY_TIMEOUT_S: Final = 30.0
"""How long an SQLite writer waits for another one before giving up."""
POSTGRES_CONNECT_TIMEOUT_S: Final = 10
"""How long a PostgreSQL connection attempt may take (``connect_timeout`` in the URL overrides)."""


def normalize_url(url: str) -> URL:
    """Parse ``url``; ``postgresql://`` and ``postgres://`` get the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database_url: not a database URL: {exc}") from exc
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigError(f"database_url: unsupported database {parsed.get_backend_name()!r}")
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise ConfigError("database_url: PostgreSQL is reached through psycopg 3 (+psycopg)")
    if parsed.get_backend_name() == "sqlite" and parsed.database in {None, "", ":memory:"}:
        raise ConfigError("database_url: an in-memory SQLite database cannot be shared")
    return parsed


def is_sqlite(url: str | URL) -> bool:
    """Whether ``url`` names an SQLite database."""
    parsed = url if isinstance(url, URL) else normalize_url(url)
    return parsed.get_backend_name() == "sqlite"


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the hub's connection settings (see the module docstring)."""
    parsed = url if isinstance(url, URL) else normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        # A server that accepts the connection and never answers must not hang the
        # hub (health checks, ingest start) forever; a URL's own value wins.
        if "connect_timeout" not in parsed.query:
            kwargs.setdefault("connect_args", {}).setdefault(
                "connect_timeout", POSTGRES_CONNECT_TIMEOUT_S
            )
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    engine = create_engine(
        parsed,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        **kwargs,
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # Leave transactions to us: pysqlite's own implicit BEGIN is deferred, and a
    # deferred transaction that later writes can fail with "database is locked".
    dbapi_connection.isolation_level = None
    busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)
    for pragma in (
        "PRAGMA journal_mode = WAL",
        f"PRAGMA busy_timeout = {busy_ms}",
        "PRAGMA foreign_keys = ON",
        "PRAGMA synchronous = FULL",
    ):
        dbapi_connection.execute(pragma).close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")

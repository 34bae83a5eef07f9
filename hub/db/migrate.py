"""Apply the hub's Alembic migrations programmatically, on SQLite and PostgreSQL alike.

``segs hub migrate`` calls :func:`migrate`; :func:`current_revision` and
:func:`head_revision` let ``segs hub run`` refuse an outdated schema.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import URL, Engine
from sqlalchemy.exc import SQLAlchemyError

from segs.hub.db.engine import make_engine, normalize_url
from segs.hub.exceptions import MigrationError, SchemaNotCurrentError

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "check_current",
    "current_revision",
    "head_revision",
    "migrate",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
"""The Alembic script directory shipped inside ``segs.hub``."""

_log = logging.getLogger(__name__)


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic config for the shipped migrations (``url`` for commands that connect)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        # ConfigParser interpolates %; a password may contain one.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The latest revision of the shipped migrations."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("the hub ships no migration")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise MigrationError(f"cannot read the schema revision: {exc}") from exc


def check_current(engine: Engine) -> None:
    """Raise :class:`SchemaNotCurrentError` unless the database is at the head revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotCurrentError(
            f"the database schema is at {current or 'nothing'}, the hub needs {head}: "
            "run `segs hub migrate`"
        )


def migrate(url: str | URL, *, revision: str = "head") -> str:
    """Upgrade the database at ``url`` to ``revision``; return the revision it is at."""
    engine = make_engine(normalize_url(url) if isinstance(url, str) else url)
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        reached = current_revision(engine)
    except (CommandError, SQLAlchemyError) as exc:
        raise MigrationError(f"migration to {revision} failed: {exc}") from exc
    finally:
        engine.dispose()
    _log.info("database schema at revision %s", reached)
    return reached or ""

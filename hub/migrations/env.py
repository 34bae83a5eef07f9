"""Alembic environment of the hub: runs on the connection :func:`segs.hub.db.migrate` passes.

Run through ``segs hub migrate`` (or :func:`segs.hub.db.migrate.migrate`); a
connection given in ``config.attributes["connection"]`` is used as is,
otherwise one is opened from the ``sqlalchemy.url`` option. SQLite needs
batch mode for ``ALTER``; both backends compare column types.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from segs.hub.db import metadata
from segs.hub.db.engine import make_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url to migrate")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("the hub's migrations run online only (segs hub migrate)")
_run_online()

"""Storage: the interface ingest writes through, with a PostgreSQL and an SQLite backend.

    store = open_store(settings.database_url, options=StoreOptions.from_settings(settings))
    result = store.commit(messages, dead_letters)   # one transaction
    # only now acknowledge result.acks

See :mod:`segs.hub.store.base` for what a commit does.
"""

from __future__ import annotations

from segs.hub.db.engine import make_engine, normalize_url
from segs.hub.db.migrate import check_current
from segs.hub.db.types import utc_now
from segs.hub.store.base import COUNTER_BREAK_EVENT, Store, StoreOptions
from segs.hub.store.postgres import PostgresStore
from segs.hub.store.sqlite import SqliteStore
from segs.hub.store.types import (
    BatchMessage,
    Clock,
    CommitResult,
    DeadLetterRecord,
    GatewayAck,
    HubReason,
    Incoming,
    IngestMessage,
    PresenceMessage,
)

__all__ = [
    "COUNTER_BREAK_EVENT",
    "BatchMessage",
    "Clock",
    "CommitResult",
    "DeadLetterRecord",
    "GatewayAck",
    "HubReason",
    "Incoming",
    "IngestMessage",
    "PostgresStore",
    "PresenceMessage",
    "SqliteStore",
    "Store",
    "StoreOptions",
    "open_store",
]


def open_store(
    url: str,
    *,
    options: StoreOptions | None = None,
    clock: Clock = utc_now,
    check_schema: bool = True,
) -> Store:
    """A store on the database at ``url`` (SQLite or PostgreSQL).

    With ``check_schema`` (the default) raises
    :class:`~segs.hub.exceptions.SchemaNotCurrentError` unless the schema is at
    the latest migration.
    """
    parsed = normalize_url(url)
    engine = make_engine(parsed, pool_size=1, max_overflow=2)
    try:
        if check_schema:
            check_current(engine)
    except BaseException:
        engine.dispose()
        raise
    store_type = SqliteStore if parsed.get_backend_name() == "sqlite" else PostgresStore
    return store_type(engine, options=options, clock=clock)

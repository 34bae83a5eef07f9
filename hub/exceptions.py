"""The exception hierarchy of ``segs.hub``.

Library errors (SQLAlchemy, psycopg, sqlite3, Alembic, MQTT, pydantic) are
translated at the boundary into these, so a caller handles :class:`HubError`
and nothing else. Invalid arguments also derive from :class:`ValueError`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "HubError",
    "MigrationError",
    "SchemaNotCurrentError",
    "StoreError",
    "StoreUnavailableError",
]


class HubError(Exception):
    """Base class of every error raised by ``segs.hub``."""


class ConfigError(HubError, ValueError):
    """The hub's settings are invalid; the message names the setting."""


class StoreError(HubError):
    """The database refused an operation for a reason retrying will not fix."""


class StoreUnavailableError(StoreError):
    """The database is unreachable, busy or out of resources: retry later.

    Ingest never acknowledges a batch whose commit raised this; the edge resends it.
    """


class MigrationError(HubError):
    """Applying or inspecting the schema migrations failed."""


class SchemaNotCurrentError(MigrationError):
    """The database schema is not at the latest migration (run ``segs hub migrate``)."""

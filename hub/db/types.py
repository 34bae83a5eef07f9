"""Column types that behave the same on PostgreSQL and SQLite.

:data:`ID_TYPE` holds gateway, meter and region ids.

:class:`UtcDateTime` stores timezone-aware UTC times: ``TIMESTAMP WITH TIME
ZONE`` on PostgreSQL and integer microseconds since the Unix epoch on SQLite,
so that ordering, equality (primary keys) and bucket arithmetic are exact on
both. Naive datetimes are refused rather than guessed at.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import BigInteger, DateTime, Dialect, String
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["EPOCH", "ID_TYPE", "UtcDateTime", "from_micros", "to_micros", "utc_now"]

ID_TYPE: Final[TypeEngine[str]] = String(64).with_variant(String(64, collation="C"), "postgresql")
"""Gateway, meter and region ids: case-sensitive ASCII, compared byte by byte.

On PostgreSQL the ``"C"`` collation makes every key comparison a ``memcmp``
instead of a locale-aware one: the ingest path compares ids in several B-trees
per window.
"""

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC: the hub's default clock."""
    return datetime.now(UTC)


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime; a naive one raises ``ValueError``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()}: SEGS stores UTC times only")
    return (value - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """The UTC datetime ``value`` microseconds after the Unix epoch."""
    return EPOCH + timedelta(microseconds=value)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime; see the module docstring for the storage."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """``BIGINT`` microseconds on SQLite, ``TIMESTAMP WITH TIME ZONE`` elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        """Refuse naive datetimes; convert to the storage form."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return to_micros(value)
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: SEGS stores UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return from_micros(int(value))
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return value.astimezone(UTC)

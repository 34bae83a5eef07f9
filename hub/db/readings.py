"""What ingest stores: minute windows, rollups, regional load, gaps, events, dead letters.

The hot tables (``meter_windows``, the rollups, ``regional_load``) carry no
foreign keys: ingest checks every meter against the registry before it writes,
and a foreign-key probe per row would cost a fifth of the insert rate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Double, Index, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel

from segs.hub.db.types import ID_TYPE, UtcDateTime, utc_now

__all__ = [
    "DeadLetter",
    "MeterEvent",
    "MeterGap",
    "MeterRollup15m",
    "MeterRollupDaily",
    "MeterWindow",
    "RegionalLoad",
    "RollupFields",
]


class MeterWindow(SQLModel, table=True):
    """``meter_windows``: one row per ``(meter_id, window_start)``, as the edge sent it.

    ``region`` is the meter's region when the window was stored; ``counter_break``
    is set when its counters do not continue the meter's previous window.
    ``quality`` holds the window's quality flags joined by commas.
    """

    __tablename__ = "meter_windows"
    __table_args__ = (
        Index(
            "ix_meter_windows_window_start",
            "window_start",
            postgresql_using="brin",
        ),
    )

    meter_id: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    window_start: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    window_seconds: int
    import_kwh: float = Field(sa_type=Double)
    export_kwh: float = Field(sa_type=Double)
    import_delta_kwh: float = Field(sa_type=Double)
    export_delta_kwh: float = Field(sa_type=Double)
    power_min_kw: float = Field(sa_type=Double)
    power_avg_kw: float = Field(sa_type=Double)
    power_max_kw: float = Field(sa_type=Double)
    voltage_avg_v: float | None = Field(default=None, sa_type=Double)
    current_avg_a: float | None = Field(default=None, sa_type=Double)
    power_factor_avg: float | None = Field(default=None, sa_type=Double)
    frequency_avg_hz: float | None = Field(default=None, sa_type=Double)
    samples_got: int
    samples_expected: int
    quality: str = Field(default="", max_length=200)
    region: str = Field(max_length=64, sa_type=ID_TYPE)
    counter_break: bool = False


class RollupFields(SQLModel):
    """The columns of a per-meter rollup bucket, updated incrementally by ingest.

    Energy is the sum of the windows' deltas; power min/max are over the windows'
    min/max; ``power_avg_kw`` is time-weighted by window length. ``first_*`` are
    the counters at the start of the bucket's earliest window, ``last_*`` at the
    end of its latest one, so counter differences span the bucket.
    """

    meter_id: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    bucket_start: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    region: str = Field(max_length=64, sa_type=ID_TYPE)
    windows: int
    seconds: int = Field(sa_type=BigInteger, description="window seconds covered")
    samples_got: int = Field(sa_type=BigInteger)
    samples_expected: int = Field(sa_type=BigInteger)
    import_kwh: float = Field(sa_type=Double)
    export_kwh: float = Field(sa_type=Double)
    power_min_kw: float = Field(sa_type=Double)
    power_avg_kw: float = Field(sa_type=Double)
    power_max_kw: float = Field(sa_type=Double)
    first_window_start: datetime = Field(sa_type=UtcDateTime)
    first_import_kwh: float = Field(sa_type=Double)
    first_export_kwh: float = Field(sa_type=Double)
    last_window_start: datetime = Field(sa_type=UtcDateTime)
    last_import_kwh: float = Field(sa_type=Double)
    last_export_kwh: float = Field(sa_type=Double)


# Rollup and load rows are updated in place by every commit: free room on each page
# lets PostgreSQL update them without touching the index (HOT updates).
UPSERTED_FILLFACTOR = 50


class MeterRollup15m(RollupFields, table=True):
    """``meter_rollups_15m``: per meter and UTC quarter hour."""

    __tablename__ = "meter_rollups_15m"
    __table_args__ = {"postgresql_with": {"fillfactor": UPSERTED_FILLFACTOR}}


class MeterRollupDaily(RollupFields, table=True):
    """``meter_rollups_daily``: per meter and UTC day (local days: sum the quarter hours)."""

    __tablename__ = "meter_rollups_daily"
    __table_args__ = {"postgresql_with": {"fillfactor": UPSERTED_FILLFACTOR}}


class RegionalLoad(SQLModel, table=True):
    """``regional_load``: a region's load per UTC minute.

    ``total_kw`` is the region's mean load over the minute: the energy of the
    windows stored for it, over one minute (a 60 s window adds its average power).
    ``meters_reporting`` counts meters with a window in the minute; ``load_factor``
    is ``total_kw / capacity_kw`` with the capacity in force when it was written.
    """

    __tablename__ = "regional_load"
    __table_args__ = {"postgresql_with": {"fillfactor": UPSERTED_FILLFACTOR}}

    region: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    minute: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    total_kw: float = Field(sa_type=Double)
    meters_reporting: int
    windows: int
    capacity_kw: float = Field(sa_type=Double)
    load_factor: float = Field(sa_type=Double)


class MeterGap(SQLModel, table=True):
    """``meter_gaps``: a span with no window for a meter, after it had sent one.

    A late window inside a gap shrinks or splits it; a gap fully filled is deleted.
    """

    __tablename__ = "meter_gaps"

    meter_id: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    gap_start: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    gap_end: datetime = Field(sa_type=UtcDateTime)
    detected_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class MeterEvent(SQLModel, table=True):
    """``meter_events``: events from the edge, and those the hub detects (``source = 'hub'``).

    Identity ``(meter_id, kind, at)``; ``details`` holds the event's own fields.
    """

    __tablename__ = "meter_events"

    meter_id: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    kind: str = Field(primary_key=True, max_length=32)
    at: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    gateway_id: str = Field(index=True, max_length=64, sa_type=ID_TYPE)
    region: str = Field(max_length=64, sa_type=ID_TYPE)
    source: str = Field(default="edge", max_length=8)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    received_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class DeadLetter(SQLModel, table=True):
    """``dead_letters``: a message the hub refused, kept byte for byte with the reason.

    ``reason`` is a :class:`segs.protocol.Reason` value or one of the hub's own
    (:class:`segs.hub.store.HubReason`).
    """

    __tablename__ = "dead_letters"

    id: int | None = Field(
        default=None,
        primary_key=True,
        sa_type=BigInteger().with_variant(Integer(), "sqlite"),
    )
    received_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime, index=True)
    topic: str = Field(sa_type=Text)
    payload: bytes = Field(sa_type=LargeBinary)
    reason: str = Field(max_length=32, index=True)
    message: str = Field(sa_type=Text)
    gateway_id: str | None = Field(default=None, max_length=64, index=True, sa_type=ID_TYPE)
    seq: int | None = Field(default=None, sa_type=BigInteger)
    hub_id: str | None = Field(default=None, max_length=64, sa_type=ID_TYPE)

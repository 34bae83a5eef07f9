"""Telemetry reads: a meter's windows, history, statistics and breakdowns; a region's load.

The read side of what ingest stores (:mod:`segs.hub.db.readings`), for the REST
API's telemetry endpoints. Every function is a query over a SQLAlchemy
:class:`~sqlalchemy.Connection` to PostgreSQL or SQLite and returns pydantic
models the API serves as they are (``response_model``).

Time ranges are half-open ``[start, end)`` of timezone-aware datetimes; results
are in UTC. A naive datetime, an empty range or one longer than
:data:`MAX_RANGE` raises :class:`ValueError`, as do unknown time zones and
choices; the API answers those with 422.

Which table answers what:

- :func:`history` reads one table per resolution (``1m`` the windows as stored,
  ``15m`` and ``1d`` the rollups): one range query on the primary key
  ``(meter_id, start)``. Points are the rows starting in ``[start, end)`` once
  ``start`` is floored to the resolution.
- :func:`stats` and :func:`compare` total exactly the windows starting in the
  range, each part from the coarsest table that holds it exactly: whole UTC days
  from the daily rollups, whole quarter hours from the 15-minute rollups, the
  ragged ends from the windows. (Ends older than the windows' retention count
  nothing.) The peak is found in the same parts and narrowed down to its window.
- :func:`breakdown` groups the 15-minute rollups in local time. A quarter hour
  lies inside one local hour in every zone whose UTC offset is a multiple of
  15 minutes: all of today's zones, Asia/Kathmandu (+05:45) included.
- :func:`top_consumers` ranks meters by their rollups over the range rounded
  out to quarter hours.
- :func:`region_stats` and :func:`regions_summary` read ``regional_load``.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Select,
    Subquery,
    Table,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    null,
    select,
    type_coerce,
    union_all,
)

from segs.hub.db import (
    Gateway,
    Meter,
    MeterRollup15m,
    MeterRollupDaily,
    MeterWindow,
    Region,
    RegionalLoad,
    metadata,
)
from segs.hub.db.types import EPOCH, UtcDateTime, to_micros

__all__ = [
    "MAX_POINTS",
    "MAX_RANGE",
    "OFFLINE_AFTER_WINDOWS",
    "REPORTING_WINDOW",
    "Breakdown",
    "BreakdownBucket",
    "BreakdownBy",
    "Comparison",
    "Consumer",
    "History",
    "HistoryPoint",
    "MeterStatusRow",
    "Period",
    "PeriodTotals",
    "RegionLoadPoint",
    "RegionStats",
    "RegionSummary",
    "Resolution",
    "Stats",
    "WindowPoint",
    "breakdown",
    "choose_resolution",
    "compare",
    "history",
    "latest_window",
    "meter_region",
    "meter_status",
    "region_stats",
    "region_timezone",
    "regions_summary",
    "stats",
    "top_consumers",
]

Resolution = Literal["1m", "15m", "1d"]
"""History resolution: the stored windows, 15-minute rollups or daily (UTC) rollups."""
BreakdownBy = Literal["hour", "weekday", "day"]
"""Breakdown keys: local hour of day, local weekday (Monday = 0), local calendar date."""
Period = Literal["day", "week", "month"]
"""Comparison periods: local calendar day, week (from Monday) or month."""

MAX_POINTS: Final = 1500
"""Most points :func:`history` and :func:`region_stats` return by default."""
MAX_RANGE: Final = timedelta(days=400)
"""Longest time range a query accepts."""
REPORTING_WINDOW: Final = timedelta(minutes=5)
"""A meter whose latest window started this recently counts as reporting in a region summary."""
OFFLINE_AFTER_WINDOWS: Final = 3
"""A meter is offline once its latest window ended more than this many window lengths ago."""

MINUTE: Final = timedelta(minutes=1)
QUARTER: Final = timedelta(minutes=15)
DAY: Final = timedelta(days=1)
_SECOND: Final = timedelta(seconds=1)
_RESOLUTIONS: Final[tuple[Resolution, ...]] = ("1m", "15m", "1d")
_WIDTHS: Final[dict[Resolution, timedelta]] = {"1m": MINUTE, "15m": QUARTER, "1d": DAY}
_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_windows = metadata.tables[MeterWindow.__tablename__]
_quarters = metadata.tables[MeterRollup15m.__tablename__]
_days = metadata.tables[MeterRollupDaily.__tablename__]
_load = metadata.tables[RegionalLoad.__tablename__]
_meters = metadata.tables[Meter.__tablename__]
_gateways = metadata.tables[Gateway.__tablename__]
_regions = metadata.tables[Region.__tablename__]
_TABLES: Final[dict[Resolution, Table]] = {"1m": _windows, "15m": _quarters, "1d": _days}


# -- models --------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class WindowPoint(_Model):
    """A meter's stored window with every field ingest kept."""

    meter_id: str = Field(description="the meter")
    region: str = Field(description="the meter's region when the window was stored")
    window_start: datetime = Field(description="start of the window, UTC")
    window_end: datetime = Field(description="end of the window, UTC")
    window_seconds: int = Field(description="window length, s")
    import_kwh: float = Field(description="cumulative import counter at window end, kWh")
    export_kwh: float = Field(description="cumulative export counter at window end, kWh")
    import_delta_kwh: float = Field(description="import energy during the window, kWh")
    export_delta_kwh: float = Field(description="export energy during the window, kWh")
    power_min_kw: float = Field(description="lowest active power sample, kW (export < 0)")
    power_avg_kw: float = Field(description="mean active power, kW")
    power_max_kw: float = Field(description="highest active power sample, kW")
    voltage_avg_v: float | None = Field(description="mean voltage, V")
    current_avg_a: float | None = Field(description="mean current, A")
    power_factor_avg: float | None = Field(description="mean power factor (-1..1)")
    frequency_avg_hz: float | None = Field(description="mean frequency, Hz")
    samples_got: int = Field(description="valid samples in the window")
    samples_expected: int = Field(description="samples the poll interval allows")
    quality: list[str] = Field(
        description="quality flags: partial, meter_offline, invalid_values_dropped, counter_reset"
    )
    counter_break: bool = Field(description="the counters do not continue the previous window's")


class HistoryPoint(_Model):
    """One bucket of a meter's history."""

    start: datetime = Field(description="start of the bucket (or window), UTC")
    import_kwh: float = Field(description="import energy in the bucket, kWh")
    export_kwh: float = Field(description="export energy in the bucket, kWh")
    power_min_kw: float = Field(description="lowest power sample in the bucket, kW")
    power_avg_kw: float = Field(description="mean power, time-weighted over the windows, kW")
    power_max_kw: float = Field(description="highest power sample in the bucket, kW")
    samples_got: int = Field(description="valid samples in the bucket")
    samples_expected: int = Field(description="samples expected in the bucket's windows")
    voltage_avg_v: float | None = Field(
        default=None, description="mean voltage, V (1m resolution only)"
    )


class History(_Model):
    """A meter's history over a range at one resolution."""

    meter_id: str = Field(description="the meter")
    resolution: Resolution = Field(
        description="1m: the windows as stored; 15m: quarter-hour rollups; 1d: UTC-day rollups"
    )
    start: datetime = Field(description="start of the range asked for, UTC")
    end: datetime = Field(description="end of the range asked for (excluded), UTC")
    points: list[HistoryPoint] = Field(description="buckets starting in the range, in time order")


class Stats(_Model):
    """A meter's totals over a range: exactly those of the windows starting in it."""

    meter_id: str = Field(description="the meter")
    start: datetime = Field(description="start of the range, UTC")
    end: datetime = Field(description="end of the range (excluded), UTC")
    import_kwh: float = Field(description="import energy, kWh")
    export_kwh: float = Field(description="export energy, kWh")
    power_min_kw: float | None = Field(description="lowest power sample, kW; null without data")
    power_avg_kw: float | None = Field(description="mean power, time-weighted, kW")
    power_max_kw: float | None = Field(description="highest power sample, kW")
    peak_at: datetime | None = Field(description="start of the window with the highest power")
    windows: int = Field(description="windows in the range")
    covered_seconds: int = Field(description="seconds the windows cover")
    samples_got: int = Field(description="valid samples")
    samples_expected: int = Field(description="samples expected in the windows")
    coverage: float | None = Field(description="samples_got / samples_expected (0..1)")


class BreakdownBucket(_Model):
    """One local hour, weekday or date of a breakdown."""

    key: int | date = Field(description="local hour 0..23, weekday 0 (Monday)..6, or local date")
    label: str = Field(description="the key for people: 07:00, Monday, 2026-03-02")
    import_kwh: float = Field(description="import energy, kWh")
    export_kwh: float = Field(description="export energy, kWh")
    power_avg_kw: float | None = Field(description="mean power, time-weighted, kW")
    days: int = Field(description="local dates with data in the bucket (divide to get per day)")
    windows: int = Field(description="windows in the bucket")


class Breakdown(_Model):
    """A meter's energy grouped by local hour of day, weekday or date."""

    meter_id: str = Field(description="the meter")
    by: BreakdownBy = Field(description="how the quarter hours are grouped")
    timezone: str = Field(description="IANA time zone of the grouping")
    start: datetime = Field(description="start of the range, UTC")
    end: datetime = Field(description="end of the range (excluded), UTC")
    buckets: list[BreakdownBucket] = Field(
        description="24 hours, 7 weekdays, or every local date of the range, empty ones included"
    )


class PeriodTotals(_Model):
    """A meter's energy and mean power over one span."""

    start: datetime = Field(description="start of the span, UTC")
    end: datetime = Field(description="end of the span (excluded), UTC")
    import_kwh: float = Field(description="import energy, kWh")
    export_kwh: float = Field(description="export energy, kWh")
    power_avg_kw: float | None = Field(description="mean power, time-weighted, kW")
    windows: int = Field(description="windows in the span")


class Comparison(_Model):
    """The current local period so far against the same stretch of the previous one."""

    meter_id: str = Field(description="the meter")
    period: Period = Field(description="local calendar day, week (from Monday) or month")
    timezone: str = Field(description="IANA time zone of the calendar")
    now: datetime = Field(description="the end of the current span, UTC")
    current: PeriodTotals = Field(description="from the current period's start to now")
    previous: PeriodTotals = Field(
        description="the previous period from its start over the same elapsed time"
    )
    previous_full: PeriodTotals = Field(description="the whole previous period")
    import_change_percent: float | None = Field(
        description="current vs previous import, %; null when previous is 0"
    )
    power_avg_change_percent: float | None = Field(
        description="current vs previous mean power, %; null when previous is 0 or missing"
    )


class RegionLoadPoint(_Model):
    """A region's load over one bucket of whole minutes."""

    start: datetime = Field(description="start of the bucket, UTC")
    total_kw: float = Field(description="mean regional load over the minutes with data, kW")
    peak_kw: float = Field(description="highest minute load in the bucket, kW")
    meters_reporting: float = Field(description="mean meters reporting per minute")
    load_factor: float = Field(description="mean load / capacity (ratio)")
    minutes: int = Field(description="minutes with data in the bucket")


class RegionStats(_Model):
    """A region's load over a range."""

    region: str = Field(description="the region")
    start: datetime = Field(description="start of the range, UTC")
    end: datetime = Field(description="end of the range (excluded), UTC")
    capacity_kw: float = Field(description="the region's feeder capacity now, kW")
    bucket_minutes: int = Field(description="minutes per timeline point")
    points: list[RegionLoadPoint] = Field(description="buckets with data, in time order")
    peak_kw: float | None = Field(description="highest minute load, kW; null without data")
    peak_at: datetime | None = Field(description="the minute of the peak, UTC")
    load_factor_avg: float | None = Field(description="mean load factor over minutes with data")
    energy_kwh: float = Field(description="net energy of the minutes with data, kWh")
    minutes: int = Field(description="minutes with data")


class Consumer(_Model):
    """A meter ranked by import energy."""

    rank: int = Field(description="1 for the largest consumer")
    meter_id: str = Field(description="the meter")
    region: str = Field(description="the meter's region")
    customer_id: str | None = Field(description="the customer the meter is linked to")
    import_kwh: float = Field(description="import energy, kWh")
    export_kwh: float = Field(description="export energy, kWh")
    power_avg_kw: float | None = Field(description="mean power, time-weighted, kW")


class MeterStatusRow(_Model):
    """Whether a meter is reporting."""

    meter_id: str = Field(description="the meter")
    region: str = Field(description="the meter's region")
    gateway_id: str = Field(description="the gateway reading it")
    status: str = Field(description="registry status: active, inactive or retired")
    gateway_online: bool = Field(description="the gateway's MQTT presence")
    last_window_end: datetime | None = Field(description="end of the meter's latest window, UTC")
    online: bool = Field(
        description="gateway online and the latest window ended at most 3 window lengths ago"
    )


class RegionSummary(_Model):
    """A region at a glance."""

    region: str = Field(description="the region")
    timezone: str = Field(description="IANA time zone")
    currency: str = Field(description="ISO 4217 code")
    capacity_kw: float = Field(description="feeder capacity, kW")
    meters_total: int = Field(description="meters registered in the region, any status")
    meters_reporting: int = Field(description="meters with a window started in the last 5 min")
    load_kw: float | None = Field(description="load of the latest minute of the last 5 min, kW")
    load_factor: float | None = Field(description="load / capacity of that minute")
    load_minute: datetime | None = Field(description="that minute, UTC")
    today_import_kwh: float = Field(description="import energy of the meters today (UTC), kWh")
    today_export_kwh: float = Field(description="export energy of the meters today (UTC), kWh")


# -- checks and time arithmetic ------------------------------------------------------------------


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} {value.isoformat()} has no time zone: give an aware datetime")
    return value.astimezone(UTC)


def _check_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start, end = _aware(start, "start"), _aware(end, "end")
    if end <= start:
        raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    if end - start > MAX_RANGE:
        raise ValueError(
            f"range of {(end - start) / DAY:.1f} days is longer than {MAX_RANGE.days} days"
        )
    return start, end


def _zone(tz: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"not an IANA time zone: {tz!r}") from None


def _choice(value: str, allowed: Any, name: str) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _floor(value: datetime, width: timedelta) -> datetime:
    return EPOCH + (value - EPOCH) // width * width


def _ceil(value: datetime, width: timedelta) -> datetime:
    return EPOCH - (EPOCH - value) // width * width


def _count(resolution: Resolution, start: datetime, end: datetime) -> int:
    width = _WIDTHS[resolution]
    return -((_floor(start, width) - end) // width)


def _percent(current: float | None, previous: float | None) -> float | None:
    if current is None or not previous:
        return None
    return (current - previous) / abs(previous) * 100.0


# -- one meter -----------------------------------------------------------------------------------


def meter_region(conn: Connection, meter_id: str) -> str | None:
    """The region of a registered meter; ``None`` for an unknown one."""
    region: str | None = conn.execute(
        select(_meters.c.region).where(_meters.c.meter_id == meter_id)
    ).scalar_one_or_none()
    return region


def region_timezone(conn: Connection, region: str) -> str | None:
    """The IANA time zone of a region; ``None`` for an unknown one."""
    tz: str | None = conn.execute(
        select(_regions.c.timezone).where(_regions.c.name == region)
    ).scalar_one_or_none()
    return tz


def latest_window(conn: Connection, meter_id: str) -> WindowPoint | None:
    """The meter's newest stored window; ``None`` if it has none."""
    w = _windows.c
    row = (
        conn.execute(
            select(_windows).where(w.meter_id == meter_id).order_by(w.window_start.desc()).limit(1)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    values = dict(row)
    values["window_end"] = row["window_start"] + timedelta(seconds=row["window_seconds"])
    values["quality"] = [flag for flag in row["quality"].split(",") if flag]
    return WindowPoint.model_validate(values)


def choose_resolution(
    start: datetime, end: datetime, *, max_points: int = MAX_POINTS
) -> Resolution:
    """The finest resolution giving at most ``max_points`` buckets over ``[start, end)``."""
    start, end = _check_range(start, end)
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    for resolution in _RESOLUTIONS:
        if _count(resolution, start, end) <= max_points:
            return resolution
    raise ValueError(
        f"even daily resolution gives {_count('1d', start, end)} points, "
        f"more than {max_points}: narrow the range"
    )


def history(
    conn: Connection,
    meter_id: str,
    start: datetime,
    end: datetime,
    resolution: Resolution | None = None,
    *,
    max_points: int = MAX_POINTS,
) -> History:
    """The meter's buckets over ``[start, end)``, by default at the finest resolution that fits."""
    start, end = _check_range(start, end)
    if resolution is None:
        resolution = choose_resolution(start, end, max_points=max_points)
    else:
        _choice(resolution, Resolution, "resolution")
        count = _count(resolution, start, end)
        if count > max_points:
            raise ValueError(_too_many(resolution, count, start, end, max_points))
    c = _TABLES[resolution].c
    volts: ColumnElement[Any]
    if resolution == "1m":
        key, imported, exported, volts = (
            c.window_start,
            c.import_delta_kwh,
            c.export_delta_kwh,
            c.voltage_avg_v,
        )
    else:
        key, imported, exported, volts = c.bucket_start, c.import_kwh, c.export_kwh, null()
    query = (
        select(
            key,
            imported,
            exported,
            volts,
            c.power_min_kw,
            c.power_avg_kw,
            c.power_max_kw,
            c.samples_got,
            c.samples_expected,
        )
        .where(c.meter_id == meter_id, key >= _floor(start, _WIDTHS[resolution]), key < end)
        .order_by(key)
    )
    # The hot path: fetch all rows at once and unpack tuples (a Row lookup per field costs more).
    rows = conn.execute(query).all()
    points = [
        HistoryPoint(
            start=at,
            import_kwh=imported,
            export_kwh=exported,
            voltage_avg_v=volts,
            power_min_kw=low,
            power_avg_kw=mean,
            power_max_kw=high,
            samples_got=got,
            samples_expected=expected,
        )
        for at, imported, exported, volts, low, mean, high, got, expected in rows
    ]
    return History(meter_id=meter_id, resolution=resolution, start=start, end=end, points=points)


def _too_many(
    resolution: Resolution, count: int, start: datetime, end: datetime, limit: int
) -> str:
    coarser = _RESOLUTIONS[_RESOLUTIONS.index(resolution) + 1 :]
    fitting = [r for r in coarser if _count(r, start, end) <= limit]
    advice = f"use resolution {fitting[0]!r}" if fitting else "narrow the range"
    return (
        f"resolution {resolution!r} gives {count} points over this range, "
        f"more than {limit}: {advice}"
    )


# -- exact totals from the coarsest tables -------------------------------------------------------

_Span = tuple[Table, datetime, datetime]


def _plan(start: datetime, end: datetime) -> list[_Span]:
    """Cover the windows starting in ``[start, end)`` with whole days, quarters and windows."""
    if end <= start:
        return []
    first_quarter, last_quarter = _ceil(start, QUARTER), _floor(end, QUARTER)
    if first_quarter >= last_quarter:
        return [(_windows, start, end)]
    spans: list[_Span] = []
    if start < first_quarter:
        spans.append((_windows, start, first_quarter))
    first_day, last_day = _ceil(first_quarter, DAY), _floor(last_quarter, DAY)
    if first_day < last_day:
        if first_quarter < first_day:
            spans.append((_quarters, first_quarter, first_day))
        spans.append((_days, first_day, last_day))
        if last_day < last_quarter:
            spans.append((_quarters, last_day, last_quarter))
    else:
        spans.append((_quarters, first_quarter, last_quarter))
    if last_quarter < end:
        spans.append((_windows, last_quarter, end))
    return spans


def _parts(meters: str | Select[Any], spans: list[_Span]) -> Subquery:
    """The rows of ``spans`` in one shape, ``level`` 0 for windows, 1 quarters, 2 days."""
    selects: list[Select[Any]] = []
    windows: ColumnElement[Any]
    for table, lo, hi in spans:
        c = table.c
        if table is _windows:
            key, level = c.window_start, 0
            energy, seconds, windows = (
                (c.import_delta_kwh, c.export_delta_kwh),
                c.window_seconds,
                literal(1, Integer),
            )
        else:
            key, level = c.bucket_start, 1 if table is _quarters else 2
            energy, seconds, windows = (c.import_kwh, c.export_kwh), c.seconds, c.windows
        where = c.meter_id == meters if isinstance(meters, str) else c.meter_id.in_(meters)
        selects.append(
            select(
                c.meter_id.label("meter_id"),
                key.label("at"),
                literal(level, Integer).label("level"),
                energy[0].label("import_kwh"),
                energy[1].label("export_kwh"),
                c.power_min_kw.label("power_min_kw"),
                c.power_max_kw.label("power_max_kw"),
                (c.power_avg_kw * seconds).label("power_seconds"),
                seconds.label("seconds"),
                windows.label("windows"),
                c.samples_got.label("samples_got"),
                c.samples_expected.label("samples_expected"),
            ).where(where, key >= lo, key < hi)
        )
    if len(selects) == 1:
        return selects[0].subquery("parts")
    return union_all(*selects).subquery("parts")


@dataclass(frozen=True, slots=True)
class _Totals:
    import_kwh: float
    export_kwh: float
    power_min_kw: float | None
    power_max_kw: float | None
    power_avg_kw: float | None
    seconds: int
    windows: int
    samples_got: int
    samples_expected: int


_NO_TOTALS: Final = _Totals(0.0, 0.0, None, None, None, 0, 0, 0, 0)


def _totals(conn: Connection, meter_id: str, start: datetime, end: datetime) -> _Totals:
    spans = _plan(start, end)
    if not spans:
        return _NO_TOTALS
    p = _parts(meter_id, spans).c
    row = conn.execute(
        select(
            func.sum(p.import_kwh),
            func.sum(p.export_kwh),
            func.min(p.power_min_kw),
            func.max(p.power_max_kw),
            func.sum(p.power_seconds),
            func.sum(p.seconds),
            func.sum(p.windows),
            func.sum(p.samples_got),
            func.sum(p.samples_expected),
        )
    ).one()
    windows = int(row[6] or 0)
    if not windows:
        return _NO_TOTALS
    seconds = int(row[5])
    return _Totals(
        import_kwh=float(row[0]),
        export_kwh=float(row[1]),
        power_min_kw=float(row[2]),
        power_max_kw=float(row[3]),
        power_avg_kw=float(row[4]) / seconds if seconds else None,
        seconds=seconds,
        windows=windows,
        samples_got=int(row[7]),
        samples_expected=int(row[8]),
    )


def _peak(conn: Connection, meter_id: str, spans: list[_Span]) -> datetime | None:
    """Start of the earliest window with the highest power in ``spans``."""
    if not spans:
        return None
    p = _parts(meter_id, spans).c
    row = conn.execute(
        select(p.power_max_kw, type_coerce(p.at, UtcDateTime()), p.level)
        .order_by(p.power_max_kw.desc(), p.at)
        .limit(1)
    ).first()
    if row is None:
        return None
    at: datetime
    value, at, level = row
    # A rollup's peak came from one of its windows: narrow it down while they exist.
    for table, width in ((_quarters, DAY), (_windows, QUARTER))[2 - level :]:
        c = _parts(meter_id, [(table, at, at + width)]).c
        finer = conn.execute(
            select(c.power_max_kw, type_coerce(c.at, UtcDateTime()))
            .order_by(c.power_max_kw.desc(), c.at)
            .limit(1)
        ).first()
        if finer is None or finer[0] != value:
            break
        at = finer[1]
    return at


def stats(conn: Connection, meter_id: str, start: datetime, end: datetime) -> Stats:
    """The meter's energy, power and coverage over ``[start, end)``, exact to the window."""
    start, end = _check_range(start, end)
    totals = _totals(conn, meter_id, start, end)
    return Stats(
        meter_id=meter_id,
        start=start,
        end=end,
        import_kwh=totals.import_kwh,
        export_kwh=totals.export_kwh,
        power_min_kw=totals.power_min_kw,
        power_avg_kw=totals.power_avg_kw,
        power_max_kw=totals.power_max_kw,
        peak_at=_peak(conn, meter_id, _plan(start, end)) if totals.windows else None,
        windows=totals.windows,
        covered_seconds=totals.seconds,
        samples_got=totals.samples_got,
        samples_expected=totals.samples_expected,
        coverage=(
            totals.samples_got / totals.samples_expected if totals.samples_expected else None
        ),
    )


# -- local-time breakdowns and comparisons -------------------------------------------------------


def _offset(zone: zoneinfo.ZoneInfo, second: int) -> int:
    offset = datetime.fromtimestamp(second, zone).utcoffset()
    return 0 if offset is None else offset // _SECOND


def _utc_offsets(seconds: npt.NDArray[np.int64], zone: zoneinfo.ZoneInfo) -> npt.NDArray[np.int64]:
    """The UTC offset of ``zone`` (s) at each epoch second, asking the zone twice per UTC day."""
    if not seconds.size:
        return np.zeros(0, dtype=np.int64)
    days = seconds // 86_400
    unique, inverse = np.unique(days, return_inverse=True)
    first = np.array([_offset(zone, d * 86_400) for d in unique.tolist()], dtype=np.int64)
    last = np.array([_offset(zone, d * 86_400 + 86_399) for d in unique.tolist()], dtype=np.int64)
    offsets = first[inverse.reshape(-1)]
    # Time zones change offset at most once a day: only those days need every row.
    changing = unique[first != last]
    if changing.size:
        for i in np.flatnonzero(np.isin(days, changing)).tolist():
            offsets[i] = _offset(zone, int(seconds[i]))
    return offsets


def _label(by: BreakdownBy, key: int, first_date: date) -> tuple[int | date, str]:
    if by == "hour":
        return key, f"{key:02d}:00"
    if by == "weekday":
        return key, _WEEKDAYS[key]
    day = first_date + timedelta(days=key)
    return day, day.isoformat()


def breakdown(
    conn: Connection,
    meter_id: str,
    start: datetime,
    end: datetime,
    *,
    by: BreakdownBy,
    tz: str,
) -> Breakdown:
    """The meter's quarter hours in ``[start, end)`` grouped by local hour, weekday or date."""
    start, end = _check_range(start, end)
    _choice(by, BreakdownBy, "by")
    zone = _zone(tz)
    lo = _floor(start, QUARTER)
    c = _quarters.c
    rows = conn.execute(
        select(c.bucket_start, c.import_kwh, c.export_kwh, c.power_avg_kw, c.seconds, c.windows)
        .where(c.meter_id == meter_id, c.bucket_start >= lo, c.bucket_start < end)
        .order_by(c.bucket_start)
    ).all()
    starts, *values = zip(*rows, strict=True) if rows else [()] * 6
    utc = np.fromiter(((t - EPOCH) // _SECOND for t in starts), dtype=np.int64, count=len(rows))
    local = utc + _utc_offsets(utc, zone)
    local_day = local // 86_400
    first_date = lo.astimezone(zone).date()
    last_date = (end - timedelta(microseconds=1)).astimezone(zone).date()
    first_day = (first_date - EPOCH.date()).days
    if by == "hour":
        keys, size = (local % 86_400) // 3600, 24
    elif by == "weekday":
        keys, size = (local_day + 3) % 7, 7  # 1970-01-01 was a Thursday
    else:
        keys, size = local_day - first_day, (last_date - first_date).days + 1
    inside = (keys >= 0) & (keys < size)
    keys, local_day = keys[inside], local_day[inside]
    imported, exported, power, seconds, windows = (
        np.asarray(column, dtype=np.float64)[inside] for column in values
    )
    sums = {
        name: np.bincount(keys, weights=weights, minlength=size)
        for name, weights in (
            ("import", imported),
            ("export", exported),
            ("power_seconds", power * seconds),
            ("seconds", seconds),
            ("windows", windows),
        )
    }
    pairs = np.unique(np.column_stack((keys, local_day)), axis=0)
    days = np.bincount(pairs[:, 0], minlength=size) if pairs.size else np.zeros(size, np.int64)
    buckets = []
    for key in range(size):
        value, label = _label(by, key, first_date)
        covered = float(sums["seconds"][key])
        buckets.append(
            BreakdownBucket(
                key=value,
                label=label,
                import_kwh=float(sums["import"][key]),
                export_kwh=float(sums["export"][key]),
                power_avg_kw=float(sums["power_seconds"][key]) / covered if covered else None,
                days=int(days[key]),
                windows=round(float(sums["windows"][key])),
            )
        )
    return Breakdown(meter_id=meter_id, by=by, timezone=tz, start=start, end=end, buckets=buckets)


def _local_midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _period_starts(period: Period, now: datetime, zone: zoneinfo.ZoneInfo) -> tuple[date, date]:
    today = now.astimezone(zone).date()
    if period == "day":
        return today, today - DAY
    if period == "week":
        monday = today - timedelta(days=today.weekday())
        return monday, monday - timedelta(days=7)
    first = today.replace(day=1)
    return first, (first - DAY).replace(day=1)


def _period_totals(conn: Connection, meter_id: str, start: datetime, end: datetime) -> PeriodTotals:
    totals = _totals(conn, meter_id, start, end)
    return PeriodTotals(
        start=start,
        end=end,
        import_kwh=totals.import_kwh,
        export_kwh=totals.export_kwh,
        power_avg_kw=totals.power_avg_kw,
        windows=totals.windows,
    )


def compare(conn: Connection, meter_id: str, period: Period, now: datetime, tz: str) -> Comparison:
    """The current local day, week or month up to ``now`` against the previous one."""
    now = _aware(now, "now")
    _choice(period, Period, "period")
    zone = _zone(tz)
    current_day, previous_day = _period_starts(period, now, zone)
    current_start = _local_midnight(current_day, zone)
    previous_start = _local_midnight(previous_day, zone)
    previous_end = min(previous_start + (now - current_start), current_start)
    current = _period_totals(conn, meter_id, current_start, now)
    previous = _period_totals(conn, meter_id, previous_start, previous_end)
    return Comparison(
        meter_id=meter_id,
        period=period,
        timezone=tz,
        now=now,
        current=current,
        previous=previous,
        previous_full=_period_totals(conn, meter_id, previous_start, current_start),
        import_change_percent=_percent(current.import_kwh, previous.import_kwh),
        power_avg_change_percent=_percent(current.power_avg_kw, previous.power_avg_kw),
    )


# -- operators -----------------------------------------------------------------------------------


def _minute_bucket(conn: Connection, origin: datetime, minutes: int) -> ColumnElement[int]:
    """Index of the ``minutes``-wide bucket after ``origin`` of each ``regional_load`` row."""
    if conn.dialect.name == "sqlite":
        micros = type_coerce(_load.c.minute, BigInteger())
        return (micros - to_micros(origin)) // (minutes * 60_000_000)
    since = extract("epoch", _load.c.minute - literal(origin, UtcDateTime()))
    return cast(func.floor(since / (minutes * 60)), BigInteger)


def region_stats(
    conn: Connection,
    region: str,
    start: datetime,
    end: datetime,
    *,
    max_points: int = MAX_POINTS,
) -> RegionStats | None:
    """The region's load over ``[start, end)`` in at most ``max_points`` points; None if unknown."""
    start, end = _check_range(start, end)
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    capacity = conn.execute(
        select(_regions.c.capacity_kw).where(_regions.c.name == region)
    ).scalar_one_or_none()
    if capacity is None:
        return None
    origin = _floor(start, MINUTE)
    width = -(-_count("1m", start, end) // max_points)
    ld = _load.c
    in_range = and_(ld.region == region, ld.minute >= origin, ld.minute < end)
    rows = (
        select(
            _minute_bucket(conn, origin, width).label("idx"),
            ld.total_kw,
            ld.meters_reporting,
            ld.load_factor,
        )
        .where(in_range)
        .subquery("minutes")
    )
    points = [
        RegionLoadPoint(
            start=origin + int(idx) * width * MINUTE,
            total_kw=float(total),
            peak_kw=float(peak),
            meters_reporting=float(meters),
            load_factor=float(factor),
            minutes=int(count),
        )
        for idx, total, peak, meters, factor, count in conn.execute(
            select(
                rows.c.idx,
                func.avg(rows.c.total_kw),
                func.max(rows.c.total_kw),
                func.avg(rows.c.meters_reporting),
                func.avg(rows.c.load_factor),
                func.count(),
            )
            .group_by(rows.c.idx)
            .order_by(rows.c.idx)
        )
    ]
    peak = conn.execute(
        select(ld.total_kw, ld.minute)
        .where(in_range)
        .order_by(ld.total_kw.desc(), ld.minute)
        .limit(1)
    ).first()
    minutes = sum(p.minutes for p in points)
    return RegionStats(
        region=region,
        start=start,
        end=end,
        capacity_kw=capacity,
        bucket_minutes=width,
        points=points,
        peak_kw=None if peak is None else peak[0],
        peak_at=None if peak is None else peak[1],
        load_factor_avg=(
            sum(p.load_factor * p.minutes for p in points) / minutes if minutes else None
        ),
        energy_kwh=sum(p.total_kw * p.minutes for p in points) / 60.0,
        minutes=minutes,
    )


def top_consumers(
    conn: Connection,
    start: datetime,
    end: datetime,
    *,
    region: str | None = None,
    limit: int = 10,
) -> list[Consumer]:
    """Meters (of ``region``, or all) ranked by import energy over the range's quarter hours."""
    start, end = _check_range(start, end)
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit must be between 1 and 1000, got {limit}")
    meters = select(_meters.c.meter_id)
    if region is not None:
        meters = meters.where(_meters.c.region == region)
    # Probing the primary key meter by meter beats scanning the rollups for a time range.
    p = _parts(meters, _plan(_floor(start, QUARTER), _ceil(end, QUARTER))).c
    m = _meters.c
    imported = func.sum(p.import_kwh)
    rows = conn.execute(
        select(
            p.meter_id,
            m.region,
            m.customer_id,
            imported,
            func.sum(p.export_kwh),
            func.sum(p.power_seconds),
            func.sum(p.seconds),
        )
        .join(_meters, m.meter_id == p.meter_id)
        .group_by(p.meter_id, m.region, m.customer_id)
        .order_by(imported.desc(), p.meter_id)
        .limit(limit)
    )
    return [
        Consumer(
            rank=rank,
            meter_id=meter_id,
            region=meter_region_,
            customer_id=customer_id,
            import_kwh=float(imp),
            export_kwh=float(exp),
            power_avg_kw=float(power_seconds) / float(seconds) if seconds else None,
        )
        for rank, (meter_id, meter_region_, customer_id, imp, exp, power_seconds, seconds) in (
            enumerate(rows, start=1)
        )
    ]


def meter_status(
    conn: Connection,
    now: datetime,
    *,
    region: str | None = None,
    meter_ids: Sequence[str] | None = None,
) -> list[MeterStatusRow]:
    """Each meter (of ``region``, among ``meter_ids``): latest window end and whether online."""
    now = _aware(now, "now")
    m, g, w = _meters.c, _gateways.c, _windows.c
    x = _windows.alias("x")
    newest = (
        select(x.c.window_start)
        .where(x.c.meter_id == m.meter_id)
        .order_by(x.c.window_start.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(
            m.meter_id,
            m.region,
            m.gateway_id,
            m.status,
            g.online,
            g.window_seconds,
            w.window_start,
            w.window_seconds,
        )
        .select_from(
            _meters.join(_gateways, g.gateway_id == m.gateway_id).outerjoin(
                _windows, and_(w.meter_id == m.meter_id, w.window_start == newest)
            )
        )
        .order_by(m.meter_id)
    )
    if region is not None:
        query = query.where(m.region == region)
    if meter_ids is not None:
        query = query.where(m.meter_id.in_(meter_ids))
    result = []
    for meter_id, region_, gateway_id, status, gw_online, gw_seconds, last, seconds in conn.execute(
        query
    ):
        end = None if last is None else last + timedelta(seconds=seconds)
        length = timedelta(seconds=gw_seconds or seconds or 60)
        recent = end is not None and now - end <= OFFLINE_AFTER_WINDOWS * length
        result.append(
            MeterStatusRow(
                meter_id=meter_id,
                region=region_,
                gateway_id=gateway_id,
                status=status,
                gateway_online=gw_online,
                last_window_end=end,
                online=bool(gw_online and recent),
            )
        )
    return result


def regions_summary(conn: Connection, now: datetime) -> list[RegionSummary]:
    """Every region side by side: capacity, meters reporting, current load, today's energy."""
    now = _aware(now, "now")
    since = now - REPORTING_WINDOW
    r, m, ld, w, d = _regions.c, _meters.c, _load.c, _windows.c, _days.c
    x = _load.alias("x")
    latest = (
        select(x.c.minute)
        .where(x.c.region == r.name, x.c.minute >= since, x.c.minute <= now)
        .order_by(x.c.minute.desc())
        .limit(1)
        .scalar_subquery()
    )
    regions = conn.execute(
        select(
            r.name, r.timezone, r.currency, r.capacity_kw, ld.minute, ld.total_kw, ld.load_factor
        )
        .select_from(_regions.outerjoin(_load, and_(ld.region == r.name, ld.minute == latest)))
        .order_by(r.name)
    ).all()
    reporting = select(w.meter_id).where(w.meter_id == m.meter_id, w.window_start >= since).exists()
    counts = {
        name: (int(total), int(recent))
        for name, total, recent in conn.execute(
            select(m.region, func.count(), func.count(case((reporting, 1)))).group_by(m.region)
        )
    }
    today = conn.execute(
        select(m.region, func.sum(d.import_kwh), func.sum(d.export_kwh))
        .select_from(
            _meters.join(_days, and_(d.meter_id == m.meter_id, d.bucket_start == _floor(now, DAY)))
        )
        .group_by(m.region)
    )
    energy = {name: (float(imp), float(exp)) for name, imp, exp in today}
    return [
        RegionSummary(
            region=name,
            timezone=tz,
            currency=currency,
            capacity_kw=capacity,
            meters_total=counts.get(name, (0, 0))[0],
            meters_reporting=counts.get(name, (0, 0))[1],
            load_kw=load,
            load_factor=factor,
            load_minute=minute,
            today_import_kwh=energy.get(name, (0.0, 0.0))[0],
            today_export_kwh=energy.get(name, (0.0, 0.0))[1],
        )
        for name, tz, currency, capacity, minute, load, factor in regions
    ]

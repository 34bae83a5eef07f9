"""The PostgreSQL store: binary COPY into a temporary table, then one statement does the rest.

The hot path (:meth:`PostgresStore._store_windows`) builds COPY rows straight
from the decoded windows (no ORM objects), streams them with binary ``COPY``
into ``segs_stage`` (``ON COMMIT DELETE ROWS``), then runs ONE statement whose
data-modifying CTEs

- insert the staged rows into ``meter_windows`` with ``ON CONFLICT DO
  NOTHING RETURNING`` — the returned rows are exactly the new windows;
- add those to the quarter-hour and daily rollups and to the regional load
  per minute (``INSERT ... ON CONFLICT DO UPDATE``, keys in sorted order so
  concurrent workers lock rows in the same order);
- compare them with each meter's latest window before the insert (the CTEs
  share one snapshot, so reads of ``meter_windows`` see the table as it was)
  and return only the exceptions: gaps, counter breaks, late windows.

The server does the set work in C while the hub's event loop decodes the next
messages; Python touches each window once, to build its COPY row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Final

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from segs.hub.store.base import (
    Break,
    LateWindow,
    Neighbours,
    Store,
    Tail,
    WindowsOutcome,
    rollup_upsert,
)
from segs.protocol import Window

__all__ = ["PostgresStore"]

_TRANSIENT_CLASSES: Final = ("08", "40", "53", "57", "58")
_TRANSIENT_STATES: Final = frozenset({"55P03", "55006"})

_STAGE_COLUMNS: Final = (
    "meter_id",
    "window_start",
    "window_seconds",
    "import_kwh",
    "export_kwh",
    "import_delta_kwh",
    "export_delta_kwh",
    "power_min_kw",
    "power_avg_kw",
    "power_max_kw",
    "voltage_avg_v",
    "current_avg_a",
    "power_factor_avg",
    "frequency_avg_hz",
    "samples_got",
    "samples_expected",
    "quality",
    "region",
)
_STAGE_TYPES: Final = (
    ["text", "timestamptz", "int4"] + ["float8"] * 11 + ["int4", "int4", "text", "text"]
)
_window_fields = attrgetter(*_STAGE_COLUMNS[:16])
# pydantic keeps a model's field values in its __dict__, in field order: reading them
# all at once is several times faster than sixteen attribute lookups. Checked here,
# so a pydantic or protocol change falls back to the lookups instead of misfiling.
_FAST_ROWS: Final = tuple(Window.model_fields) == (*_STAGE_COLUMNS[:16], "quality")


def _row(window: Window, region: str) -> list[Any]:
    """The COPY row of a window: its fields, quality flags joined by commas, the region."""
    if _FAST_ROWS and len(window.__dict__) == 17:
        values = list(window.__dict__.values())
    else:
        values = [*_window_fields(window), window.quality]
    quality = values[16]
    values[16] = ",".join(quality) if quality else ""
    values.append(region)
    return values


_COLUMNS: Final = ", ".join(_STAGE_COLUMNS)

_CREATE_STAGE: Final = """
CREATE TEMPORARY TABLE IF NOT EXISTS segs_stage (
    meter_id text COLLATE "C" NOT NULL,
    window_start timestamptz NOT NULL,
    window_seconds int4 NOT NULL,
    import_kwh float8 NOT NULL,
    export_kwh float8 NOT NULL,
    import_delta_kwh float8 NOT NULL,
    export_delta_kwh float8 NOT NULL,
    power_min_kw float8 NOT NULL,
    power_avg_kw float8 NOT NULL,
    power_max_kw float8 NOT NULL,
    voltage_avg_v float8,
    current_avg_a float8,
    power_factor_avg float8,
    frequency_avg_hz float8,
    samples_got int4 NOT NULL,
    samples_expected int4 NOT NULL,
    quality text NOT NULL,
    region text COLLATE "C" NOT NULL
) ON COMMIT DELETE ROWS
"""

_CREATE_STAGE_KNOWN: Final = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS segs_stage_known (LIKE segs_stage) ON COMMIT DELETE ROWS"
)

_COPY: Final = f"COPY segs_stage ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_COPY_KNOWN: Final = f"COPY segs_stage_known ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"

_EPOCH: Final = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

_PG_UPSERT: Final = rollup_upsert(least="least", greatest="greatest")


def _rollup(table: str, width: str) -> str:
    """The CTE body adding the new windows to one rollup table (buckets of ``width``)."""
    return f"""
    INSERT INTO {table} AS r (
        meter_id, bucket_start, region, windows, seconds, samples_got, samples_expected,
        import_kwh, export_kwh, power_min_kw, power_avg_kw, power_max_kw,
        first_window_start, first_import_kwh, first_export_kwh,
        last_window_start, last_import_kwh, last_export_kwh)
    SELECT meter_id, b, min(region), count(*), sum(window_seconds), sum(samples_got),
        sum(samples_expected), sum(import_delta_kwh), sum(export_delta_kwh),
        min(power_min_kw), sum(power_avg_kw * window_seconds) / sum(window_seconds),
        max(power_max_kw),
        min(window_start), (min(f))[2], (min(f))[3],
        max(window_start), (max(l))[2], (max(l))[3]
    FROM (
        -- Arrays compare element by element: min/max by time carry the counters along,
        -- without a sort per group.
        SELECT *, date_bin('{width}', window_start, {_EPOCH}) AS b,
            ARRAY[date_part('epoch', window_start), import_kwh - import_delta_kwh,
                  export_kwh - export_delta_kwh] AS f,
            ARRAY[date_part('epoch', window_start), import_kwh, export_kwh] AS l
        FROM ins) AS x
    GROUP BY meter_id, b
{_PG_UPSERT}    """  # noqa: S608 - built from module constants only


_RETURNED: Final = (
    "meter_id, window_start, window_seconds, import_kwh, export_kwh, import_delta_kwh, "
    "export_delta_kwh, power_min_kw, power_avg_kw, power_max_kw, samples_got, "
    "samples_expected, region"
)

# One round trip: insert, rollups, regional load, and the exceptions for Python.
# Rollup rows need no lock order: a meter's rows are only written under its
# gateway's row lock. Regional rows are shared by gateways: sorted keys, so two
# workers lock them in the same order.
# Known windows (after their meter's cached tail) are only inserted and rolled up;
# unknown ones are also compared with their meter's latest window.
# `seen` tells whether the meter already had a window in that minute before this
# insert (only possible for windows shorter than, or not aligned to, a minute).
_INGEST: Final = f"""
WITH ins_k AS (
    INSERT INTO meter_windows ({_COLUMNS}, counter_break)
    SELECT {_COLUMNS}, false FROM segs_stage_known
    ON CONFLICT (meter_id, window_start) DO NOTHING
    RETURNING {_RETURNED}
),
ins_u AS (
    INSERT INTO meter_windows ({_COLUMNS}, counter_break)
    SELECT {_COLUMNS}, false FROM segs_stage
    ON CONFLICT (meter_id, window_start) DO NOTHING
    RETURNING {_RETURNED}
),
ins AS (SELECT * FROM ins_k UNION ALL SELECT * FROM ins_u),
r15 AS ({_rollup("meter_rollups_15m", "15 minutes")}),
rday AS ({_rollup("meter_rollups_daily", "1 day")}),
parts AS (
    -- Minute windows (the default) fall in one minute each: aggregated here, by hash,
    -- so the general case below does not drag its estimates over them.
    SELECT region, window_start AS minute, sum(power_avg_kw) AS kw,
        count(*)::int8 AS meters, count(*)::int8 AS windows
    FROM ins WHERE window_seconds = 60
    GROUP BY region, window_start
    UNION ALL
    SELECT region, minute, sum(kw), count(DISTINCT meter_id) FILTER (WHERE NOT seen), count(*)
    FROM (
        SELECT i.region, i.meter_id, m.minute,
            i.power_avg_kw * extract(epoch FROM
                least(i.window_start + i.window_seconds * interval '1 second',
                      m.minute + interval '1 minute')
                - greatest(i.window_start, m.minute)) / 60.0 AS kw,
            CASE WHEN i.window_seconds %% 60 = 0
                      AND i.window_start = date_bin('1 minute', i.window_start, {_EPOCH})
                 THEN false
                 ELSE EXISTS (
                    SELECT 1 FROM meter_windows w
                    WHERE w.meter_id = i.meter_id
                      AND w.window_start < m.minute + interval '1 minute'
                      AND w.window_start > m.minute - interval '1 hour'
                      AND w.window_start + w.window_seconds * interval '1 second' > m.minute)
            END AS seen
        FROM ins i
        CROSS JOIN LATERAL generate_series(
            date_bin('1 minute', i.window_start, {_EPOCH}),
            i.window_start + (i.window_seconds - 1) * interval '1 second',
            interval '1 minute') AS m(minute)
        WHERE i.window_seconds <> 60
    ) AS spread
    GROUP BY region, minute
),
rl AS (
    INSERT INTO regional_load AS l (
        region, minute, total_kw, meters_reporting, windows, capacity_kw, load_factor)
    SELECT p.region, p.minute, sum(p.kw), sum(p.meters), sum(p.windows), g.capacity_kw,
        sum(p.kw) / g.capacity_kw
    FROM parts p JOIN regions g ON g.name = p.region
    GROUP BY p.region, p.minute, g.capacity_kw
    ORDER BY p.region, p.minute
    ON CONFLICT (region, minute) DO UPDATE SET
        total_kw = l.total_kw + excluded.total_kw,
        meters_reporting = l.meters_reporting + excluded.meters_reporting,
        windows = l.windows + excluded.windows,
        load_factor = (l.total_kw + excluded.total_kw) / l.capacity_kw
),
tails AS (
    SELECT t.*
    FROM (SELECT DISTINCT meter_id FROM ins_u) AS d
    CROSS JOIN LATERAL (
        SELECT w.meter_id, w.window_start, w.window_seconds, w.import_kwh, w.export_kwh
        FROM meter_windows w
        WHERE w.meter_id = d.meter_id
        ORDER BY w.window_start DESC
        LIMIT 1) AS t
),
marked AS (
    SELECT i.meter_id, i.window_start, i.window_seconds, i.import_kwh, i.export_kwh,
        i.import_delta_kwh, i.export_delta_kwh,
        coalesce(i.window_start < t.window_start + t.window_seconds * interval '1 second',
                 false) AS late
    FROM ins_u i LEFT JOIN tails t USING (meter_id)
),
chain AS (
    SELECT meter_id, window_start, window_seconds, import_kwh, export_kwh,
        import_delta_kwh, export_delta_kwh, true AS is_new
    FROM marked WHERE NOT late
    UNION ALL
    SELECT meter_id, window_start, window_seconds, import_kwh, export_kwh, 0.0, 0.0, false
    FROM tails
),
lagged AS (
    SELECT c.*,
        lag(window_start + window_seconds * interval '1 second') OVER w AS prev_end,
        lag(import_kwh) OVER w AS prev_import,
        lag(export_kwh) OVER w AS prev_export
    FROM chain c
    WINDOW w AS (PARTITION BY meter_id ORDER BY window_start)
),
latest AS (
    SELECT DISTINCT ON (meter_id) meter_id, window_start, window_seconds, import_kwh, export_kwh
    FROM chain ORDER BY meter_id, window_start DESC
)
SELECT 'gap', meter_id, window_start, window_seconds, prev_end,
    NULL::float8, NULL::float8, NULL::float8, NULL::float8
FROM lagged WHERE is_new AND prev_end < window_start
UNION ALL
SELECT 'break', meter_id, window_start, window_seconds, prev_end,
    prev_import, import_kwh - import_delta_kwh, prev_export, export_kwh - export_delta_kwh
FROM lagged
WHERE is_new AND prev_end = window_start AND (
    abs(import_kwh - import_delta_kwh - prev_import) > %(tol)s + %(rel)s * abs(prev_import)
    OR abs(export_kwh - export_delta_kwh - prev_export) > %(tol)s + %(rel)s * abs(prev_export))
UNION ALL
SELECT 'late', meter_id, window_start, window_seconds, NULL,
    import_kwh, export_kwh, import_delta_kwh, export_delta_kwh
FROM marked WHERE late
UNION ALL
SELECT 'tail', meter_id, window_start, window_seconds, NULL, import_kwh, export_kwh, NULL, NULL
FROM latest
UNION ALL
SELECT 'stored', NULL, NULL, (SELECT count(*) FROM ins_u)::int4, NULL,
    (SELECT count(*) FROM ins_k)::float8, NULL, NULL, NULL
"""  # noqa: S608 - built from module constants only

_NEIGHBOURS: Final = """
SELECT k.m, k.s,
    p.window_start, p.window_seconds, p.import_kwh, p.export_kwh,
    p.import_delta_kwh, p.export_delta_kwh,
    n.window_start, n.window_seconds, n.import_kwh, n.export_kwh,
    n.import_delta_kwh, n.export_delta_kwh
FROM unnest(%(meters)s::text[], %(starts)s::timestamptz[]) AS k(m, s)
LEFT JOIN LATERAL (
    SELECT * FROM meter_windows w WHERE w.meter_id = k.m AND w.window_start < k.s
    ORDER BY w.window_start DESC LIMIT 1) AS p ON true
LEFT JOIN LATERAL (
    SELECT * FROM meter_windows w WHERE w.meter_id = k.m AND w.window_start > k.s
    ORDER BY w.window_start LIMIT 1) AS n ON true
"""

_OWNERS: Final = "SELECT meter_id, gateway_id, region FROM meters WHERE meter_id = ANY(%s::text[])"

_RETENTION: Final = """
DELETE FROM meter_windows WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM meter_windows WHERE window_start < %s LIMIT %s))
"""


def _driver(connection: Connection) -> psycopg.Connection[Any]:
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError("the PostgreSQL store needs the psycopg 3 driver")
    return driver


class PostgresStore(Store):
    """:class:`~segs.hub.store.base.Store` on PostgreSQL 14+ through psycopg 3."""

    dialect = "postgresql"

    def _setup(self, connection: Connection) -> None:
        driver = _driver(connection)
        # Times come back in UTC; the session's zone never leaks into the hub.
        driver.execute("SET TIME ZONE 'UTC'")
        # The ingest statement's estimated cost (generate_series is guessed at 1000
        # rows) would trigger JIT compilation: seconds of LLVM for milliseconds of work.
        driver.execute("SET jit = off")
        driver.execute(_CREATE_STAGE)
        driver.execute(_CREATE_STAGE_KNOWN)

    def _is_transient(self, exc: DBAPIError) -> bool:
        orig = exc.orig
        if isinstance(orig, psycopg.OperationalError) and getattr(orig, "sqlstate", None) is None:
            return True
        state = getattr(orig, "sqlstate", None) or ""
        return state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_STATES

    def _store_windows(
        self,
        connection: Connection,
        known: Sequence[tuple[Window, str]],
        unknown: Sequence[tuple[Window, str]],
        tolerance: float,
    ) -> WindowsOutcome:
        driver = _driver(connection)
        with driver.cursor() as cursor:
            for statement, pairs in ((_COPY_KNOWN, known), (_COPY, unknown)):
                if not pairs:
                    continue
                with cursor.copy(statement) as copy:
                    copy.set_types(_STAGE_TYPES)
                    write = copy.write_row
                    for window, region in pairs:
                        write(_row(window, region))
            cursor.execute(_INGEST, {"tol": tolerance, "rel": 1e-9})
            rows = cursor.fetchall()
        outcome = WindowsOutcome()
        for kind, meter_id, start, seconds, prev_end, a, b, c, d in rows:
            if kind == "stored":
                outcome.known_stored = int(a)
                outcome.stored = seconds + outcome.known_stored
            elif kind == "tail":
                outcome.tails[meter_id] = Tail(start, start + timedelta(seconds=seconds), a, b)
            elif kind == "gap":
                outcome.gaps.append((meter_id, prev_end, start))
            elif kind == "break":
                outcome.breaks.append(Break(meter_id, start, a, b, c, d))
            else:
                outcome.late.append(LateWindow(meter_id, start, seconds, a, b, c, d))
        return outcome

    def _select_owners(
        self, connection: Connection, meter_ids: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        with _driver(connection).cursor() as cursor:
            cursor.execute(_OWNERS, (list(meter_ids),))
            return {meter: (gateway, region) for meter, gateway, region in cursor}

    def _neighbours(
        self, connection: Connection, keys: Sequence[tuple[str, datetime]]
    ) -> dict[tuple[str, datetime], Neighbours]:
        found: dict[tuple[str, datetime], Neighbours] = {}
        with _driver(connection).cursor() as cursor:
            cursor.execute(
                _NEIGHBOURS,
                {"meters": [m for m, _ in keys], "starts": [s for _, s in keys]},
            )
            for row in cursor:
                meter_id, start = row[0], row[1]
                found[(meter_id, start)] = Neighbours(
                    _late(meter_id, row[2:8]), _late(meter_id, row[8:14])
                )
        return found

    def _delete_windows_before(self, connection: Connection, cutoff: datetime, limit: int) -> int:
        with _driver(connection).cursor() as cursor:
            cursor.execute(_RETENTION, (cutoff, limit))
            return max(cursor.rowcount, 0)


def _late(meter_id: str, values: Sequence[Any]) -> LateWindow | None:
    start, seconds, imp, exp, imp_d, exp_d = values
    if start is None:
        return None
    return LateWindow(meter_id, start, seconds, imp, exp, imp_d, exp_d)

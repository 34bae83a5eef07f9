"""The SQLite store: the embedded default, with the same behaviour as PostgreSQL.

Times are integer microseconds since the epoch (see
:class:`~segs.hub.db.types.UtcDateTime`). A commit runs under ``BEGIN
IMMEDIATE`` (one writer at a time), so the hot path can stage the windows in a
temporary table with ``INSERT OR IGNORE`` (``executemany``), drop the ones the
database already has, and then insert, roll up and check exactly the new ones
with set statements. ``sqlite3`` releases the GIL while a statement runs, so
that work overlaps the event loop's decoding too.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from segs.hub.db.types import from_micros, to_micros
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

__all__ = ["SqliteStore"]

_US: Final = 1_000_000
_MINUTE: Final = 60 * _US
_TRANSIENT_WORDS: Final = ("locked", "busy", "disk", "full", "i/o", "unable to open")

_COLUMNS: Final = (
    "meter_id, window_start, window_seconds, import_kwh, export_kwh, import_delta_kwh, "
    "export_delta_kwh, power_min_kw, power_avg_kw, power_max_kw, voltage_avg_v, "
    "current_avg_a, power_factor_avg, frequency_avg_hz, samples_got, samples_expected, "
    "quality, region"
)
_meter_id = attrgetter("meter_id")
_after_start = attrgetter(
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
)

_SETUP: Final = (
    """
    CREATE TEMP TABLE IF NOT EXISTS segs_stage (
        meter_id TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        window_seconds INTEGER NOT NULL,
        import_kwh REAL NOT NULL,
        export_kwh REAL NOT NULL,
        import_delta_kwh REAL NOT NULL,
        export_delta_kwh REAL NOT NULL,
        power_min_kw REAL NOT NULL,
        power_avg_kw REAL NOT NULL,
        power_max_kw REAL NOT NULL,
        voltage_avg_v REAL,
        current_avg_a REAL,
        power_factor_avg REAL,
        frequency_avg_hz REAL,
        samples_got INTEGER NOT NULL,
        samples_expected INTEGER NOT NULL,
        quality TEXT NOT NULL,
        region TEXT NOT NULL,
        PRIMARY KEY (meter_id, window_start)
    )
    """,
    """
    CREATE TEMP TABLE IF NOT EXISTS segs_tails (
        meter_id TEXT PRIMARY KEY,
        window_start INTEGER NOT NULL,
        window_seconds INTEGER NOT NULL,
        import_kwh REAL NOT NULL,
        export_kwh REAL NOT NULL
    )
    """,
    "CREATE TEMP TABLE IF NOT EXISTS segs_stage_known AS SELECT * FROM segs_stage WHERE 0",
    (
        "CREATE UNIQUE INDEX IF NOT EXISTS temp.segs_stage_known_key "
        "ON segs_stage_known (meter_id, window_start)"
    ),
    (
        "CREATE TEMP VIEW IF NOT EXISTS segs_new AS "
        "SELECT * FROM segs_stage UNION ALL SELECT * FROM segs_stage_known"
    ),
    "CREATE TEMP TABLE IF NOT EXISTS segs_minutes (n INTEGER PRIMARY KEY)",
    (
        "INSERT OR IGNORE INTO segs_minutes (n) "
        "WITH RECURSIVE k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n < 60) "
        "SELECT n FROM k"
    ),
)

_STAGE: Final = (
    f"INSERT OR IGNORE INTO segs_stage ({_COLUMNS}) "  # noqa: S608 - constants only
    f"VALUES ({', '.join('?' * 18)})"
)
_STAGE_KNOWN: Final = _STAGE.replace("segs_stage", "segs_stage_known")

_DROP_KNOWN: Final = """
DELETE FROM segs_stage WHERE EXISTS (
    SELECT 1 FROM main.meter_windows w
    WHERE w.meter_id = segs_stage.meter_id AND w.window_start = segs_stage.window_start)
"""

_TAILS: Final = """
INSERT INTO segs_tails (meter_id, window_start, window_seconds, import_kwh, export_kwh)
SELECT w.meter_id, w.window_start, w.window_seconds, w.import_kwh, w.export_kwh
FROM (SELECT DISTINCT meter_id FROM segs_stage) AS d
JOIN main.meter_windows w ON w.meter_id = d.meter_id AND w.window_start = (
    SELECT max(x.window_start) FROM main.meter_windows x WHERE x.meter_id = d.meter_id)
"""

# Before the insert: `seen` needs the meter's windows as they were.
_REGIONAL: Final = f"""
INSERT INTO main.regional_load AS l (
    region, minute, total_kw, meters_reporting, windows, capacity_kw, load_factor)
SELECT p.region, p.minute, sum(p.kw),
    count(DISTINCT CASE WHEN p.seen THEN NULL ELSE p.meter_id END),
    count(*), g.capacity_kw, sum(p.kw) / g.capacity_kw
FROM (
    SELECT m.region, m.meter_id, m.minute,
        m.power_avg_kw * (min(m.window_start + m.window_seconds * {_US}, m.minute + {_MINUTE})
                          - max(m.window_start, m.minute)) / {float(_MINUTE)} AS kw,
        CASE WHEN m.window_seconds % 60 = 0 AND m.window_start % {_MINUTE} = 0 THEN 0
             ELSE EXISTS (
                SELECT 1 FROM main.meter_windows w
                WHERE w.meter_id = m.meter_id
                  AND w.window_start < m.minute + {_MINUTE}
                  AND w.window_start > m.minute - {60 * _MINUTE}
                  AND w.window_start + w.window_seconds * {_US} > m.minute)
        END AS seen
    FROM (
        SELECT s.*, s.window_start - s.window_start % {_MINUTE} + k.n * {_MINUTE} AS minute
        FROM segs_new s CROSS JOIN segs_minutes k
        WHERE k.n <= (s.window_start % {_MINUTE} + s.window_seconds * {_US} - 1) / {_MINUTE}
    ) AS m
) AS p
JOIN main.regions g ON g.name = p.region
WHERE true
GROUP BY p.region, p.minute
ON CONFLICT (region, minute) DO UPDATE SET
    total_kw = l.total_kw + excluded.total_kw,
    meters_reporting = l.meters_reporting + excluded.meters_reporting,
    windows = l.windows + excluded.windows,
    load_factor = (l.total_kw + excluded.total_kw) / l.capacity_kw
"""  # noqa: S608 - built from module constants only

_INSERT: Final = f"""
INSERT INTO main.meter_windows ({_COLUMNS}, counter_break)
SELECT {_COLUMNS}, 0 FROM segs_stage
"""  # noqa: S608 - built from module constants only

_SQLITE_UPSERT: Final = rollup_upsert(least="min", greatest="max")


def _rollup(table: str, width_us: int) -> str:
    return f"""
    INSERT INTO main.{table} AS r (
        meter_id, bucket_start, region, windows, seconds, samples_got, samples_expected,
        import_kwh, export_kwh, power_min_kw, power_avg_kw, power_max_kw,
        first_window_start, first_import_kwh, first_export_kwh,
        last_window_start, last_import_kwh, last_export_kwh)
    SELECT meter_id, b, min(region), count(*), sum(window_seconds), sum(samples_got),
        sum(samples_expected), sum(import_delta_kwh), sum(export_delta_kwh),
        min(power_min_kw), sum(power_avg_kw * window_seconds) / sum(window_seconds),
        max(power_max_kw),
        min(window_start), min(fi), min(fe), max(window_start), min(li), min(le)
    FROM (
        SELECT s.*, s.window_start - s.window_start % {width_us} AS b,
            first_value(import_kwh - import_delta_kwh) OVER w AS fi,
            first_value(export_kwh - export_delta_kwh) OVER w AS fe,
            last_value(import_kwh) OVER w AS li,
            last_value(export_kwh) OVER w AS le
        FROM segs_new s
        WINDOW w AS (
            PARTITION BY meter_id, s.window_start - s.window_start % {width_us}
            ORDER BY window_start
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    )
    WHERE true
    GROUP BY meter_id, b
{_SQLITE_UPSERT}    """  # noqa: S608 - built from module constants only


_ROLLUPS: Final = (
    _rollup("meter_rollups_15m", 15 * _MINUTE),
    _rollup("meter_rollups_daily", 1440 * _MINUTE),
)

_EXCEPTIONS: Final = f"""
WITH marked AS (
    SELECT s.meter_id, s.window_start, s.window_seconds, s.import_kwh, s.export_kwh,
        s.import_delta_kwh, s.export_delta_kwh,
        coalesce(s.window_start < t.window_start + t.window_seconds * {_US}, 0) AS late
    FROM segs_stage s LEFT JOIN segs_tails t USING (meter_id)
),
chain AS (
    SELECT meter_id, window_start, window_seconds, import_kwh, export_kwh,
        import_delta_kwh, export_delta_kwh, 1 AS is_new
    FROM marked WHERE NOT late
    UNION ALL
    SELECT meter_id, window_start, window_seconds, import_kwh, export_kwh, 0.0, 0.0, 0
    FROM segs_tails
),
lagged AS (
    SELECT c.*,
        lag(window_start + window_seconds * {_US}) OVER w AS prev_end,
        lag(import_kwh) OVER w AS prev_import,
        lag(export_kwh) OVER w AS prev_export
    FROM chain c
    WINDOW w AS (PARTITION BY meter_id ORDER BY window_start)
)
SELECT 'gap', meter_id, window_start, window_seconds, prev_end, NULL, NULL, NULL, NULL
FROM lagged WHERE is_new AND prev_end < window_start
UNION ALL
SELECT 'break', meter_id, window_start, window_seconds, prev_end,
    prev_import, import_kwh - import_delta_kwh, prev_export, export_kwh - export_delta_kwh
FROM lagged
WHERE is_new AND prev_end = window_start AND (
    abs(import_kwh - import_delta_kwh - prev_import) > :tol + :rel * abs(prev_import)
    OR abs(export_kwh - export_delta_kwh - prev_export) > :tol + :rel * abs(prev_export))
UNION ALL
SELECT 'late', meter_id, window_start, window_seconds, NULL,
    import_kwh, export_kwh, import_delta_kwh, export_delta_kwh
FROM marked WHERE late
"""  # noqa: S608 - built from module constants only

_INSERT_KNOWN: Final = _INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO").replace(
    "FROM segs_stage", "FROM segs_stage_known"
)
_EXCEPTIONS_TAILS: Final = f"""
WITH chain AS (
    SELECT s.meter_id, s.window_start, s.window_seconds, s.import_kwh, s.export_kwh
    FROM segs_stage s LEFT JOIN segs_tails t USING (meter_id)
    WHERE t.meter_id IS NULL OR s.window_start >= t.window_start + t.window_seconds * {_US}
    UNION ALL
    SELECT meter_id, window_start, window_seconds, import_kwh, export_kwh FROM segs_tails
)
SELECT 'tail', meter_id, max(window_start), window_seconds, NULL, import_kwh, export_kwh,
    NULL, NULL
FROM chain GROUP BY meter_id
"""  # noqa: S608 - built from module constants only

_OWNERS: Final = (
    "SELECT meter_id, gateway_id, region FROM main.meters "
    "WHERE meter_id IN (SELECT value FROM json_each(?))"
)
_NEIGHBOUR_COLUMNS: Final = (
    "window_start, window_seconds, import_kwh, export_kwh, import_delta_kwh, export_delta_kwh"
)
_PREVIOUS: Final = (
    f"SELECT {_NEIGHBOUR_COLUMNS} FROM main.meter_windows "  # noqa: S608 - constants only
    "WHERE meter_id = ? AND window_start < ? ORDER BY window_start DESC LIMIT 1"
)
_FOLLOWING: Final = (
    f"SELECT {_NEIGHBOUR_COLUMNS} FROM main.meter_windows "  # noqa: S608 - constants only
    "WHERE meter_id = ? AND window_start > ? ORDER BY window_start LIMIT 1"
)
_RETENTION: Final = (
    "DELETE FROM main.meter_windows WHERE rowid IN ("
    "SELECT rowid FROM main.meter_windows WHERE window_start < ? LIMIT ?)"
)


def _driver(connection: Connection) -> sqlite3.Connection:
    driver = connection.connection.driver_connection
    if not isinstance(driver, sqlite3.Connection):
        raise TypeError("the SQLite store needs the sqlite3 driver")
    return driver


def _row(window: Window, region: str) -> tuple[Any, ...]:
    return (
        _meter_id(window),
        to_micros(window.window_start),
        *_after_start(window),
        ",".join(window.quality),
        region,
    )


class SqliteStore(Store):
    """:class:`~segs.hub.store.base.Store` on an SQLite file (3.35+, WAL mode)."""

    dialect = "sqlite"

    def _setup(self, connection: Connection) -> None:
        driver = _driver(connection)
        for statement in _SETUP:
            driver.execute(statement).close()

    def _is_transient(self, exc: DBAPIError) -> bool:
        orig = exc.orig
        if not isinstance(orig, sqlite3.OperationalError):
            return False
        text = str(orig).lower()
        return any(word in text for word in _TRANSIENT_WORDS)

    def _store_windows(
        self,
        connection: Connection,
        known: Sequence[tuple[Window, str]],
        unknown: Sequence[tuple[Window, str]],
        tolerance: float,
    ) -> WindowsOutcome:
        driver = _driver(connection)
        outcome = WindowsOutcome()
        cursor = driver.cursor()
        try:
            cursor.execute("DELETE FROM segs_stage")
            cursor.execute("DELETE FROM segs_stage_known")
            cursor.executemany(_STAGE_KNOWN, [_row(w, region) for w, region in known])
            cursor.executemany(_STAGE, [_row(w, region) for w, region in unknown])
            cursor.execute(_DROP_KNOWN)
            unknown_new = cursor.execute("SELECT count(*) FROM segs_stage").fetchone()[0]
            if not unknown_new and not known:
                return outcome
            cursor.execute("DELETE FROM segs_tails")
            cursor.execute(_TAILS)
            cursor.execute(_REGIONAL)
            cursor.execute(_INSERT_KNOWN)
            outcome.known_stored = max(cursor.rowcount, 0)
            cursor.execute(_INSERT)
            outcome.stored = outcome.known_stored + unknown_new
            for statement in _ROLLUPS:
                cursor.execute(statement)
            cursor.execute(_EXCEPTIONS, {"tol": tolerance, "rel": 1e-9})
            rows = cursor.fetchall()
            rows += cursor.execute(_EXCEPTIONS_TAILS).fetchall()
        finally:
            cursor.close()
        for kind, meter_id, start, seconds, prev_end, a, b, c, d in rows:
            if kind == "tail":
                begins = from_micros(start)
                ends = from_micros(start + seconds * _US)
                outcome.tails[meter_id] = Tail(begins, ends, a, b)
            elif kind == "gap":
                outcome.gaps.append((meter_id, from_micros(prev_end), from_micros(start)))
            elif kind == "break":
                outcome.breaks.append(Break(meter_id, from_micros(start), a, b, c, d))
            else:
                outcome.late.append(LateWindow(meter_id, from_micros(start), seconds, a, b, c, d))
        return outcome

    def _select_owners(
        self, connection: Connection, meter_ids: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        cursor = _driver(connection).execute(_OWNERS, (json.dumps(list(meter_ids)),))
        try:
            return {meter: (gateway, region) for meter, gateway, region in cursor}
        finally:
            cursor.close()

    def _neighbours(
        self, connection: Connection, keys: Sequence[tuple[str, datetime]]
    ) -> dict[tuple[str, datetime], Neighbours]:
        driver = _driver(connection)
        found: dict[tuple[str, datetime], Neighbours] = {}
        cursor = driver.cursor()
        try:
            for meter_id, start in keys:
                micros = to_micros(start)
                before = cursor.execute(_PREVIOUS, (meter_id, micros)).fetchone()
                after = cursor.execute(_FOLLOWING, (meter_id, micros)).fetchone()
                found[(meter_id, start)] = Neighbours(
                    _late(meter_id, before), _late(meter_id, after)
                )
        finally:
            cursor.close()
        return found

    def _delete_windows_before(self, connection: Connection, cutoff: datetime, limit: int) -> int:
        cursor = _driver(connection).execute(_RETENTION, (to_micros(cutoff), limit))
        try:
            return max(cursor.rowcount, 0)
        finally:
            cursor.close()


def _late(meter_id: str, row: Sequence[Any] | None) -> LateWindow | None:
    if row is None:
        return None
    start, seconds, imp, exp, imp_d, exp_d = row
    return LateWindow(meter_id, from_micros(start), seconds, imp, exp, imp_d, exp_d)

"""Telemetry reads on both backends, checked against the windows each test generated.

Windows go in through the store, as ingest writes them, so the rollups and the
regional load the reads use are the production ones; the expected numbers are
computed here from the generated windows alone.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hubkit import T0, Clock, birth, register, series, store_windows, wavy

from segs.hub import telemetry
from segs.hub.db.engine import make_engine
from segs.hub.store import Store
from segs.protocol import ConnectionState, GatewayState, Window

MINUTE = timedelta(minutes=1)
QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# -- generating and storing windows --------------------------------------------------------------


def end_of(window: Window) -> datetime:
    return window.window_start + timedelta(seconds=window.window_seconds)


@dataclass
class Truth:
    """What the windows starting in a range add up to."""

    import_kwh: float
    export_kwh: float
    power_min_kw: float | None
    power_avg_kw: float | None
    power_max_kw: float | None
    peak_at: datetime | None
    windows: int
    samples_got: int
    samples_expected: int


def truth(windows: Sequence[Window], start: datetime, end: datetime) -> Truth:
    chosen = [w for w in windows if start <= w.window_start < end]
    if not chosen:
        return Truth(0.0, 0.0, None, None, None, None, 0, 0, 0)
    top = max(w.power_max_kw for w in chosen)
    seconds = sum(w.window_seconds for w in chosen)
    return Truth(
        import_kwh=sum(w.import_delta_kwh for w in chosen),
        export_kwh=sum(w.export_delta_kwh for w in chosen),
        power_min_kw=min(w.power_min_kw for w in chosen),
        power_avg_kw=sum(w.power_avg_kw * w.window_seconds for w in chosen) / seconds,
        power_max_kw=top,
        peak_at=min(w.window_start for w in chosen if w.power_max_kw == top),
        windows=len(chosen),
        samples_got=sum(w.samples_got for w in chosen),
        samples_expected=sum(w.samples_expected for w in chosen),
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A reader's engine on the test database, apart from the store's."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


# -- one meter -----------------------------------------------------------------------------------


def test_latest_window_is_the_newest_with_its_quality_flags(
    store: Store, clock: Clock, engine: Engine
) -> None:
    windows = series("MTR-1", T0, 5, partial_every=5)
    store_windows(store, clock, "gw-1", windows[2:])
    store_windows(store, clock, "gw-1", windows[:2])  # late: the newest is still the last one
    with engine.connect() as conn:
        latest = telemetry.latest_window(conn, "MTR-1")
        assert telemetry.latest_window(conn, "MTR-9") is None
    newest = windows[-1]
    assert latest is not None
    assert latest.window_start == T0 + 4 * MINUTE
    assert latest.window_end == T0 + 5 * MINUTE
    assert latest.quality == ["partial"]
    assert (latest.samples_got, latest.samples_expected) == (20, 60)
    assert latest.region == "unassigned"
    assert latest.counter_break is False
    for name in ("import_kwh", "export_kwh", "import_delta_kwh", "power_avg_kw", "voltage_avg_v"):
        assert getattr(latest, name) == pytest.approx(getattr(newest, name)), name


def test_history_points_are_the_windows_and_their_rollups(
    store: Store, clock: Clock, engine: Engine
) -> None:
    windows = series("MTR-1", T0, 3 * 1440, partial_every=7)
    store_windows(store, clock, "gw-1", windows)
    store_windows(store, clock, "gw-1", series("MTR-2", T0, 100, 9.0))
    with engine.connect() as conn:
        minutes = telemetry.history(
            conn, "MTR-1", T0 + 7 * MINUTE + 30 * timedelta(seconds=1), T0 + 3 * HOUR, "1m"
        )
        quarters = telemetry.history(conn, "MTR-1", T0 + 20 * MINUTE, T0 + DAY, "15m")
        days = telemetry.history(conn, "MTR-1", T0, T0 + 3 * DAY, "1d")

    assert minutes.resolution == "1m"
    expected = [w for w in windows if T0 + 7 * MINUTE <= w.window_start < T0 + 3 * HOUR]
    assert [p.start for p in minutes.points] == [w.window_start for w in expected]
    for point, window in zip(minutes.points, expected, strict=True):
        assert point.import_kwh == pytest.approx(window.import_delta_kwh)
        assert point.export_kwh == pytest.approx(window.export_delta_kwh)
        assert (point.power_min_kw, point.power_avg_kw, point.power_max_kw) == pytest.approx(
            (window.power_min_kw, window.power_avg_kw, window.power_max_kw)
        )
        assert (point.samples_got, point.samples_expected) == (
            window.samples_got,
            window.samples_expected,
        )
        assert point.voltage_avg_v == pytest.approx(230.0)

    by_quarter: dict[datetime, list[Window]] = defaultdict(list)
    by_day: dict[date, list[Window]] = defaultdict(list)
    for w in windows:
        by_quarter[w.window_start.replace(minute=w.window_start.minute // 15 * 15)].append(w)
        by_day[w.window_start.date()].append(w)
    starts = [q for q in sorted(by_quarter) if T0 + 15 * MINUTE <= q < T0 + DAY]
    assert [p.start for p in quarters.points] == starts
    for point, start in zip(quarters.points, starts, strict=True):
        want = truth(windows, start, start + QUARTER)
        assert point.import_kwh == pytest.approx(want.import_kwh)
        assert point.export_kwh == pytest.approx(want.export_kwh)
        assert (point.power_min_kw, point.power_avg_kw, point.power_max_kw) == pytest.approx(
            (want.power_min_kw, want.power_avg_kw, want.power_max_kw)
        )
        assert point.samples_got == want.samples_got
        assert point.voltage_avg_v is None

    assert [p.start.date() for p in days.points] == sorted(by_day)
    assert [p.start.time() for p in days.points] == [datetime.min.time()] * 4
    for point, day in zip(days.points, sorted(by_day), strict=True):
        assert point.import_kwh == pytest.approx(sum(w.import_delta_kwh for w in by_day[day]))
        assert point.samples_expected == 60 * len(by_day[day])


def test_history_picks_the_finest_resolution_within_max_points(
    store: Store, clock: Clock, engine: Engine
) -> None:
    store_windows(store, clock, "gw-1", series("MTR-1", T0, 1500))
    with engine.connect() as conn:
        day = telemetry.history(conn, "MTR-1", T0, T0 + DAY)
        week = telemetry.history(conn, "MTR-1", T0, T0 + 7 * DAY)
        month = telemetry.history(conn, "MTR-1", T0 - 29 * DAY, T0 + DAY)
        small = telemetry.history(conn, "MTR-1", T0, T0 + DAY, max_points=96)
        with pytest.raises(ValueError, match="'15m'"):
            telemetry.history(conn, "MTR-1", T0, T0 + 2 * DAY, "1m")
        with pytest.raises(ValueError, match="'1d'"):
            telemetry.history(conn, "MTR-1", T0, T0 + 30 * DAY, "15m")
    assert (day.resolution, len(day.points)) == ("1m", 1440)
    assert (week.resolution, len(week.points)) == ("15m", 100)  # 1500 minutes of data
    assert (month.resolution, len(month.points)) == ("1d", 2)
    assert small.resolution == "15m"
    assert telemetry.choose_resolution(T0, T0 + 25 * HOUR) == "1m"  # exactly 1500 minutes
    assert telemetry.choose_resolution(T0, T0 + 25 * HOUR + MINUTE) == "15m"
    assert telemetry.choose_resolution(T0, T0 + 400 * DAY) == "1d"
    with pytest.raises(ValueError, match="narrow the range"):
        telemetry.choose_resolution(T0, T0 + 30 * DAY, max_points=10)


def test_ranges_times_and_choices_are_validated(engine: Engine) -> None:
    naive = datetime(2026, 3, 2, 10, 0)  # noqa: DTZ001 - the point of the test
    with engine.connect() as conn:
        with pytest.raises(ValueError, match="no time zone"):
            telemetry.history(conn, "MTR-1", naive, T0 + DAY)
        with pytest.raises(ValueError, match="no time zone"):
            telemetry.stats(conn, "MTR-1", T0, naive)
        with pytest.raises(ValueError, match="must be after"):
            telemetry.stats(conn, "MTR-1", T0, T0)
        with pytest.raises(ValueError, match="longer than 400 days"):
            telemetry.region_stats(conn, "Pune-West", T0, T0 + 401 * DAY)
        with pytest.raises(ValueError, match="no time zone"):
            telemetry.compare(conn, "MTR-1", "day", naive, "UTC")
        with pytest.raises(ValueError, match="no time zone"):
            telemetry.meter_status(conn, naive)
        with pytest.raises(ValueError, match="IANA"):
            telemetry.breakdown(conn, "MTR-1", T0, T0 + DAY, by="hour", tz="Mars/Olympus")
        with pytest.raises(ValueError, match="by must be one of"):
            telemetry.breakdown(conn, "MTR-1", T0, T0 + DAY, by="minute", tz="UTC")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="period must be one of"):
            telemetry.compare(conn, "MTR-1", "year", T0, "UTC")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="resolution must be one of"):
            telemetry.history(conn, "MTR-1", T0, T0 + HOUR, "5m")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit"):
            telemetry.top_consumers(conn, T0, T0 + DAY, limit=0)
    # Any aware datetime will do; results are in UTC.
    kolkata = T0.astimezone(ZoneInfo("Asia/Kolkata"))
    assert telemetry.choose_resolution(kolkata, kolkata + HOUR) == "1m"


def test_stats_are_exact_over_short_ragged_and_long_ranges(
    store: Store, clock: Clock, engine: Engine
) -> None:
    spikes = {2040: 40.0, 2500: 40.0, 200: 20.0}  # a tie on day two: the earlier one is the peak
    windows = series("MTR-1", T0, 3 * 1440, lambda i: spikes.get(i, wavy(i)), partial_every=11)
    store_windows(store, clock, "gw-1", windows)
    ranges = {
        "short": (T0 + 7 * MINUTE, T0 + 5 * HOUR + 3 * MINUTE),
        "long ragged": (T0 + 37 * MINUTE, T0 + 2 * DAY + 13 * HOUR + 52 * MINUTE),
        "all": (T0 - HOUR, T0 + 4 * DAY),
        "aligned": (T0 + 14 * HOUR, T0 + 2 * DAY + 14 * HOUR),
    }
    with engine.connect() as conn:
        results = {name: telemetry.stats(conn, "MTR-1", *span) for name, span in ranges.items()}
        empty = telemetry.stats(conn, "MTR-1", T0 - DAY, T0)
    for name, (start, end) in ranges.items():
        got, want = results[name], truth(windows, start, end)
        assert got.import_kwh == pytest.approx(want.import_kwh), name
        assert got.export_kwh == pytest.approx(want.export_kwh), name
        assert got.export_kwh > 0, name
        assert (got.power_min_kw, got.power_avg_kw, got.power_max_kw) == pytest.approx(
            (want.power_min_kw, want.power_avg_kw, want.power_max_kw)
        ), name
        assert got.peak_at == want.peak_at, name
        assert got.windows == want.windows, name
        assert (got.samples_got, got.samples_expected) == (want.samples_got, want.samples_expected)
        assert got.coverage == pytest.approx(want.samples_got / want.samples_expected), name
        assert got.covered_seconds == 60 * want.windows
    assert results["long ragged"].peak_at == T0 + 2040 * MINUTE
    assert results["short"].peak_at == T0 + 200 * MINUTE
    assert (empty.windows, empty.import_kwh, empty.peak_at, empty.coverage) == (0, 0.0, None, None)
    assert empty.power_avg_kw is None


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Asia/Kathmandu", "America/New_York"])
def test_breakdown_groups_quarter_hours_in_local_time(
    store: Store, clock: Clock, engine: Engine, tz: str
) -> None:
    # Quarter-hour windows over ten days; New York moves its clocks on 2026-03-08.
    first = datetime(2026, 3, 1, tzinfo=UTC)
    windows = series(
        "MTR-1", first, 10 * 96, lambda i: 1.0 + (i % 96) / 10 + (i // 96) % 3, seconds=900
    )
    store_windows(store, clock, "gw-1", windows)
    zone = ZoneInfo(tz)
    start = datetime(2026, 3, 2, tzinfo=zone)
    end = datetime(2026, 3, 10, tzinfo=zone)
    with engine.connect() as conn:
        results = {
            by: telemetry.breakdown(conn, "MTR-1", start, end, by=by, tz=tz)
            for by in ("hour", "weekday", "day")
        }

    chosen = [w for w in windows if start <= w.window_start < end]
    keys: dict[str, Callable[[datetime], Any]] = {
        "hour": lambda t: t.hour,
        "weekday": lambda t: t.weekday(),
        "day": lambda t: t.date(),
    }
    for by, key in keys.items():
        groups: dict[Any, list[Window]] = defaultdict(list)
        for w in chosen:
            groups[key(w.window_start.astimezone(zone))].append(w)
        result = results[by]
        assert (result.by, result.timezone) == (by, tz)
        expected_keys = {
            "hour": list(range(24)),
            "weekday": list(range(7)),
            "day": [date(2026, 3, d) for d in range(2, 10)],
        }[by]
        assert [b.key for b in result.buckets] == expected_keys
        for bucket in result.buckets:
            group = groups.get(bucket.key, [])
            assert bucket.import_kwh == pytest.approx(sum(w.import_delta_kwh for w in group))
            assert bucket.windows == len(group), (by, bucket.key)
            days = {w.window_start.astimezone(zone).date() for w in group}
            assert bucket.days == len(days), (by, bucket.key)
            if group:
                assert bucket.power_avg_kw == pytest.approx(
                    sum(w.power_avg_kw for w in group) / len(group)
                )
            else:
                assert bucket.power_avg_kw is None
    hours = results["hour"].buckets
    assert hours[7].label == "07:00"
    assert results["weekday"].buckets[0].label == "Monday"
    assert results["day"].buckets[0].label == "2026-03-02"
    # New York skipped 02:00-03:00 on March 8: that hour saw seven days, the others eight.
    if tz == "America/New_York":
        assert hours[2].days == 7
        assert {b.days for b in hours if b.key != 2} == {8}
    else:
        assert {b.days for b in hours} == {8}


def test_compare_sets_the_period_so_far_against_the_previous_one(
    store: Store, clock: Clock, engine: Engine
) -> None:
    first = datetime(2026, 1, 31, tzinfo=UTC)
    now = datetime(2026, 3, 4, 11, 20, tzinfo=UTC)  # Wednesday 16:50 in Kolkata
    count = int((now - first) / QUARTER) - 1  # windows that have ended by now
    windows = series(
        "MTR-1", first, count, lambda i: 1.0 + (i // 96) % 4 + (i % 96) / 48, seconds=900
    )
    store_windows(store, clock, "gw-1", windows)
    expected = {  # (current start, previous start, previous same-elapsed end), UTC
        "day": (
            datetime(2026, 3, 3, 18, 30, tzinfo=UTC),
            datetime(2026, 3, 2, 18, 30, tzinfo=UTC),
            datetime(2026, 3, 3, 11, 20, tzinfo=UTC),
        ),
        "week": (
            datetime(2026, 3, 1, 18, 30, tzinfo=UTC),
            datetime(2026, 2, 22, 18, 30, tzinfo=UTC),
            datetime(2026, 2, 25, 11, 20, tzinfo=UTC),
        ),
        "month": (
            datetime(2026, 2, 28, 18, 30, tzinfo=UTC),
            datetime(2026, 1, 31, 18, 30, tzinfo=UTC),
            datetime(2026, 2, 4, 11, 20, tzinfo=UTC),
        ),
    }
    with engine.connect() as conn:
        results = {
            period: telemetry.compare(conn, "MTR-1", period, now, "Asia/Kolkata")
            for period in ("day", "week", "month")
        }
    for period, (current_start, previous_start, previous_end) in expected.items():
        result = results[period]
        spans = {
            "current": (result.current, current_start, now),
            "previous": (result.previous, previous_start, previous_end),
            "previous_full": (result.previous_full, previous_start, current_start),
        }
        for name, (totals, start, end) in spans.items():
            want = truth(windows, start, end)
            assert (totals.start, totals.end) == (start, end), (period, name)
            assert totals.import_kwh == pytest.approx(want.import_kwh), (period, name)
            assert totals.power_avg_kw == pytest.approx(want.power_avg_kw), (period, name)
            assert totals.windows == want.windows, (period, name)
        current, previous = (
            truth(windows, current_start, now),
            truth(windows, previous_start, previous_end),
        )
        assert previous.import_kwh > 0
        assert result.import_change_percent == pytest.approx(
            (current.import_kwh - previous.import_kwh) / previous.import_kwh * 100
        )
        assert result.import_change_percent != pytest.approx(0.0)
        assert previous.power_avg_kw is not None
        assert result.power_avg_change_percent == pytest.approx(
            (current.power_avg_kw - previous.power_avg_kw) / previous.power_avg_kw * 100  # type: ignore[operator]
        )


def test_compare_without_a_previous_period_has_no_change_percent(
    store: Store, clock: Clock, engine: Engine
) -> None:
    windows = series("MTR-1", T0, 30)
    store_windows(store, clock, "gw-1", windows)
    with engine.connect() as conn:
        result = telemetry.compare(conn, "MTR-1", "day", T0 + HOUR, "UTC")
        at_midnight = telemetry.compare(conn, "MTR-1", "day", T0.replace(hour=0), "UTC")
    assert result.current.import_kwh == pytest.approx(truth(windows, T0, T0 + HOUR).import_kwh)
    assert result.current.windows == 30
    assert result.previous.import_kwh == 0.0
    assert result.previous.power_avg_kw is None
    assert (result.import_change_percent, result.power_avg_change_percent) == (None, None)
    assert at_midnight.current.start == at_midnight.current.end == T0.replace(hour=0)
    assert at_midnight.current.windows == 0


# -- operators -----------------------------------------------------------------------------------


def test_region_stats_average_the_regional_load_into_buckets(
    store: Store, clock: Clock, engine: Engine
) -> None:
    register(
        store.engine, region="Pune-West", capacity_kw=500.0, gateways={"gw-1": ["MTR-1", "MTR-2"]}
    )
    register(store.engine, region="Delhi-North", capacity_kw=80.0, gateways={"gw-2": ["MTR-3"]})

    def skip(windows: list[Window], *spans: range) -> list[Window]:
        return [w for w in windows if not any((w.window_start - T0) // MINUTE in r for r in spans)]

    # Minutes 201-210 have no window at all: no regional_load row either.
    one = skip(series("MTR-1", T0, 360), range(201, 211))
    two = skip(
        series("MTR-2", T0, 360, lambda i: 4.0 + (i % 17) / 4), range(100, 130), range(195, 215)
    )
    store_windows(store, clock, "gw-1", one + two)
    store_windows(store, clock, "gw-2", series("MTR-3", T0, 360, 50.0))
    load: dict[datetime, float] = defaultdict(float)
    meters: dict[datetime, int] = defaultdict(int)
    for w in one + two:
        load[w.window_start] += w.power_avg_kw
        meters[w.window_start] += 1
    assert len(load) == 350
    start, end = T0 + 30 * timedelta(seconds=1), T0 + 6 * HOUR
    with engine.connect() as conn:
        coarse = telemetry.region_stats(conn, "Pune-West", start, end, max_points=100)
        fine = telemetry.region_stats(conn, "Pune-West", start, end)
        assert telemetry.region_stats(conn, "Nowhere", start, end) is None

    assert coarse is not None
    assert fine is not None
    assert coarse.bucket_minutes == 4  # 360 minutes in at most 100 points
    assert len(coarse.points) == 89  # minutes 204-207 have no data
    for point in coarse.points:
        minutes = [point.start + k * MINUTE for k in range(4) if point.start + k * MINUTE in load]
        assert point.minutes == len(minutes)
        assert point.total_kw == pytest.approx(sum(load[m] for m in minutes) / len(minutes))
        assert point.peak_kw == pytest.approx(max(load[m] for m in minutes))
        assert point.meters_reporting == pytest.approx(
            sum(meters[m] for m in minutes) / len(minutes)
        )
        assert point.load_factor == pytest.approx(point.total_kw / 500.0)
    assert {p.minutes for p in coarse.points} == {1, 4}
    assert fine.bucket_minutes == 1
    assert [p.start for p in fine.points] == sorted(load)
    assert [p.total_kw for p in fine.points] == pytest.approx([load[m] for m in sorted(load)])
    peak = max(load.values())
    for stats in (coarse, fine):
        assert stats.capacity_kw == 500.0
        assert stats.peak_kw == pytest.approx(peak)
        assert stats.peak_at == min(m for m, kw in load.items() if kw == peak)
        assert stats.minutes == 350
        assert stats.energy_kwh == pytest.approx(sum(load.values()) / 60)
        assert stats.load_factor_avg == pytest.approx(sum(load.values()) / 350 / 500.0)


def test_top_consumers_rank_meters_by_import_energy(
    store: Store, clock: Clock, engine: Engine
) -> None:
    register(store.engine, region="Pune-West", gateways={"gw-1": ["MTR-1", "MTR-2", "MTR-3"]})
    register(store.engine, region="Delhi-North", gateways={"gw-2": ["MTR-4"]})

    def ripple(kw: float) -> Callable[[int], float]:
        return lambda i: kw + (i % 7) / 10

    powers = {"MTR-1": 2.0, "MTR-2": 5.0, "MTR-3": -3.0}
    windows = {m: series(m, T0, 3 * 96, ripple(kw), seconds=900) for m, kw in powers.items()}
    windows["MTR-4"] = series("MTR-4", T0, 3 * 96, 9.0, seconds=900)
    store_windows(store, clock, "gw-1", windows["MTR-1"] + windows["MTR-2"] + windows["MTR-3"])
    store_windows(store, clock, "gw-2", windows["MTR-4"])
    start, end = T0 + 20 * MINUTE, T0 + 2 * DAY + 5 * HOUR + 10 * MINUTE
    # The range is rounded out to quarter hours.
    quarters = (T0 + 15 * MINUTE, T0 + 2 * DAY + 5 * HOUR + 15 * MINUTE)
    want = {m: truth(ws, *quarters) for m, ws in windows.items()}
    with engine.connect() as conn:
        everyone = telemetry.top_consumers(conn, start, end)
        pune = telemetry.top_consumers(conn, start, end, region="Pune-West", limit=2)
        nobody = telemetry.top_consumers(conn, start, end, region="Nowhere")

    assert [c.meter_id for c in everyone] == ["MTR-4", "MTR-2", "MTR-1", "MTR-3"]
    assert [c.rank for c in everyone] == [1, 2, 3, 4]
    for consumer in everyone:
        expected = want[consumer.meter_id]
        assert consumer.import_kwh == pytest.approx(expected.import_kwh)
        assert consumer.export_kwh == pytest.approx(expected.export_kwh)
        assert consumer.power_avg_kw == pytest.approx(expected.power_avg_kw)
    assert everyone[-1].import_kwh == 0.0
    assert everyone[0].region == "Delhi-North"
    assert [(c.meter_id, c.region) for c in pune] == [
        ("MTR-2", "Pune-West"),
        ("MTR-1", "Pune-West"),
    ]
    assert nobody == []


def test_meter_status_follows_the_gateway_and_the_latest_window(
    store: Store, clock: Clock, engine: Engine
) -> None:
    register(
        store.engine,
        region="Pune-West",
        gateways={"gw-1": ["MTR-1", "MTR-2", "MTR-4"], "gw-2": ["MTR-3"]},
    )
    register(store.engine, region="Delhi-North", gateways={"gw-3": ["MTR-5"]})
    store.apply_birth(birth("gw-1", "Pune-West", ["MTR-1", "MTR-2", "MTR-4"]))
    store.apply_birth(birth("gw-3", "Delhi-North", ["MTR-5"]))
    store_windows(store, clock, "gw-1", series("MTR-1", T0, 60) + series("MTR-2", T0, 50))
    store_windows(store, clock, "gw-2", series("MTR-3", T0, 60))  # its gateway never came online
    store_windows(store, clock, "gw-3", series("MTR-5", T0, 60))

    def status(now: datetime, **scope: Any) -> dict[str, telemetry.MeterStatusRow]:
        with engine.connect() as conn:
            return {row.meter_id: row for row in telemetry.meter_status(conn, now, **scope)}

    clock.now = T0 + 61 * MINUTE
    rows = status(clock(), region="Pune-West")
    assert sorted(rows) == ["MTR-1", "MTR-2", "MTR-3", "MTR-4"]
    assert {m: r.online for m, r in rows.items()} == {
        "MTR-1": True,
        "MTR-2": False,  # its latest window ended 11 minutes ago
        "MTR-3": False,
        "MTR-4": False,
    }
    assert rows["MTR-1"].last_window_end == T0 + HOUR
    assert rows["MTR-2"].last_window_end == T0 + 50 * MINUTE
    assert rows["MTR-3"].last_window_end == T0 + HOUR
    assert rows["MTR-3"].gateway_online is False
    assert rows["MTR-4"].last_window_end is None
    assert (rows["MTR-1"].gateway_id, rows["MTR-1"].status) == ("gw-1", "active")

    clock.now = T0 + 63 * MINUTE  # three window lengths: still online
    assert status(clock(), meter_ids=["MTR-1"])["MTR-1"].online is True
    clock.advance(1)
    assert status(clock(), meter_ids=["MTR-1"])["MTR-1"].online is False
    clock.now = T0 + 61 * MINUTE
    store.apply_state(GatewayState(gateway_id="gw-1", state=ConnectionState.OFFLINE))
    everyone = status(clock())
    assert sorted(everyone) == ["MTR-1", "MTR-2", "MTR-3", "MTR-4", "MTR-5"]
    assert [m for m, r in everyone.items() if r.online] == ["MTR-5"]
    assert everyone["MTR-5"].region == "Delhi-North"


def test_regions_summary_puts_regions_side_by_side(
    store: Store, clock: Clock, engine: Engine
) -> None:
    register(
        store.engine, region="Pune-West", capacity_kw=500.0, gateways={"gw-1": ["MTR-1", "MTR-2"]}
    )
    register(
        store.engine, region="Delhi-North", capacity_kw=40.0, gateways={"gw-2": ["MTR-3", "MTR-9"]}
    )
    register(store.engine, region="Empty-East", capacity_kw=10.0)
    midnight = T0.replace(hour=0)
    yesterday = series("MTR-1", midnight - 10 * MINUTE, 10, 7.0)
    one, two = series("MTR-1", T0, 60), series("MTR-2", T0, 50, 2.0)
    three = series("MTR-3", T0, 58, 10.0)
    store_windows(store, clock, "gw-1", yesterday)
    store_windows(store, clock, "gw-1", one + two)
    store_windows(store, clock, "gw-2", three)
    now = T0 + HOUR + 20 * timedelta(seconds=1)
    with engine.connect() as conn:
        summary = {r.region: r for r in telemetry.regions_summary(conn, now)}

    assert list(summary) == ["Delhi-North", "Empty-East", "Pune-West"]
    pune, delhi, empty = summary["Pune-West"], summary["Delhi-North"], summary["Empty-East"]
    assert (pune.timezone, pune.currency, pune.capacity_kw) == ("Asia/Kolkata", "INR", 500.0)
    assert (pune.meters_total, pune.meters_reporting) == (2, 1)  # MTR-2 stopped at 10:50
    assert (delhi.meters_total, delhi.meters_reporting) == (2, 1)  # MTR-9 never reported
    assert pune.load_minute == T0 + 59 * MINUTE
    assert pune.load_kw == pytest.approx(one[-1].power_avg_kw)
    assert pune.load_factor == pytest.approx(one[-1].power_avg_kw / 500.0)
    assert delhi.load_minute == T0 + 57 * MINUTE
    assert delhi.load_factor == pytest.approx(10.0 / 40.0)
    assert pune.today_import_kwh == pytest.approx(sum(w.import_delta_kwh for w in one + two))
    assert pune.today_export_kwh == pytest.approx(sum(w.export_delta_kwh for w in one + two))
    assert delhi.today_import_kwh == pytest.approx(58 * 10.0 / 60)
    assert (empty.meters_total, empty.load_kw, empty.today_import_kwh) == (0, None, 0.0)
    later = {r.region: r for r in _summary(engine, now + 10 * MINUTE)}
    assert later["Pune-West"].load_kw is None  # nothing in the last five minutes
    assert later["Pune-West"].meters_reporting == 0


def _summary(engine: Engine, now: datetime) -> list[telemetry.RegionSummary]:
    with engine.connect() as conn:
        return telemetry.regions_summary(conn, now)


def test_meter_region_and_region_timezone_read_the_registry(store: Store, engine: Engine) -> None:
    register(store.engine, region="Pune-West", gateways={"gw-1": ["MTR-1"]})
    with engine.connect() as conn:
        assert telemetry.meter_region(conn, "MTR-1") == "Pune-West"
        assert telemetry.meter_region(conn, "MTR-2") is None
        assert telemetry.region_timezone(conn, "Pune-West") == "Asia/Kolkata"
        assert telemetry.region_timezone(conn, "Nowhere") is None

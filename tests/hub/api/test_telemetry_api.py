"""``/api/v1/telemetry`` over HTTP: the numbers checked against windows the test inserted.

Windows go in through the ingest store, so the rollups and the regional load the
endpoints read are the production ones; every expected number is computed here
from the generated windows alone. Region Pune-West (Asia/Kolkata, 500 kW) has
MTR-1, the customer's meter, reporting every minute for 47 hours with a varying
power (exporting now and then, one spike), and MTR-2, nobody's, drawing 6 kW
for three hours.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apikit import Api, bearer, error_of
from hubkit import Clock, birth, register, series, store_windows

from segs.hub.db import Role
from segs.hub.store import Store
from segs.protocol import Window

MINUTE: Final = timedelta(minutes=1)
QUARTER: Final = timedelta(minutes=15)
HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

REGION: Final = "Pune-West"
ZONE: Final = ZoneInfo("Asia/Kolkata")
CAPACITY_KW: Final = 500.0
START: Final = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COUNT: Final = 47 * 60
"""MTR-1's windows: 2026-03-01 12:00 to 2026-03-03 11:00 UTC."""
SPIKE: Final = 1000
"""The index of MTR-1's one 25 kW window (2026-03-02 04:40 UTC)."""
MTR2_START: Final = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MTR2_KW: Final = 6.0

TM: Final = "/api/v1/telemetry"


def power(i: int) -> float:
    """MTR-1's power in its ``i``-th window, kW: a daily shape, a ripple, exports, a spike."""
    if i == SPIKE:
        return 25.0
    if i % 97 == 13:
        return -1.5
    return round(1.0 + (i % 90) / 30 + (i // 1440) * 0.75 + ((i // 60) % 24) / 12, 3)


@dataclass
class Setup:
    """The API, the customer's headers and id, the windows."""

    api: Api
    customer: dict[str, str]
    customer_id: str
    mtr1: list[Window]
    mtr2: list[Window]


@pytest.fixture
def setup(api: Api, make_store: Callable[..., Store], clock: Clock) -> Setup:
    register(
        api.engine, region=REGION, capacity_kw=CAPACITY_KW, gateways={"gw-1": ["MTR-1", "MTR-2"]}
    )
    store = make_store()
    store.apply_birth(birth("gw-1", REGION, ["MTR-1", "MTR-2"]))
    mtr1 = series("MTR-1", START, COUNT, power)
    mtr2 = series("MTR-2", MTR2_START, 180, MTR2_KW)
    store_windows(store, clock, "gw-1", mtr1)
    store_windows(store, clock, "gw-1", mtr2)
    api.clock.now = datetime(2026, 3, 3, 11, 20, tzinfo=UTC)
    customer_id = api.user("asha@example.com", meter="MTR-1")
    return Setup(
        api=api,
        customer=bearer(api, customer_id),
        customer_id=customer_id,
        mtr1=mtr1,
        mtr2=mtr2,
    )


# -- the test's own arithmetic ---------------------------------------------------------------


def floor(at: datetime, width: timedelta) -> datetime:
    return EPOCH + (at - EPOCH) // width * width


def buckets(
    windows: Sequence[Window], width: timedelta, start: datetime, end: datetime
) -> dict[datetime, list[Window]]:
    """Windows by ``width`` bucket, the buckets starting in ``[floor(start), end)``."""
    groups: dict[datetime, list[Window]] = defaultdict(list)
    for window in windows:
        bucket = floor(window.window_start, width)
        if floor(start, width) <= bucket < end:
            groups[bucket].append(window)
    return dict(sorted(groups.items()))


def within(windows: Sequence[Window], start: datetime, end: datetime) -> list[Window]:
    return [w for w in windows if start <= w.window_start < end]


def mean_power(windows: Sequence[Window]) -> float:
    seconds = sum(w.window_seconds for w in windows)
    return sum(w.power_avg_kw * w.window_seconds for w in windows) / seconds


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def get(setup: Setup, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
    """GET ``path`` as the customer (default); the JSON body of a 200 answer."""
    response = setup.api.client.get(
        f"{TM}/{path}", params=params, headers=setup.customer if headers is None else headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def iso(value: datetime) -> str:
    return value.isoformat()


# -- the customer's meter --------------------------------------------------------------------


def test_my_latest_is_the_newest_window(setup: Setup) -> None:
    body = get(setup, "my/latest")
    newest = setup.mtr1[-1]
    assert body["meter_id"] == "MTR-1"
    assert body["region"] == REGION
    assert (
        at(body["window_start"]) == newest.window_start == datetime(2026, 3, 3, 10, 59, tzinfo=UTC)
    )
    assert at(body["window_end"]) == newest.window_start + MINUTE
    assert body["window_seconds"] == 60
    for name in (
        "import_kwh",
        "export_kwh",
        "import_delta_kwh",
        "export_delta_kwh",
        "power_min_kw",
        "power_avg_kw",
        "power_max_kw",
        "voltage_avg_v",
    ):
        assert body[name] == pytest.approx(getattr(newest, name)), name
    assert (body["samples_got"], body["samples_expected"]) == (60, 60)
    assert body["quality"] == []


HISTORIES: Final = {  # resolution -> (width, from, to); ragged ends on purpose
    "1m": (MINUTE, datetime(2026, 3, 2, 5, 7, 30, tzinfo=UTC), datetime(2026, 3, 2, 8, tzinfo=UTC)),
    "15m": (
        QUARTER,
        datetime(2026, 3, 1, 20, 10, tzinfo=UTC),
        datetime(2026, 3, 2, 19, 50, tzinfo=UTC),
    ),
    "1d": (DAY, datetime(2026, 3, 1, 6, 0, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)),
}


def test_my_history_sums_the_windows_at_each_resolution(setup: Setup) -> None:
    for resolution, (width, start, end) in HISTORIES.items():
        _check_history(setup, resolution, width, start, end)


def _check_history(
    setup: Setup, resolution: str, width: timedelta, start: datetime, end: datetime
) -> None:
    """Points are the buckets starting in ``[floor(from), to)``, each the sum of its windows."""
    body = get(
        setup, "my/history", **{"from": iso(start), "to": iso(end), "resolution": resolution}
    )
    assert (body["meter_id"], body["resolution"]) == ("MTR-1", resolution)
    assert (at(body["start"]), at(body["end"])) == (start, end)
    expected = buckets(setup.mtr1, width, start, end)
    assert [at(p["start"]) for p in body["points"]] == list(expected), resolution
    for point, group in zip(body["points"], expected.values(), strict=True):
        assert point["import_kwh"] == pytest.approx(sum(w.import_delta_kwh for w in group))
        assert point["export_kwh"] == pytest.approx(sum(w.export_delta_kwh for w in group))
        assert point["power_min_kw"] == pytest.approx(min(w.power_min_kw for w in group))
        assert point["power_max_kw"] == pytest.approx(max(w.power_max_kw for w in group))
        assert point["power_avg_kw"] == pytest.approx(mean_power(group))
        assert point["samples_expected"] == 60 * len(group)
    total = sum(w.import_delta_kwh for group in expected.values() for w in group)
    assert sum(p["import_kwh"] for p in body["points"]) == pytest.approx(total)
    assert sum(p["export_kwh"] for p in body["points"]) > 0  # the exports came through
    if resolution == "1d":
        assert [len(group) for group in expected.values()] == [720, 1440, 660]


def test_history_resolution_follows_the_range_and_bad_queries_answer_422(setup: Setup) -> None:
    ranges = {  # chosen resolution -> (from, to, points: the buckets holding windows)
        "1m": ("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", 1440),
        "15m": ("2026-02-26T00:00:00Z", "2026-03-05T00:00:00Z", 47 * 4),
        "1d": ("2026-02-04T00:00:00Z", "2026-03-06T00:00:00Z", 3),
    }
    for resolution, (start, end, points) in ranges.items():
        body = get(setup, "my/history", **{"from": start, "to": end})
        assert (body["resolution"], len(body["points"])) == (resolution, points)
        chosen = within(setup.mtr1, at(start), at(end))
        assert sum(p["import_kwh"] for p in body["points"]) == pytest.approx(
            sum(w.import_delta_kwh for w in chosen)
        )
    # Without a range: the day before the app's clock (2026-03-03 11:20 UTC), minute by minute.
    body = get(setup, "my/history")
    day_before = (setup.api.clock.now - DAY, setup.api.clock.now)
    assert (at(body["start"]), at(body["end"]), body["resolution"]) == (*day_before, "1m")
    assert [at(p["start"]) for p in body["points"]] == [
        w.window_start for w in within(setup.mtr1, *day_before)
    ]

    client, headers = setup.api.client, setup.customer
    two_days = {"from": "2026-03-01T12:00:00Z", "to": "2026-03-03T12:00:00Z"}
    error = error_of(
        client.get(f"{TM}/my/history", params=two_days | {"resolution": "1m"}, headers=headers),
        422,
        "invalid_query",
    )
    assert "'15m'" in error["message"]
    month = {"from": "2026-02-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"}
    error_of(
        client.get(f"{TM}/my/history", params=month | {"resolution": "15m"}, headers=headers),
        422,
        "invalid_query",
    )
    # No offset: refused, not read as UTC (or as the server's local time).
    error = error_of(
        client.get(
            f"{TM}/my/history",
            params={"from": "2026-03-02T00:00:00", "to": "2026-03-02T06:00:00Z"},
            headers=headers,
        ),
        422,
        "invalid_query",
    )
    assert "time zone" in error["message"]
    error_of(
        client.get(
            f"{TM}/my/stats",
            params={"from": "2026-03-02T06:00:00Z", "to": "2026-03-02T06:00:00Z"},
            headers=headers,
        ),
        422,
        "invalid_query",
    )
    error = error_of(
        client.get(f"{TM}/my/history", params={"from": "yesterday"}, headers=headers),
        422,
        "validation_error",
    )
    assert ["query", "from"] in [detail["loc"] for detail in error["details"]]
    error_of(
        client.get(f"{TM}/my/history", params={"resolution": "5m"}, headers=headers),
        422,
        "validation_error",
    )
    # '+' must reach the app encoded (%2B): a raw '+' in a query string is a space.
    kolkata = "from=2026-03-02T00:00:00{plus}05:30&to=2026-03-02T01:00:00{plus}05:30"
    error = error_of(
        client.get(f"{TM}/my/history?{kolkata.format(plus='+')}", headers=headers),
        422,
        "validation_error",
    )
    assert [detail["loc"] for detail in error["details"]] == [["query", "from"], ["query", "to"]]
    raw = client.get(f"{TM}/my/history?{kolkata.format(plus='%2B')}", headers=headers)
    assert raw.status_code == 200, raw.text
    assert at(raw.json()["start"]) == datetime(2026, 3, 1, 18, 30, tzinfo=UTC)
    assert len(raw.json()["points"]) == 60


def test_my_stats_are_exact_over_a_ragged_range(setup: Setup) -> None:
    start, end = datetime(2026, 3, 1, 23, 37, tzinfo=UTC), datetime(2026, 3, 3, 2, 11, tzinfo=UTC)
    body = get(setup, "my/stats", **{"from": iso(start), "to": iso(end)})
    chosen = within(setup.mtr1, start, end)
    top = max(w.power_max_kw for w in chosen)
    assert body["meter_id"] == "MTR-1"
    assert body["windows"] == len(chosen) == 26 * 60 + 34
    assert body["import_kwh"] == pytest.approx(sum(w.import_delta_kwh for w in chosen))
    assert body["export_kwh"] == pytest.approx(sum(w.export_delta_kwh for w in chosen))
    assert body["export_kwh"] > 0
    assert body["power_min_kw"] == pytest.approx(min(w.power_min_kw for w in chosen))
    assert body["power_max_kw"] == pytest.approx(top) == 25.5
    assert body["power_avg_kw"] == pytest.approx(mean_power(chosen))
    assert at(body["peak_at"]) == START + SPIKE * MINUTE
    assert body["covered_seconds"] == 60 * len(chosen)
    assert body["coverage"] == pytest.approx(1.0)
    # MTR-2 draws more in its hours, but it is not the customer's meter.
    body = get(setup, "my/stats", **{"from": iso(MTR2_START), "to": iso(MTR2_START + HOUR)})
    assert body["import_kwh"] == pytest.approx(
        sum(w.import_delta_kwh for w in within(setup.mtr1, MTR2_START, MTR2_START + HOUR))
    )


def test_my_breakdown_groups_by_local_hour_and_day(setup: Setup) -> None:
    # A local (Asia/Kolkata) day, given with its offset.
    body = get(
        setup,
        "my/breakdown",
        **{"from": "2026-03-02T00:00:00+05:30", "to": "2026-03-03T00:00:00+05:30"},
    )
    start = datetime(2026, 3, 2, tzinfo=ZONE)
    assert (body["meter_id"], body["by"], body["timezone"]) == ("MTR-1", "hour", "Asia/Kolkata")
    assert at(body["start"]) == datetime(2026, 3, 1, 18, 30, tzinfo=UTC)
    hours: dict[int, list[Window]] = defaultdict(list)
    for window in within(setup.mtr1, start, start + DAY):
        hours[window.window_start.astimezone(ZONE).hour].append(window)
    assert [b["key"] for b in body["buckets"]] == list(range(24))
    for bucket in body["buckets"]:
        group = hours[bucket["key"]]
        assert bucket["label"] == f"{bucket['key']:02d}:00"
        assert (bucket["windows"], bucket["days"]) == (60, 1)
        assert bucket["import_kwh"] == pytest.approx(sum(w.import_delta_kwh for w in group))
        assert bucket["export_kwh"] == pytest.approx(sum(w.export_delta_kwh for w in group))
        assert bucket["power_avg_kw"] == pytest.approx(mean_power(group))

    body = get(
        setup,
        "my/breakdown",
        by="day",
        **{"from": "2026-03-02T00:00:00+05:30", "to": "2026-03-04T00:00:00+05:30"},
    )
    days: dict[date, list[Window]] = defaultdict(list)
    for window in setup.mtr1:
        days[window.window_start.astimezone(ZONE).date()].append(window)
    assert [b["label"] for b in body["buckets"]] == ["2026-03-02", "2026-03-03"]
    for bucket in body["buckets"]:
        group = days[date.fromisoformat(bucket["label"])]
        assert bucket["windows"] == len(group)
        assert bucket["import_kwh"] == pytest.approx(sum(w.import_delta_kwh for w in group))
    assert body["buckets"][1]["windows"] == (16 * 60 + 30)  # up to 16:30 local


def test_my_compare_uses_the_app_clock(setup: Setup) -> None:
    now = setup.api.clock.now  # 2026-03-03 11:20 UTC, 16:50 in Kolkata
    body = get(setup, "my/compare", period="day")
    spans = {  # the local days start at 18:30 UTC
        "current": (datetime(2026, 3, 2, 18, 30, tzinfo=UTC), now),
        "previous": (
            datetime(2026, 3, 1, 18, 30, tzinfo=UTC),
            datetime(2026, 3, 2, 11, 20, tzinfo=UTC),
        ),
        "previous_full": (
            datetime(2026, 3, 1, 18, 30, tzinfo=UTC),
            datetime(2026, 3, 2, 18, 30, tzinfo=UTC),
        ),
    }
    assert (body["meter_id"], body["period"], body["timezone"]) == ("MTR-1", "day", "Asia/Kolkata")
    assert at(body["now"]) == now
    totals = {}
    for name, (start, end) in spans.items():
        chosen = within(setup.mtr1, start, end)
        totals[name] = sum(w.import_delta_kwh for w in chosen)
        part = body[name]
        assert (at(part["start"]), at(part["end"])) == (start, end), name
        assert part["windows"] == len(chosen), name
        assert part["import_kwh"] == pytest.approx(totals[name]), name
        assert part["power_avg_kw"] == pytest.approx(mean_power(chosen)), name
    assert body["import_change_percent"] == pytest.approx(
        (totals["current"] - totals["previous"]) / totals["previous"] * 100
    )
    assert body["import_change_percent"] > 0  # the second day draws more

    # A day later by the app's clock, today has nothing yet and yesterday is that day.
    setup.api.clock.now = now + DAY
    later = get(setup, "my/compare", bearer(setup.api, setup.customer_id), period="day")
    assert (later["current"]["windows"], later["current"]["import_kwh"]) == (0, 0.0)
    assert later["previous"]["windows"] == body["current"]["windows"] == 16 * 60 + 30
    assert later["previous"]["import_kwh"] == pytest.approx(totals["current"])
    assert later["import_change_percent"] == pytest.approx(-100.0)


# -- operators -------------------------------------------------------------------------------


def test_operator_views_add_up_the_region(setup: Setup) -> None:
    api = setup.api
    operator = bearer(api, api.user("omkar@example.com", role=Role.OPERATOR, region=REGION))
    both = setup.mtr1 + setup.mtr2

    # Region stats, minute by minute where both meters report.
    start, end = MTR2_START, MTR2_START + 3 * HOUR
    body = get(
        setup, f"operator/regions/{REGION}/stats", operator, **{"from": iso(start), "to": iso(end)}
    )
    load: dict[datetime, float] = defaultdict(float)
    for window in both:
        load[window.window_start] += window.power_avg_kw
    minutes = [m for m in sorted(load) if start <= m < end]
    assert (body["region"], body["capacity_kw"], body["bucket_minutes"]) == (REGION, CAPACITY_KW, 1)
    assert [at(p["start"]) for p in body["points"]] == minutes
    assert [p["total_kw"] for p in body["points"]] == pytest.approx([load[m] for m in minutes])
    assert [p["meters_reporting"] for p in body["points"]] == [2.0] * 180
    assert body["minutes"] == 180
    assert body["energy_kwh"] == pytest.approx(sum(load[m] for m in minutes) / 60)
    peak = max(load[m] for m in minutes)
    assert body["peak_kw"] == pytest.approx(peak)
    assert at(body["peak_at"]) == min(m for m in minutes if load[m] == peak)
    assert body["load_factor_avg"] == pytest.approx(
        sum(load[m] for m in minutes) / 180 / CAPACITY_KW
    )

    # Over the whole two days: two-minute points, the spike is the peak.
    start, end = START, START + 2 * DAY
    body = get(
        setup, f"operator/regions/{REGION}/stats", operator, **{"from": iso(start), "to": iso(end)}
    )
    assert body["bucket_minutes"] == 2
    assert body["minutes"] == COUNT
    assert len(body["points"]) == COUNT // 2
    assert body["energy_kwh"] == pytest.approx(sum(load.values()) / 60)
    assert (body["peak_kw"], at(body["peak_at"])) == (pytest.approx(25.0), START + SPIKE * MINUTE)

    # Top consumers: the range is rounded out to quarter hours.
    start, end = datetime(2026, 3, 2, 9, 5, tzinfo=UTC), datetime(2026, 3, 2, 11, 50, tzinfo=UTC)
    quarters = (datetime(2026, 3, 2, 9, 0, tzinfo=UTC), datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    body = get(setup, "operator/top-consumers", operator, **{"from": iso(start), "to": iso(end)})
    expected = {
        "MTR-1": within(setup.mtr1, *quarters),
        "MTR-2": within(setup.mtr2, *quarters),
    }
    imports = {meter: sum(w.import_delta_kwh for w in ws) for meter, ws in expected.items()}
    assert imports["MTR-2"] == pytest.approx(18.0)
    ranked = sorted(imports, key=lambda meter: -imports[meter])
    assert [c["meter_id"] for c in body] == ranked
    assert [c["rank"] for c in body] == [1, 2]
    for consumer in body:
        windows = expected[consumer["meter_id"]]
        assert consumer["region"] == REGION
        assert consumer["import_kwh"] == pytest.approx(imports[consumer["meter_id"]])
        assert consumer["export_kwh"] == pytest.approx(sum(w.export_delta_kwh for w in windows))
        assert consumer["power_avg_kw"] == pytest.approx(mean_power(windows))
    owners = {c["meter_id"]: c["customer_id"] for c in body}
    assert owners == {"MTR-1": setup.customer_id, "MTR-2": None}
    top = get(
        setup, "operator/top-consumers", operator, limit=1, **{"from": iso(start), "to": iso(end)}
    )
    assert [c["meter_id"] for c in top] == ranked[:1]

    # Meter status and the region summary, two minutes after MTR-1's last window.
    setup.api.clock.now = datetime(2026, 3, 3, 11, 2, tzinfo=UTC)
    rows = {row["meter_id"]: row for row in get(setup, "operator/meters/status", operator)}
    assert sorted(rows) == ["MTR-1", "MTR-2"]
    assert at(rows["MTR-1"]["last_window_end"]) == datetime(2026, 3, 3, 11, 0, tzinfo=UTC)
    assert at(rows["MTR-2"]["last_window_end"]) == MTR2_START + 3 * HOUR
    assert {m: (r["gateway_online"], r["online"]) for m, r in rows.items()} == {
        "MTR-1": (True, True),
        "MTR-2": (True, False),
    }
    (summary,) = get(setup, "operator/regions/summary", operator)
    newest = setup.mtr1[-1]
    today = within(both, datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC))
    assert (summary["region"], summary["timezone"], summary["currency"]) == (
        REGION,
        "Asia/Kolkata",
        "INR",
    )
    assert (summary["capacity_kw"], summary["meters_total"], summary["meters_reporting"]) == (
        CAPACITY_KW,
        2,
        1,
    )
    assert at(summary["load_minute"]) == newest.window_start
    assert summary["load_kw"] == pytest.approx(newest.power_avg_kw)
    assert summary["load_factor"] == pytest.approx(newest.power_avg_kw / CAPACITY_KW)
    assert summary["today_import_kwh"] == pytest.approx(sum(w.import_delta_kwh for w in today))
    assert summary["today_export_kwh"] == pytest.approx(sum(w.export_delta_kwh for w in today))

    # Five minutes on, nothing is current: MTR-1 is offline, the region has no load.
    setup.api.clock.now += 4 * MINUTE
    rows = {row["meter_id"]: row for row in get(setup, "operator/meters/status", operator)}
    assert rows["MTR-1"]["online"] is False
    (summary,) = get(setup, "operator/regions/summary", operator)
    assert (summary["meters_reporting"], summary["load_kw"]) == (0, None)

"""The store on both backends: dedupe, rollups, regional load, gaps, continuity, registry checks."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from sqlmodel import Session, SQLModel, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import MakeStore, empty_pg
from hubkit import (
    T0,
    Clock,
    SimMeter,
    birth,
    incoming,
    make_window,
    register,
    rows,
    scalar,
    window_batch,
)

from segs.hub.db import (
    DeadLetter,
    Gateway,
    Meter,
    MeterEvent,
    MeterGap,
    MeterRollup15m,
    MeterRollupDaily,
    MeterWindow,
    RegionalLoad,
)
from segs.hub.exceptions import StoreUnavailableError
from segs.hub.store import (
    COUNTER_BREAK_EVENT,
    DeadLetterRecord,
    HubReason,
    Store,
    open_store,
)
from segs.protocol import (
    ConnectionState,
    EventBatch,
    GatewayState,
    MeterOnline,
    PowerSpike,
    Reason,
)

MINUTE = timedelta(minutes=1)
_M = TypeVar("_M", bound=SQLModel)


def _all(store: Store, model: type[_M]) -> list[_M]:
    with Session(store.engine) as session:
        return list(session.exec(select(model)).all())


def test_a_window_is_stored_once_however_often_it_arrives(store: Store) -> None:
    meter = SimMeter("MTR-1")
    batch = window_batch("gw-1", 1, meter.windows(range(5)))
    first = store.commit([incoming(batch)])
    again = store.commit([incoming(batch), incoming(batch)])
    overlapping = store.commit([incoming(window_batch("gw-1", 2, meter.windows(range(3, 8))))])

    assert (first.windows_stored, first.windows_duplicate) == (5, 0)
    assert (again.windows_stored, again.windows_received) == (0, 5)
    assert again.acks["gw-1"].seqs == {1}
    assert (overlapping.windows_stored, overlapping.windows_duplicate) == (3, 2)
    assert scalar(store.engine, "SELECT count(*) FROM meter_windows") == 8
    (rollup,) = _all(store, MeterRollup15m)
    assert rollup.windows == 8
    assert rollup.import_kwh == pytest.approx(8 * 0.05)
    loads = _all(store, RegionalLoad)
    assert len(loads) == 8
    assert {load.meters_reporting for load in loads} == {1}
    assert all(load.total_kw == pytest.approx(3.0) for load in loads)


def test_stored_rows_keep_every_window_field(store: Store) -> None:
    window = make_window(
        "MTR-1",
        T0,
        import_kwh=10.5,
        import_delta_kwh=0.0,
        export_kwh=2.25,
        export_delta_kwh=0.02,
        power_kw=-1.25,
        quality=("meter_offline",),
    )
    store.commit([incoming(window_batch("gw-1", 1, [window]))])
    (row,) = _all(store, MeterWindow)
    assert row.window_start == T0
    assert row.window_start.utcoffset() == timedelta(0)
    stored = {name: getattr(row, name) for name in type(window).model_fields if name != "quality"}
    assert stored == {name: getattr(window, name) for name in stored}
    assert row.quality == "meter_offline"
    assert row.region == "unassigned"
    assert row.counter_break is False


def test_rollups_add_new_windows_across_commits_in_any_order(store: Store) -> None:
    meter = SimMeter("MTR-1", power_kw=2.4)
    # 10:00..10:19: 15 windows in the first quarter hour, 5 in the second; sent out of order.
    store.commit([incoming(window_batch("gw-1", 1, meter.windows(range(5, 12))))])
    store.commit([incoming(window_batch("gw-1", 2, meter.windows(range(12, 20))))])
    store.commit([incoming(window_batch("gw-1", 3, meter.windows(range(5))))])

    quarter = {r.bucket_start: r for r in _all(store, MeterRollup15m)}
    first, second = quarter[T0], quarter[T0 + 15 * MINUTE]
    delta = 2.4 / 60
    assert (first.windows, second.windows) == (15, 5)
    assert first.seconds == 15 * 60
    assert first.import_kwh == pytest.approx(15 * delta)
    assert first.first_window_start == T0
    assert first.first_import_kwh == pytest.approx(1000.0)
    assert first.last_window_start == T0 + 14 * MINUTE
    assert first.last_import_kwh == pytest.approx(1000.0 + 15 * delta)
    assert second.first_import_kwh == pytest.approx(first.last_import_kwh)
    assert (first.power_min_kw, first.power_avg_kw, first.power_max_kw) == pytest.approx(
        (1.9, 2.4, 2.9)
    )
    (day,) = _all(store, MeterRollupDaily)
    assert day.bucket_start == T0.replace(hour=0)
    assert day.windows == 20
    assert day.import_kwh == pytest.approx(20 * delta)
    assert day.last_import_kwh - day.first_import_kwh == pytest.approx(day.import_kwh)
    assert day.samples_got == day.samples_expected == 20 * 60


def test_regional_load_sums_the_meters_of_a_region_per_minute(make_store: MakeStore) -> None:
    store = make_store(mode="production")
    register(
        store.engine,
        region="Pune-West",
        capacity_kw=500.0,
        gateways={"gw-1": ["MTR-1", "MTR-2"], "gw-2": ["MTR-3"]},
    )
    export = make_window(
        "MTR-2", T0, import_delta_kwh=0.0, export_kwh=5.0, export_delta_kwh=0.02, power_kw=-1.25
    )
    store.commit(
        [
            incoming(window_batch("gw-1", 1, [make_window("MTR-1", T0, power_kw=3.0), export])),
            incoming(window_batch("gw-2", 1, [make_window("MTR-3", T0, power_kw=248.25)])),
            incoming(window_batch("gw-2", 2, [make_window("MTR-3", T0 + MINUTE, power_kw=100.0)])),
        ]
    )
    loads = {load.minute: load for load in _all(store, RegionalLoad)}
    assert set(loads) == {T0, T0 + MINUTE}
    first = loads[T0]
    assert first.region == "Pune-West"
    assert first.total_kw == pytest.approx(250.0)
    assert first.meters_reporting == 3
    assert first.capacity_kw == 500.0
    assert first.load_factor == pytest.approx(0.5)
    assert loads[T0 + MINUTE].meters_reporting == 1
    assert loads[T0 + MINUTE].load_factor == pytest.approx(0.2)


def test_sub_minute_windows_count_a_meter_once_per_minute(store: Store) -> None:
    fast = SimMeter("MTR-1", window_seconds=10, power_kw=6.0)
    other = SimMeter("MTR-2", window_seconds=10, power_kw=1.5)
    store.commit([incoming(window_batch("gw-1", 1, fast.windows(range(3))))])
    store.commit(
        [
            incoming(window_batch("gw-1", 2, fast.windows(range(3, 7)))),
            incoming(window_batch("gw-1", 3, other.windows(range(6)))),
        ]
    )
    loads = {load.minute: load for load in _all(store, RegionalLoad)}
    assert loads[T0].meters_reporting == 2
    assert loads[T0].windows == 12
    assert loads[T0].total_kw == pytest.approx(7.5)  # both meters covered the whole minute
    assert loads[T0 + MINUTE].meters_reporting == 1
    assert loads[T0 + MINUTE].total_kw == pytest.approx(1.0)  # 10 s of 6 kW in the minute


def test_windows_longer_than_a_minute_spread_over_the_minutes_they_cover(store: Store) -> None:
    meter = SimMeter("MTR-1", window_seconds=300, power_kw=4.0)
    store.commit([incoming(window_batch("gw-1", 1, meter.windows(range(2))))])
    loads = sorted(_all(store, RegionalLoad), key=lambda load: load.minute)
    assert [load.minute for load in loads] == [T0 + i * MINUTE for i in range(10)]
    assert all(load.total_kw == pytest.approx(4.0) for load in loads)
    assert all(load.meters_reporting == 1 for load in loads)


def test_a_gap_is_recorded_and_late_windows_fill_it_counted_once(store: Store) -> None:
    meter = SimMeter("MTR-1")
    opened = store.commit([incoming(window_batch("gw-1", 1, meter.windows([0, 1, 2, 7, 8])))])
    assert opened.gaps_opened == 1
    assert [(g.gap_start, g.gap_end) for g in _all(store, MeterGap)] == [
        (T0 + 3 * MINUTE, T0 + 7 * MINUTE)
    ]

    split = store.commit([incoming(window_batch("gw-1", 2, meter.windows([4]), historical=True))])
    assert split.late_windows == 1
    assert sorted((g.gap_start, g.gap_end) for g in _all(store, MeterGap)) == [
        (T0 + 3 * MINUTE, T0 + 4 * MINUTE),
        (T0 + 5 * MINUTE, T0 + 7 * MINUTE),
    ]
    store.commit([incoming(window_batch("gw-1", 3, meter.windows([3, 5, 6]), historical=True))])
    store.commit([incoming(window_batch("gw-1", 3, meter.windows([3, 5, 6]), historical=True))])

    assert _all(store, MeterGap) == []
    (rollup,) = _all(store, MeterRollup15m)
    assert rollup.windows == 9
    assert rollup.import_kwh == pytest.approx(9 * 0.05)
    assert rollup.last_import_kwh - rollup.first_import_kwh == pytest.approx(rollup.import_kwh)
    assert scalar(store.engine, "SELECT count(*) FROM regional_load") == 9
    assert not any(w.counter_break for w in _all(store, MeterWindow))


def test_a_counter_break_between_consecutive_windows_is_flagged(store: Store) -> None:
    meter = SimMeter("MTR-1")
    windows = meter.windows(range(3))
    jumped = make_window("MTR-1", T0 + 3 * MINUTE, import_kwh=1500.0, import_delta_kwh=0.05)
    after = make_window("MTR-1", T0 + 4 * MINUTE, import_kwh=1500.05, import_delta_kwh=0.05)
    # Across a gap the next window's delta covers the gap: not a break.
    across = make_window("MTR-1", T0 + 8 * MINUTE, import_kwh=1500.25, import_delta_kwh=0.2)
    result = store.commit([incoming(window_batch("gw-1", 1, [*windows, jumped, after, across]))])

    assert result.counter_breaks == 1
    flagged = [w.window_start for w in _all(store, MeterWindow) if w.counter_break]
    assert flagged == [T0 + 3 * MINUTE]
    (event,) = _all(store, MeterEvent)
    assert (event.kind, event.at, event.source) == (COUNTER_BREAK_EVENT, T0 + 3 * MINUTE, "hub")
    assert event.details["previous_import_kwh"] == pytest.approx(1000.15)
    assert event.details["start_import_kwh"] == pytest.approx(1499.95)


def test_a_late_window_is_checked_against_both_neighbours(store: Store) -> None:
    meter = SimMeter("MTR-1")
    store.commit([incoming(window_batch("gw-1", 1, meter.windows([0, 2])))])
    wrong = make_window("MTR-1", T0 + MINUTE, import_kwh=1000.07, import_delta_kwh=0.02)
    result = store.commit([incoming(window_batch("gw-1", 2, [wrong], historical=True))])
    assert result.counter_breaks == 1
    flagged = [w.window_start for w in _all(store, MeterWindow) if w.counter_break]
    assert flagged == [T0 + 2 * MINUTE]


def test_production_mode_dead_letters_unknown_gateways(make_store: MakeStore) -> None:
    store = make_store(mode="production")
    batch = window_batch("gw-x", 7, [make_window("MTR-1", T0)])
    result = store.commit([incoming(batch)])
    assert result.acks["gw-x"].rejected == {7}
    assert result.acks["gw-x"].seqs == set()
    (letter,) = _all(store, DeadLetter)
    assert (letter.reason, letter.gateway_id, letter.seq) == ("unknown_gateway", "gw-x", 7)
    assert letter.payload == incoming(batch).payload
    assert letter.hub_id == "hub-1"
    assert _all(store, MeterWindow) == []
    assert _all(store, Gateway) == []
    store.apply_birth(birth("gw-x", "Pune-West", ["MTR-1"]))
    assert _all(store, Gateway) == []
    assert [d.reason for d in _all(store, DeadLetter)] == ["unknown_gateway"] * 2


def test_demo_mode_registers_unknown_gateways_and_meters(store: Store) -> None:
    store.commit([incoming(window_batch("gw-new", 1, [make_window("MTR-9", T0)]))])
    (gateway,) = _all(store, Gateway)
    assert (gateway.gateway_id, gateway.region, gateway.auto_registered) == (
        "gw-new",
        "unassigned",
        True,
    )
    assert gateway.highest_seq == 1
    (meter,) = _all(store, Meter)
    assert (meter.meter_id, meter.gateway_id, meter.region) == ("MTR-9", "gw-new", "unassigned")
    # Its birth then tells the region; the auto-registered meters follow it.
    store.apply_birth(birth("gw-new", "Pune-East", ["MTR-9", "MTR-10"]))
    meters = {m.meter_id: m for m in _all(store, Meter)}
    assert {m.region for m in meters.values()} == {"Pune-East"}
    assert meters["MTR-10"].profile == "sdm120"
    assert meters["MTR-10"].unit_id == 2


def test_a_window_for_another_gateways_meter_is_refused_as_spoofed(store: Store) -> None:
    store.apply_birth(birth("gw-1", "Pune-West", ["MTR-1"]))
    store.apply_birth(birth("gw-2", "Pune-West", ["MTR-2"]))
    spoofed = window_batch("gw-2", 5, [make_window("MTR-2", T0), make_window("MTR-1", T0)])
    honest = window_batch("gw-1", 9, [make_window("MTR-1", T0)])
    result = store.commit([incoming(spoofed), incoming(honest)])

    assert result.acks["gw-2"].rejected == {5}
    assert result.acks["gw-1"].seqs == {9}
    (letter,) = _all(store, DeadLetter)
    assert (letter.reason, letter.gateway_id, letter.seq) == ("spoofed_meter", "gw-2", 5)
    assert "MTR-1 (gateway gw-1)" in letter.message
    assert [(w.meter_id, w.window_start) for w in _all(store, MeterWindow)] == [("MTR-1", T0)]
    # A birth claiming another gateway's meter does not take it over.
    store.apply_birth(birth("gw-2", "Pune-West", ["MTR-2", "MTR-1"]))
    owner = {m.meter_id: m.gateway_id for m in _all(store, Meter)}
    assert owner == {"MTR-1": "gw-1", "MTR-2": "gw-2"}
    assert [d.reason for d in _all(store, DeadLetter)] == ["spoofed_meter"] * 2


def test_windows_from_the_future_are_refused(store: Store, clock: Clock) -> None:
    clock.now = T0 + 10 * MINUTE
    # Ends exactly 300 s ahead: accepted. Ends 360 s ahead: the whole batch is refused.
    edge = make_window("MTR-1", T0 + 14 * MINUTE)
    ahead = make_window("MTR-1", T0 + 15 * MINUTE)
    ok = store.commit([incoming(window_batch("gw-1", 1, [edge]))])
    refused = store.commit([incoming(window_batch("gw-1", 2, [make_window("MTR-1", T0), ahead]))])
    assert ok.acks["gw-1"].seqs == {1}
    assert refused.acks["gw-1"].rejected == {2}
    (letter,) = _all(store, DeadLetter)
    assert letter.reason == "future_window"
    assert [w.window_start for w in _all(store, MeterWindow)] == [T0 + 14 * MINUTE]


def test_births_and_states_track_the_gateway(store: Store, clock: Clock) -> None:
    store.apply_birth(birth("gw-1", "Pune-West", ["MTR-1", "MTR-2"]))
    (gateway,) = _all(store, Gateway)
    assert gateway.online is True
    assert gateway.agent_version == "0.1.0"
    assert gateway.last_seen_at == clock.now
    clock.advance(60)
    store.apply_state(GatewayState(gateway_id="gw-1", state=ConnectionState.OFFLINE))
    (gateway,) = _all(store, Gateway)
    assert gateway.online is False
    assert gateway.state_changed_at == clock.now
    assert gateway.last_seen_at == clock.now - MINUTE
    at = clock.now + MINUTE
    store.apply_state(GatewayState(gateway_id="gw-1", state=ConnectionState.ONLINE, at=at))
    (gateway,) = _all(store, Gateway)
    assert (gateway.online, gateway.state_changed_at) == (True, at)
    assert {m.meter_id for m in _all(store, Meter)} == {"MTR-1", "MTR-2"}


def test_events_are_stored_once(store: Store) -> None:
    spike = PowerSpike(meter_id="MTR-1", at=T0, power_kw=9.0, baseline_kw=3.0, ratio=3.0)
    online = MeterOnline(meter_id="MTR-1", at=T0)
    batch = EventBatch(gateway_id="gw-1", seq=1, sent_at=T0, events=(spike, online))
    store.commit([incoming(batch)])
    result = store.commit([incoming(batch)])
    assert result.acks["gw-1"].seqs == {1}
    events = {e.kind: e for e in _all(store, MeterEvent)}
    assert set(events) == {"power_spike", "meter_online"}
    assert events["power_spike"].details == {"power_kw": 9.0, "baseline_kw": 3.0, "ratio": 3.0}
    assert events["power_spike"].source == "edge"


def test_retention_deletes_only_old_windows_and_keeps_rollups(store: Store) -> None:
    meter = SimMeter("MTR-1")
    store.commit([incoming(window_batch("gw-1", 1, meter.windows(range(30))))])
    deleted = store.retention(T0 + 10 * MINUTE, batch_size=4)
    assert deleted == 10
    starts = sorted(w.window_start for w in _all(store, MeterWindow))
    assert starts == [T0 + i * MINUTE for i in range(10, 30)]
    assert sum(r.windows for r in _all(store, MeterRollup15m)) == 30
    assert scalar(store.engine, "SELECT count(*) FROM regional_load") == 30
    assert store.retention(T0 + 10 * MINUTE) == 0


def test_dead_letters_with_a_seq_are_acknowledged_as_rejected(store: Store) -> None:
    letter = DeadLetterRecord(
        topic="anything",
        payload=b"\xff\x00",
        reason=Reason.NOT_UTF8,
        message="payload is not UTF-8",
        received_at=T0,
        gateway_id="gw-1",
        seq=41,
    )
    anonymous = DeadLetterRecord("x", b"", Reason.UNKNOWN_TOPIC, "no", T0)
    result = store.commit([], [letter, anonymous])
    assert result.acks["gw-1"].rejected == {41}
    assert sorted(d.reason for d in _all(store, DeadLetter)) == ["not_utf8", "unknown_topic"]


def _refuse_meter_online_events(store: Store) -> None:
    """Make the database itself refuse one kind of row, as a broken schema would."""
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql(
                "ALTER TABLE meter_events ADD CONSTRAINT no_online CHECK (kind <> 'meter_online')"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER no_online BEFORE INSERT ON meter_events "
                "WHEN NEW.kind = 'meter_online' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )


def test_a_message_the_database_refuses_is_dead_lettered_and_the_rest_stored(
    store: Store,
) -> None:
    _refuse_meter_online_events(store)
    poison = EventBatch(
        gateway_id="gw-1", seq=2, sent_at=T0, events=(MeterOnline(meter_id="MTR-1", at=T0),)
    )
    good = window_batch("gw-1", 3, [make_window("MTR-1", T0)])
    result = store.commit([incoming(poison), incoming(good)])
    assert result.acks["gw-1"].seqs == {3}
    assert result.acks["gw-1"].rejected == {2}
    (letter,) = _all(store, DeadLetter)
    assert (letter.reason, letter.seq) == (HubReason.STORAGE_FAILED, 2)
    assert len(_all(store, MeterWindow)) == 1


def test_a_lost_postgresql_connection_is_unavailable_then_recovers(
    pg_hub_url: str, clock: Clock
) -> None:
    empty_pg(pg_hub_url)
    with open_store(pg_hub_url, clock=clock) as store:
        store.commit([incoming(window_batch("gw-1", 1, [make_window("MTR-1", T0)]))])
        plain = "postgresql://" + pg_hub_url.split("://", 1)[1]
        with psycopg.connect(plain, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        batch = incoming(window_batch("gw-1", 2, [make_window("MTR-1", T0 + MINUTE)]))
        with pytest.raises(StoreUnavailableError):
            store.commit([batch])
        assert store.commit([batch]).windows_stored == 1
        assert len(rows(store.engine, "SELECT meter_id FROM meter_windows")) == 2


def test_two_stores_taking_turns_on_one_gateway_see_each_others_windows(
    make_store: MakeStore,
) -> None:
    # Two ingest workers: each remembers the tails it wrote, and must notice the other's.
    first, second = make_store(), make_store()
    meter = SimMeter("MTR-1")
    first.commit([incoming(window_batch("gw-1", 1, meter.windows([0, 1])))])
    second.commit([incoming(window_batch("gw-1", 2, meter.windows([2, 3])))])
    # Window 4 continues window 3 (written by the other store): no gap, no break.
    result = first.commit([incoming(window_batch("gw-1", 3, meter.windows([4])))])
    assert (result.gaps_opened, result.counter_breaks, result.late_windows) == (0, 0, 0)
    # A window after a real gap, then a late one into it, alternating stores.
    gap = second.commit([incoming(window_batch("gw-1", 4, meter.windows([7])))])
    assert gap.gaps_opened == 1
    late = first.commit([incoming(window_batch("gw-1", 5, meter.windows([5, 6])))])
    assert late.late_windows == 2
    assert _all(first, MeterGap) == []
    assert not any(w.counter_break for w in _all(first, MeterWindow))
    (rollup,) = _all(first, MeterRollup15m)
    assert rollup.windows == 8


def test_a_window_stored_behind_the_stores_back_is_not_counted_twice(store: Store) -> None:
    meter = SimMeter("MTR-1")
    store.commit([incoming(window_batch("gw-1", 1, meter.windows([0, 1])))])
    # Someone else stores window 2 without bumping the gateway's version (a bug, a
    # manual fix): the store's cache believes window 2 is new.
    window = meter.window(2)
    with Session(store.engine) as session:
        session.add(
            MeterWindow(
                **{k: v for k, v in window.model_dump().items() if k != "quality"},
                quality="",
                region="unassigned",
            )
        )
        session.commit()
    result = store.commit([incoming(window_batch("gw-1", 2, meter.windows([2, 3])))])
    assert (result.windows_stored, result.windows_duplicate) == (1, 1)
    (rollup,) = _all(store, MeterRollup15m)
    assert rollup.windows == 3  # the stray window is in the table, not in the rollup
    assert scalar(store.engine, "SELECT count(*) FROM meter_windows") == 4

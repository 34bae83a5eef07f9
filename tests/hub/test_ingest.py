"""Ingest over a real Mosquitto, on both backends: acks after commit, dedupe, dead letters."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import StartHub
from hubkit import (
    T0,
    SimMeter,
    SyntheticGateway,
    birth,
    make_window,
    register,
    rows,
    scalar,
    wait_for,
    window_batch,
    windows_at,
)
from services import MosquittoBroker

from segs.protocol import (
    Ack,
    ConnectionState,
    GatewayState,
    HubState,
    TopicKind,
    decode,
    encode,
    hub_state_topic,
    limits,
)

MakeGateway = Callable[..., Awaitable[SyntheticGateway]]
MINUTE = timedelta(minutes=1)


async def test_a_batch_is_acknowledged_only_once_its_rows_are_committed(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub()
    gateway = await gateway_factory("gw-1")
    meters = [SimMeter(f"MTR-{i}") for i in range(5)]
    engine = hub.store.engine
    missing_at_ack: list[int] = []

    def check(ack: Ack) -> None:
        missing_at_ack.extend(
            seq for seq in ack.seqs if windows_at(engine, T0 + (seq - 1) * MINUTE) != len(meters)
        )

    gateway.on_ack = check
    for seq in range(1, 21):
        await gateway.send(window_batch("gw-1", seq, [m.window(seq - 1) for m in meters]))
    await gateway.wait_settled(range(1, 21))
    assert missing_at_ack == []
    assert gateway.rejected == set()
    assert scalar(engine, "SELECT count(*) FROM meter_windows") == 100
    assert hub.ingest.stats.windows_stored == 100


async def test_resends_and_duplicates_never_count_twice(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub()
    gateway = await gateway_factory("gw-1")
    meter = SimMeter("MTR-1")
    batches = [window_batch("gw-1", s, meter.windows(range(5 * s, 5 * s + 5))) for s in range(1, 6)]
    for batch in batches:
        await gateway.send(batch)
    await gateway.wait_settled(range(1, 6))
    for batch in batches:  # the edge missed the acks: it resends everything, twice
        await gateway.publish_raw(TopicKind.WINDOWS, encode(batch))
        await gateway.publish_raw(TopicKind.WINDOWS, encode(batch))
    await wait_for(
        lambda: sum(len(ack.seqs) for ack in gateway.acks) >= 10, what="acks of the resends"
    )
    engine = hub.store.engine
    assert scalar(engine, "SELECT count(*) FROM meter_windows") == 25
    assert scalar(engine, "SELECT sum(windows) FROM meter_rollups_15m") == 25
    assert scalar(engine, "SELECT sum(windows) FROM meter_rollups_daily") == 25
    assert scalar(engine, "SELECT sum(windows) FROM regional_load") == 25
    assert hub.ingest.stats.windows_stored == 25


def _hostile_payloads() -> list[tuple[str, bytes, str, int | None]]:
    """``(name, payload on gw-1's windows topic, expected reason, seq rejected or None)``."""
    valid = json.loads(encode(window_batch("gw-1", 900, [make_window("MTR-1", T0)])))

    def variant(seq: int, **changes: object) -> bytes:
        document = {**valid, "seq": seq, **changes}
        return json.dumps({k: v for k, v in document.items() if v is not None}).encode()

    window = valid["windows"][0]
    return [
        ("garbage", b"\x00\x01garbage", "malformed_json", None),
        ("not utf-8", b"\xff\xfe\xfd", "not_utf8", None),
        ("empty", b"", "malformed_json", None),
        ("array", b"[1, 2, 3]", "not_an_object", None),
        (
            "nan",
            variant(901).replace(b'"import_kwh": 1000.05', b'"import_kwh": NaN'),
            "not_finite",
            901,
        ),
        ("future version", variant(902, v=2), "unsupported_version", 902),
        ("missing windows", variant(903, windows=None), "missing_field", 903),
        ("extra field", variant(904, hack=True), "extra_field", 904),
        ("wrong type", variant(905, historical="yes"), "wrong_type", 905),
        (
            "too many windows",
            variant(906, windows=[window] * (limits.MAX_WINDOWS_PER_BATCH + 1)),
            "too_many_items",
            906,
        ),
        (
            "negative power out of range",
            variant(907, windows=[{**window, "power_min_kw": -1e6}]),
            "out_of_range",
            907,
        ),
        ("other gateway in payload", variant(908, gateway_id="gw-2"), "id_mismatch", 908),
        ("too large", b"{" + b" " * (limits.MAX_PAYLOAD_BYTES + 1) + b"}", "too_large", None),
        ("deep nesting", b"[" * 100_000, "malformed_json", None),
    ]


async def test_hostile_payloads_become_dead_letters_while_valid_traffic_flows(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub()
    gateway = await gateway_factory("gw-1")
    meter = SimMeter("MTR-1")
    hostile = _hostile_payloads()
    for index, (_, payload, _, _) in enumerate(hostile, start=1):
        await gateway.publish_raw(TopicKind.WINDOWS, payload)
        await gateway.send(window_batch("gw-1", index, [meter.window(index)]))
    await gateway.publish_raw(TopicKind.EVENTS, b'{"v": 1}')
    await gateway.publish_raw(TopicKind.GATEWAY_BIRTH, b"\x00")
    valid_seqs = range(1, len(hostile) + 1)
    rejected = {seq for *_, seq in hostile if seq is not None}
    await gateway.wait_settled([*valid_seqs, *rejected])
    await wait_for(
        lambda: hub.ingest.stats.dead_letters == len(hostile) + 2, what="every dead letter"
    )
    assert gateway.acked == set(valid_seqs)
    assert gateway.rejected == rejected
    letters = rows(
        hub.store.engine,
        "SELECT reason, topic, payload, gateway_id, seq FROM dead_letters ORDER BY id",
    )
    by_payload = {bytes(row.payload): row for row in letters}
    for name, payload, reason, seq in hostile:
        stored = payload[: limits.MAX_PAYLOAD_BYTES]
        assert by_payload[stored].reason == reason, name
        assert by_payload[stored].gateway_id == "gw-1", name
        assert by_payload[stored].seq == seq, name
    assert scalar(hub.store.engine, "SELECT count(*) FROM meter_windows") == len(hostile)
    assert hub.ingest.stats.errors == 0
    assert hub.task.done() is False


async def test_spoofed_meters_and_mismatched_gateway_ids_are_rejected(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub(mode="production")
    register(hub.store.engine, gateways={"gw-1": ["MTR-1"], "gw-2": ["MTR-2"]})
    honest = await gateway_factory("gw-1")
    spoofer = await gateway_factory("gw-2")
    await spoofer.send(
        window_batch("gw-2", 1, [make_window("MTR-2", T0), make_window("MTR-1", T0)])
    )
    pretending = window_batch("gw-1", 2, [make_window("MTR-1", T0 + MINUTE)])
    await spoofer.publish_raw(TopicKind.WINDOWS, encode(pretending))
    await honest.send(window_batch("gw-1", 7, [make_window("MTR-1", T0)]))
    await spoofer.wait_settled([1, 2])
    await honest.wait_settled([7])
    assert spoofer.rejected == {1, 2}
    assert honest.acked == {7}
    assert honest.rejected == set()
    reasons = rows(
        hub.store.engine, "SELECT reason, gateway_id, seq FROM dead_letters ORDER BY seq"
    )
    assert [(r.reason, r.gateway_id, r.seq) for r in reasons] == [
        ("spoofed_meter", "gw-2", 1),
        ("id_mismatch", "gw-2", 2),
    ]
    stored = rows(hub.store.engine, "SELECT meter_id FROM meter_windows")
    assert [r.meter_id for r in stored] == ["MTR-1"]


async def test_production_rejects_unknown_gateways(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub(mode="production")
    stranger = await gateway_factory("gw-stranger")
    await stranger.publish_raw(TopicKind.GATEWAY_BIRTH, encode(birth("gw-stranger", "X", ["M-1"])))
    await stranger.send(window_batch("gw-stranger", 3, [make_window("M-1", T0)]))
    await stranger.wait_settled([3])
    assert stranger.rejected == {3}
    await wait_for(lambda: hub.ingest.stats.dead_letters == 2, what="both dead letters")
    reasons = {r.reason for r in rows(hub.store.engine, "SELECT reason FROM dead_letters")}
    assert reasons == {"unknown_gateway"}
    assert scalar(hub.store.engine, "SELECT count(*) FROM gateways") == 0


async def test_demo_mode_registers_gateways_from_their_birth(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub()
    gateway = await gateway_factory("gw-new")
    await gateway.publish_raw(
        TopicKind.GATEWAY_BIRTH, encode(birth("gw-new", "Pune-East", ["M-1", "M-2"])), retain=True
    )
    await gateway.send(window_batch("gw-new", 1, [make_window("M-1", T0)]))
    await gateway.wait_settled([1])
    assert gateway.acked == {1}
    (row,) = rows(hub.store.engine, "SELECT gateway_id, region, online FROM gateways")
    assert (row.gateway_id, row.region, bool(row.online)) == ("gw-new", "Pune-East", True)
    assert scalar(hub.store.engine, "SELECT count(*) FROM meters WHERE region = 'Pune-East'") == 2


async def test_nothing_is_acknowledged_while_the_database_cannot_commit(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub()
    gateway = await gateway_factory("gw-1")
    await gateway.send(window_batch("gw-1", 1, [make_window("MTR-1", T0)]))
    await gateway.wait_settled([1])
    engine = hub.store.engine
    with engine.connect() as blocker:
        blocker.begin()
        if engine.dialect.name == "postgresql":
            blocker.exec_driver_sql("LOCK TABLE meter_windows IN EXCLUSIVE MODE")
        else:
            blocker.exec_driver_sql("DELETE FROM regions WHERE name = 'no such region'")
        await gateway.send(window_batch("gw-1", 2, [make_window("MTR-1", T0 + MINUTE)]))
        await asyncio.sleep(1.0)
        assert 2 not in gateway.acked
        blocker.rollback()
    await gateway.wait_settled([2])
    assert scalar(engine, "SELECT count(*) FROM meter_windows") == 2


async def test_the_hub_state_is_retained_online_and_offline_after_shutdown(
    start_hub: StartHub, mosquitto: MosquittoBroker
) -> None:
    hub = await start_hub(hub_id="hub-a")

    async def retained_state() -> HubState:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.subscribe(hub_state_topic(), qos=1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert message.retain
                    assert isinstance(message.payload, bytes)
                    return decode(message.payload, HubState)
        raise AssertionError("no retained hub state")

    online = await retained_state()
    assert (online.hub_id, online.state) == ("hub-a", ConnectionState.ONLINE)
    await hub.stop()
    offline = await retained_state()
    assert offline.state is ConnectionState.OFFLINE


async def test_two_workers_in_one_share_group_split_the_load_without_loss_or_duplicates(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    first = await start_hub(hub_id="hub-a")
    second = await start_hub(hub_id="hub-b")
    gateways = [await gateway_factory(f"gw-{g}") for g in range(3)]
    meters = {g: [SimMeter(f"MTR-{g}-{m}") for m in range(4)] for g in range(3)}
    for seq in range(1, 41):
        for g, gateway in enumerate(gateways):
            await gateway.send(
                window_batch(gateway.gateway_id, seq, [m.window(seq - 1) for m in meters[g]])
            )
    for gateway in gateways:
        await gateway.wait_settled(range(1, 41))
        assert gateway.rejected == set()
    engine = first.store.engine
    assert scalar(engine, "SELECT count(*) FROM meter_windows") == 3 * 4 * 40
    assert scalar(engine, "SELECT sum(windows) FROM meter_rollups_15m") == 3 * 4 * 40
    assert scalar(engine, "SELECT sum(windows) FROM regional_load") == 3 * 4 * 40
    assert scalar(engine, "SELECT count(*) FROM meter_gaps") == 0
    shares = (first.ingest.stats.batches_committed, second.ingest.stats.batches_committed)
    assert sum(shares) >= 120
    assert min(shares) > 10, f"one worker did (almost) nothing: {shares}"
    assert first.ingest.stats.windows_stored + second.ingest.stats.windows_stored == 480


async def test_an_empty_share_group_means_a_plain_subscription(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub(share_group="")
    gateway = await gateway_factory("gw-1")
    await gateway.send(window_batch("gw-1", 1, [make_window("MTR-1", T0)]))
    await gateway.wait_settled([1])
    assert gateway.acked == {1}
    assert hub.ingest.stats.windows_stored == 1


async def test_a_gateways_will_marks_it_offline(
    start_hub: StartHub, gateway_factory: MakeGateway
) -> None:
    hub = await start_hub()
    gateway = await gateway_factory("gw-1")
    await gateway.publish_raw(
        TopicKind.GATEWAY_BIRTH, encode(birth("gw-1", "Pune-West", ["MTR-1"])), retain=True
    )
    engine = hub.store.engine
    await wait_for(
        lambda: bool(rows(engine, "SELECT online FROM gateways")), what="the birth applied"
    )
    assert bool(scalar(engine, "SELECT online FROM gateways")) is True
    will = GatewayState(gateway_id="gw-1", state=ConnectionState.OFFLINE)
    await gateway.publish_raw(TopicKind.GATEWAY_STATE, encode(will), retain=True)
    await wait_for(
        lambda: not scalar(engine, "SELECT online FROM gateways"), what="the gateway offline"
    )

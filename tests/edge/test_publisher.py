"""The MQTT link and the publisher against a real Mosquitto and the acking test hub.

No meters here: batches are put into a real outbox by hand, and the tests assert
on what the hub received, what the outbox file still holds and what a plain
MQTT subscriber sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from services import MosquittoBroker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testhub import AckingHub, make_window, outbox_rows, wait_for

from segs.edge.config import MqttSettings
from segs.edge.link import LinkDownError, MqttLink, backoff_delay
from segs.edge.outbox import Outbox
from segs.edge.publisher import Publisher
from segs.protocol import (
    Ack,
    ConnectionState,
    GatewayBirth,
    GatewayState,
    MeterInfo,
    ReloadConfigCommand,
    TopicKind,
    decode,
    encode,
    gateway_topic,
)

GW = "gw-test-01"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


class Clock:
    """A UTC clock the test can shift; it runs with real time."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def birth(outbox: Outbox) -> GatewayBirth:
    return GatewayBirth(
        gateway_id=GW,
        region="region-test",
        agent_version="0.1.0",
        started_at=datetime.now(UTC),
        window_seconds=60,
        poll_interval_s=1.0,
        config_hash="0123456789abcdef",
        meters=(MeterInfo(meter_id="MTR-00000001", profile="sdm630", bus="bus-1", unit_id=1),),
        outbox=outbox.stats(),
    )


@contextlib.asynccontextmanager
async def delivering(
    outbox: Outbox,
    broker: MosquittoBroker,
    *,
    ack_timeout_s: float = 30.0,
    max_inflight: int = 16,
    burst: int = 8,
    protocol: str = "5",
) -> AsyncIterator[tuple[MqttLink, Publisher]]:
    """A running link and publisher for ``outbox``; both stopped afterwards."""
    publisher = Publisher(
        outbox,
        gateway_id=GW,
        window_seconds=60,
        ack_timeout_s=ack_timeout_s,
        max_inflight=max_inflight,
        burst=burst,
    )
    link = MqttLink(
        MqttSettings(url=broker.url, protocol=protocol, client_id=GW),
        gateway_id=GW,
        birth=lambda: birth(outbox),
        outbox_stats=outbox.stats,
        on_ack=publisher.on_ack,
        on_resend=publisher.on_resend,
        on_hub_state=publisher.on_hub_state,
        on_ready=publisher.on_link_ready,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(publisher.run(link))]
    try:
        async with asyncio.timeout(10):
            await link.wait_ready()
        yield link, publisher
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


def add(outbox: Outbox, publisher: Publisher | None, minute: int, meters: int = 2) -> int:
    start = T0 + timedelta(minutes=minute)
    seq = outbox.add_windows([make_window(m, start) for m in range(1, meters + 1)])
    if publisher is not None:
        publisher.notify_new(seq)
    return seq


# --- the link ---------------------------------------------------------------------------------


async def test_every_connect_announces_birth_and_state_retained_and_offline_on_stop(
    mosquitto: MosquittoBroker, outbox: Outbox
) -> None:
    async with AckingHub(mosquitto.host, mosquitto.port) as hub:
        async with delivering(outbox, mosquitto) as (link, _):
            assert link.ready
            await wait_for(lambda: hub.births and hub.states, within=5, what="birth and state")
            # A late subscriber still gets both: they are retained.
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as late:
                await late.subscribe(gateway_topic(GW, TopicKind.GATEWAY_BIRTH), qos=1)
                await late.subscribe(gateway_topic(GW, TopicKind.GATEWAY_STATE), qos=1)
                seen: dict[str, aiomqtt.Message] = {}
                async with asyncio.timeout(5):
                    async for message in late.messages:
                        seen[message.topic.value] = message
                        if len(seen) == 2:
                            break
            state = seen[gateway_topic(GW, TopicKind.GATEWAY_STATE)]
            assert state.retain
            assert isinstance(state.payload, bytes)
            online = decode(state.payload, GatewayState)
            assert online.state is ConnectionState.ONLINE
            assert online.at is not None
            assert online.outbox is not None
            assert seen[gateway_topic(GW, TopicKind.GATEWAY_BIRTH)].retain
            assert hub.births[-1].meters[0].meter_id == "MTR-00000001"

            # Reconnect: the broker restarts and the link announces itself again.
            await asyncio.to_thread(mosquitto.restart)
            await hub.wait_connected()
            await wait_for(lambda: link.generation == 2, within=10, what="a reconnect")
            await wait_for(lambda: len(hub.births) == 2, within=5, what="a second birth")
            assert link.stats.connects == 2
            assert link.stats.disconnects == 1
        # Stopped: a last, retained "offline" with a time (the will has none).
        await wait_for(
            lambda: hub.states[-1].state is ConnectionState.OFFLINE, within=5, what="offline"
        )
        assert hub.states[-1].at is not None
        assert not link.ready
        with pytest.raises(LinkDownError):
            await link.publish(TopicKind.WINDOWS, b"{}")


async def test_mqtt_311_works_too(mosquitto: MosquittoBroker, outbox: Outbox) -> None:
    async with (
        AckingHub(mosquitto.host, mosquitto.port) as hub,
        delivering(outbox, mosquitto, protocol="3.1.1") as (_, publisher),
    ):
        seq = add(outbox, publisher, 0)
        await wait_for(lambda: not outbox_rows(outbox.path.parent), within=5, what="the ack")
        assert hub.deliveries[seq] == 1


async def test_bad_incoming_messages_are_logged_and_ignored(
    mosquitto: MosquittoBroker, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="segs.edge.link")
    async with AckingHub(mosquitto.host, mosquitto.port) as hub:
        hub.pause_acks()
        async with delivering(outbox, mosquitto) as (link, publisher):
            seq = add(outbox, publisher, 0)
            await wait_for(lambda: hub.deliveries[seq], within=5, what="the batch")
            ack_topic = gateway_topic(GW, TopicKind.ACK)
            cmd_topic = gateway_topic(GW, TopicKind.COMMAND)
            await hub.publish_raw(ack_topic, b"\xff not json")
            await hub.publish_raw(ack_topic, b'{"v": 1, "gateway_id": "gw-other", "seqs": [1], '
                                  b'"acked_at": "2026-11-27T10:00:00Z"}')  # fmt: skip
            await hub.publish_raw(cmd_topic, b'{"v": 9}')
            reload = ReloadConfigCommand(command_id="cmd-1", issued_at=datetime.now(UTC))
            await hub.publish_raw(cmd_topic, encode(reload))
            # Still connected, and a good ack still deletes the batch.
            await hub.resume_acks()
            await wait_for(lambda: not outbox_rows(outbox.path.parent), within=5, what="the ack")
            assert link.stats.undecodable == 3
            assert link.stats.connects == 1
            assert link.ready
    messages = [r.getMessage() for r in caplog.records]
    assert sum("ignoring an undecodable message" in m for m in messages) == 3
    assert any("reload_config is not supported yet" in m for m in messages)


def test_backoff_has_full_jitter_and_a_ceiling() -> None:
    import random  # noqa: PLC0415

    rng = random.Random(1)
    delays = [backoff_delay(n, initial_s=1.0, max_s=60.0, rng=rng) for n in range(40)]
    assert all(0.0 <= d <= min(60.0, 2.0**n) for n, d in enumerate(delays))
    assert max(delays[10:]) > 30.0  # the ceiling is reached, and the jitter spreads below it
    assert min(delays[10:]) < 30.0


# --- the publisher ----------------------------------------------------------------------------


async def test_batches_stay_until_acked_and_are_resent_after_the_ack_timeout(
    mosquitto: MosquittoBroker, outbox: Outbox
) -> None:
    async with AckingHub(mosquitto.host, mosquitto.port) as hub:
        hub.pause_acks()
        async with delivering(outbox, mosquitto, ack_timeout_s=1.0) as (_, publisher):
            seqs = [add(outbox, publisher, minute) for minute in range(3)]
            await wait_for(
                lambda: (
                    all(hub.deliveries[s] >= 3 for s in seqs)
                    and all(row[3] >= 3 for row in outbox_rows(outbox.path.parent))
                ),
                within=10,
                what="resends",
            )
            # A PUBACK deleted nothing; resends are marked historical.
            assert [row[0] for row in outbox_rows(outbox.path.parent)] == seqs
            first = {d.seq: d for d in reversed(hub.log)}
            assert not any(first[s].historical for s in seqs)
            assert all(d.historical for d in hub.log if d is not first[d.seq])
            await hub.resume_acks()
            await wait_for(lambda: not outbox_rows(outbox.path.parent), within=5, what="drain")
        assert publisher.stats.acked == 3
        assert hub.duplicates == hub.window_deliveries - len(hub.windows)


async def test_live_batches_overtake_a_paced_backlog(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    clock = Clock()
    clock.offset = -timedelta(hours=2)
    with Outbox(tmp_path / "outbox.db", clock=clock) as box:
        backlog = [add(box, None, minute, meters=32) for minute in range(60)]
        clock.offset = timedelta(0)
        async with AckingHub(mosquitto.host, mosquitto.port) as hub:
            hub.pause_acks()
            async with delivering(box, mosquitto, max_inflight=4, burst=2) as (_, publisher):
                await wait_for(lambda: len(hub.log) >= 4, within=5, what="the first backlog")
                await asyncio.sleep(0.3)
                assert len(hub.log) == 4  # paced: at most max_inflight unacknowledged
                live = add(box, publisher, 100)
                await wait_for(lambda: hub.deliveries[live], within=2, what="the live batch")
                assert len(hub.log) == 5
                by_seq = {d.seq: d for d in hub.log}
                assert not by_seq[live].historical
                assert all(by_seq[s].historical for s in backlog[:4])
                # Acks let the backlog drain, oldest first.
                await hub.resume_acks()
                await wait_for(lambda: not outbox_rows(tmp_path), within=20, what="the drain")
        order = [d.seq for d in hub.log if d.seq != live]
        assert order == sorted(order)
        assert set(order) == set(backlog)


async def test_hub_online_resends_everything_and_a_resend_command_its_range(
    mosquitto: MosquittoBroker, outbox: Outbox
) -> None:
    async with AckingHub(mosquitto.host, mosquitto.port) as hub:
        hub.pause_acks()
        async with delivering(outbox, mosquitto, ack_timeout_s=60.0) as (_, publisher):
            seqs = [add(outbox, publisher, minute) for minute in range(3)]
            await wait_for(lambda: all(hub.deliveries[s] for s in seqs), within=5, what="sends")
            await hub.announce(ConnectionState.ONLINE)
            await wait_for(
                lambda: all(hub.deliveries[s] == 2 for s in seqs), within=5, what="a sweep"
            )
            await hub.send_resend(GW, seqs[1], seqs[1])
            await wait_for(lambda: hub.deliveries[seqs[1]] == 3, within=5, what="the resend")
            await asyncio.sleep(0.3)
            assert [hub.deliveries[s] for s in seqs] == [2, 3, 2]
            assert len(outbox_rows(outbox.path.parent)) == 3


async def test_rejected_seqs_are_deleted_and_logged(
    mosquitto: MosquittoBroker, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    async with AckingHub(mosquitto.host, mosquitto.port) as hub:
        hub.pause_acks()
        async with delivering(outbox, mosquitto) as (_, publisher):
            good, bad = add(outbox, publisher, 0), add(outbox, publisher, 1)
            await wait_for(lambda: hub.deliveries[bad], within=5, what="the batches")
            ack = Ack(gateway_id=GW, seqs=(good,), rejected=(bad,), acked_at=datetime.now(UTC))
            await hub.publish_raw(gateway_topic(GW, TopicKind.ACK), encode(ack))
            await wait_for(lambda: not outbox_rows(outbox.path.parent), within=5, what="deletes")
        assert publisher.stats.rejected == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"rejected batches seq {bad}" in m for m in errors)


async def test_a_backlog_waits_for_the_broker_and_the_hub(
    mosquitto: MosquittoBroker, outbox: Outbox
) -> None:
    await asyncio.to_thread(mosquitto.stop)
    seqs = [add(outbox, None, minute) for minute in range(5)]

    async def start_broker_later() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(mosquitto.start)

    starter = asyncio.create_task(start_broker_later())
    async with delivering(outbox, mosquitto) as (link, _):
        await starter
        assert link.stats.connect_failures >= 1
        # Published to nobody first (no hub yet); the hub's "online" brings them again.
        async with AckingHub(mosquitto.host, mosquitto.port) as hub:
            await wait_for(lambda: not outbox_rows(outbox.path.parent), within=10, what="drain")
        assert hub.seqs == set(seqs)

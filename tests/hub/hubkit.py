"""Helpers for the hub tests: synthetic windows and batches, a settable clock, row readers.

Import it from a test module of this folder after putting the folder on
``sys.path`` (pytest runs with ``--import-mode=importlib``)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hubkit import Meter, batch, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
from sqlalchemy import Engine, text
from sqlmodel import Session, func, select

from segs.hub.db import Gateway, Meter, MeterWindow, Region
from segs.hub.store import Incoming, Store
from segs.protocol import (
    Ack,
    ConnectionState,
    EventBatch,
    GatewayBirth,
    GatewayState,
    HubState,
    MeterInfo,
    OutboxStats,
    QualityFlag,
    TopicKind,
    Window,
    WindowBatch,
    decode,
    encode,
    gateway_topic,
    hub_state_topic,
    limits,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
"""A Monday, 10:00 UTC: where the synthetic meters start."""

HUB_TABLES = (
    "mail_outbox",
    "user_preferences",
    "refresh_tokens",
    "one_time_codes",
    "users",
    "dead_letters",
    "meter_events",
    "meter_gaps",
    "regional_load",
    "meter_rollups_daily",
    "meter_rollups_15m",
    "meter_windows",
    "meters",
    "gateways",
    "regions",
)


class Clock:
    """A settable UTC clock for the store and ingest."""

    def __init__(self, now: datetime = T0 + timedelta(hours=1)) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class SimMeter:
    """A synthetic meter whose windows keep their counters continuous.

    ``power_kw`` is constant, so a window's import delta is ``power * s / 3600``.
    """

    meter_id: str
    power_kw: float = 3.0
    import_kwh: float = 1000.0
    window_seconds: int = 60
    start: datetime = T0
    produced: list[Window] = field(default_factory=list)

    def window(self, index: int) -> Window:
        """The ``index``-th window (0 at ``start``); counters follow from the constant power."""
        delta = self.power_kw * self.window_seconds / 3600.0
        return make_window(
            self.meter_id,
            self.start + timedelta(seconds=index * self.window_seconds),
            import_kwh=self.import_kwh + delta * (index + 1),
            import_delta_kwh=delta,
            power_kw=self.power_kw,
            window_seconds=self.window_seconds,
        )

    def windows(self, indexes: Iterable[int]) -> list[Window]:
        """Several windows by index."""
        return [self.window(i) for i in indexes]


def make_window(
    meter_id: str,
    start: datetime,
    *,
    import_kwh: float = 1000.05,
    import_delta_kwh: float = 0.05,
    export_kwh: float = 0.0,
    export_delta_kwh: float = 0.0,
    power_kw: float = 3.0,
    window_seconds: int = 60,
    quality: Sequence[str] = (),
) -> Window:
    """A valid window (power min/avg/max around ``power_kw``)."""
    return Window.model_validate(
        {
            "meter_id": meter_id,
            "window_start": start,
            "window_seconds": window_seconds,
            "import_kwh": import_kwh,
            "export_kwh": export_kwh,
            "import_delta_kwh": import_delta_kwh,
            "export_delta_kwh": export_delta_kwh,
            "power_min_kw": power_kw - 0.5,
            "power_avg_kw": power_kw,
            "power_max_kw": power_kw + 0.5,
            "voltage_avg_v": 230.0,
            "current_avg_a": 5.0,
            "power_factor_avg": 0.95,
            "frequency_avg_hz": 50.0,
            "samples_got": window_seconds,
            "samples_expected": window_seconds,
            "quality": tuple(QualityFlag(q) for q in quality),
        }
    )


def window_batch(
    gateway_id: str, seq: int, windows: Sequence[Window], *, historical: bool = False
) -> WindowBatch:
    """A ``windows`` batch."""
    return WindowBatch(
        gateway_id=gateway_id,
        seq=seq,
        sent_at=T0,
        historical=historical,
        windows=tuple(windows),
    )


def birth(
    gateway_id: str, region: str, meter_ids: Sequence[str] = (), *, window_seconds: int = 60
) -> GatewayBirth:
    """A ``birth`` message listing ``meter_ids`` (sdm120 on one bus)."""
    return GatewayBirth(
        gateway_id=gateway_id,
        region=region,
        agent_version="0.1.0",
        started_at=T0,
        window_seconds=window_seconds,
        poll_interval_s=1.0,
        config_hash="0123456789abcdef",
        meters=tuple(
            MeterInfo(meter_id=m, profile="sdm120", bus="rs485-0", unit_id=i + 1)
            for i, m in enumerate(meter_ids)
        ),
        outbox=OutboxStats(
            pending_batches=0, pending_bytes=0, dropped_batches=0, dropped_windows=0
        ),
    )


def incoming(message: WindowBatch | EventBatch | GatewayBirth | GatewayState) -> Incoming:
    """The message as ingest hands it to the store."""
    kinds = {
        WindowBatch: TopicKind.WINDOWS,
        EventBatch: TopicKind.EVENTS,
        GatewayBirth: TopicKind.GATEWAY_BIRTH,
        GatewayState: TopicKind.GATEWAY_STATE,
    }
    topic = gateway_topic(message.gateway_id, kinds[type(message)])
    return Incoming(topic, encode(message), message, T0)


def register(
    engine: Engine,
    *,
    region: str = "Pune-West",
    capacity_kw: float = 500.0,
    gateways: dict[str, Sequence[str]] | None = None,
) -> None:
    """Register a region and, optionally, gateways with their meters (as an admin would)."""
    with Session(engine) as session:
        if session.get(Region, region) is None:
            session.add(
                Region(
                    name=region, timezone="Asia/Kolkata", capacity_kw=capacity_kw, currency="INR"
                )
            )
            session.flush()
        for gateway_id, meter_ids in (gateways or {}).items():
            session.add(Gateway(gateway_id=gateway_id, region=region))
            session.flush()
            session.add_all(
                Meter(meter_id=m, gateway_id=gateway_id, region=region, installed_at=T0)
                for m in meter_ids
            )
        session.commit()


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    """Run a read query; return its rows."""
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def windows_at(engine: Engine, start: datetime) -> int:
    """How many windows start at ``start`` (through the ORM, so on either backend)."""
    with Session(engine) as session:
        return session.exec(
            select(func.count()).select_from(MeterWindow).where(MeterWindow.window_start == start)
        ).one()


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    """Run a read query; return its single value."""
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)


# -- MQTT side ---------------------------------------------------------------------------------


class SyntheticGateway:
    """A gateway over MQTT: publishes batches, keeps each until acknowledged, resends.

    Like the edge agent, it resends everything unacknowledged on every (re)connect,
    whenever the hub state turns ``online``, and after ``ack_timeout_s``. Use it as an
    async context manager; it reconnects on its own when the broker goes away.
    """

    def __init__(
        self,
        host: str,
        port: int,
        gateway_id: str,
        *,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self.host, self.port, self.gateway_id = host, port, gateway_id
        self.ack_timeout_s = ack_timeout_s
        self.pending: dict[int, tuple[str, bytes]] = {}
        self.sent_at: dict[int, float] = {}
        self.acked: set[int] = set()
        self.rejected: set[int] = set()
        self.acks: list[Ack] = []
        self.ack_log: list[tuple[float, int]] = []
        self.resends = 0
        self.connects = 0
        self.on_ack: Callable[[Ack], None] | None = None
        """Called as each ack arrives, before the gateway forgets the batches."""
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def __aenter__(self) -> SyntheticGateway:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self._connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"test-{self.gateway_id}-{id(self):x}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    timeout=5.0,
                ) as client:
                    await client.subscribe(
                        [(gateway_topic(self.gateway_id, TopicKind.ACK), 1), (hub_state_topic(), 1)]
                    )
                    self._client = client
                    self.connects += 1
                    self._connected.set()
                    async with asyncio.TaskGroup() as tasks:
                        tasks.create_task(self._receive(client))
                        tasks.create_task(self._timeouts(client))
                        tasks.create_task(self._resend_all(client))
            except* aiomqtt.MqttError:
                pass
            self._client = None
            self._connected.clear()
            await asyncio.sleep(0.2)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = (
                bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
            )
            if message.topic.value == hub_state_topic():
                state = decode(payload, HubState)
                if state.state is ConnectionState.ONLINE:
                    asyncio.get_running_loop().create_task(self._resend_all(client))
                continue
            ack = decode(payload, Ack)
            self.acks.append(ack)
            if self.on_ack is not None:
                self.on_ack(ack)
            now = time.monotonic()
            for seq in ack.seqs:
                self.acked.add(seq)
                self.ack_log.append((now, seq))
                self.pending.pop(seq, None)
            for seq in ack.rejected:
                self.rejected.add(seq)
                self.pending.pop(seq, None)

    async def _timeouts(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(min(self.ack_timeout_s, 1.0))
            cutoff = time.monotonic() - self.ack_timeout_s
            for seq in [s for s, at in self.sent_at.items() if at < cutoff and s in self.pending]:
                await self._publish(client, seq, resend=True)

    async def _resend_all(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            for seq in sorted(self.pending):
                await self._publish(client, seq, resend=True)

    async def _publish(self, client: aiomqtt.Client, seq: int, *, resend: bool) -> None:
        if seq not in self.pending:
            return
        topic, payload = self.pending[seq]
        self.sent_at[seq] = time.monotonic()
        self.resends += resend
        await client.publish(topic, payload, qos=1)

    async def send(self, message: WindowBatch | EventBatch) -> None:
        """Keep ``message`` until acknowledged; publish it now if connected."""
        kind = TopicKind.WINDOWS if isinstance(message, WindowBatch) else TopicKind.EVENTS
        self.pending[message.seq] = (gateway_topic(self.gateway_id, kind), encode(message))
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._publish(client, message.seq, resend=False)

    async def publish_raw(self, kind: TopicKind, payload: bytes, *, retain: bool = False) -> None:
        """Publish anything on one of this gateway's topics, fire and forget."""
        async with asyncio.timeout(10):
            await self._connected.wait()
        assert self._client is not None
        await self._client.publish(
            gateway_topic(self.gateway_id, kind), payload, qos=1, retain=retain
        )

    async def wait_settled(self, seqs: Iterable[int], *, within: float = 20.0) -> None:
        """Wait until every seq of ``seqs`` was acknowledged (committed or rejected)."""
        wanted = set(seqs)
        await wait_for(
            lambda: wanted <= self.acked | self.rejected,
            within=within,
            what=f"{self.gateway_id} acks of {sorted(wanted - self.acked - self.rejected)[:10]}",
        )


# -- windows through the ingest store ---------------------------------------------------------

_SEQS = itertools.count(1)


def wavy(i: int) -> float:
    """A power profile in kW that imports most of the time and exports now and then."""
    return round(1.5 + 2.5 * math.sin(i / 37.0) + (i * 7919 % 100) / 100.0 - 0.3, 3)


def series(
    meter_id: str,
    start: datetime,
    count: int,
    power: Callable[[int], float] | float = wavy,
    *,
    seconds: int = 60,
    partial_every: int = 0,
) -> list[Window]:
    """``count`` consecutive windows with continuous counters (every ``partial_every``-th partial).

    ``power`` is a constant or the power of the ``i``-th window, kW.
    """
    imported, exported = 1000.0, 100.0
    windows = []
    for i in range(count):
        kw = power(i) if callable(power) else power
        delta_in, delta_out = max(kw, 0.0) * seconds / 3600, max(-kw, 0.0) * seconds / 3600
        imported += delta_in
        exported += delta_out
        window = make_window(
            meter_id,
            start + i * timedelta(seconds=seconds),
            import_kwh=imported,
            import_delta_kwh=delta_in,
            export_kwh=exported,
            export_delta_kwh=delta_out,
            power_kw=kw,
            window_seconds=seconds,
        )
        if partial_every and i % partial_every == partial_every - 1:
            window = Window.model_validate(
                window.model_dump()
                | {"samples_got": seconds // 3, "quality": (QualityFlag.PARTIAL,)}
            )
        windows.append(window)
    return windows


def store_windows(store: Store, clock: Clock, gateway_id: str, windows: Sequence[Window]) -> None:
    """Commit ``windows`` through the ingest store (so rollups and regional load are filled),
    with the store's ``clock`` moved past their end."""
    latest = max(w.window_start + timedelta(seconds=w.window_seconds) for w in windows)
    clock.now = max(clock.now, latest)
    size = limits.MAX_WINDOWS_PER_BATCH
    for i in range(0, len(windows), size):
        chunk = windows[i : i + size]
        result = store.commit([incoming(window_batch(gateway_id, next(_SEQS), chunk))])
        assert result.windows_stored == len(chunk)

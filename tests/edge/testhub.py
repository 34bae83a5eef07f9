"""A small test hub that acknowledges batches end to end, plus helpers for the agent's e2e tests.

Import it from a test module of this folder after putting the folder on
``sys.path`` (pytest runs with ``--import-mode=importlib``)::

    sys.path.insert(0, str(Path(__file__).parent))
    from testhub import AckingHub

:class:`AckingHub` is an async context manager around one aiomqtt client that
reconnects on its own (a broker restart does not end it). On every connect it
subscribes to the windows, events, birth and state of every gateway, then
publishes ``HubState(online)`` retained (its will is ``offline``), so an edge
sees it only once the hub can hear it. It decodes every message with
``decode_message``, stores windows keyed by ``(meter_id, window_start)``
(counting raw deliveries and duplicates) and events keyed by
``(meter_id, kind, at)``, and acknowledges each batch's seq after storing it.
Acks of messages that arrive together are sent together, as a real hub would.

``pause_acks()`` stops acknowledging (batches are still stored and counted);
``resume_acks()`` acknowledges everything received meanwhile and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import httpx

from segs.edge.agent import Agent
from segs.edge.config import EdgeSettings
from segs.protocol import (
    Ack,
    ConnectionState,
    DecodeError,
    EventBatch,
    GatewayBirth,
    GatewayState,
    HubState,
    MeterEvent,
    ResendCommand,
    TopicKind,
    Window,
    WindowBatch,
    decode_message,
    encode,
    gateway_topic,
    hub_state_topic,
    subscription,
)
from segs.sim.app import Simulator
from segs.sim.config import ControlConfig, quick_config

__all__ = [
    "AckingHub",
    "Delivery",
    "edge_settings",
    "edge_toml",
    "energy_consistent",
    "gaps",
    "make_window",
    "outbox_rows",
    "running_sim",
    "starts",
    "wait_for",
]

_ACK_BATCH = 200


@dataclass(frozen=True)
class Delivery:
    """One batch as the hub received it."""

    gateway_id: str
    seq: int
    kind: TopicKind
    historical: bool
    items: int
    received: float
    """``time.monotonic()`` at arrival."""


class AckingHub:
    """A test hub on ``host:port``; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        hub_id: str = "hub-test",
        acks: bool = True,
        reconnect_s: float = 0.1,
    ) -> None:
        self.host = host
        self.port = port
        self.hub_id = hub_id
        self.reconnect_s = reconnect_s
        self.windows: dict[tuple[str, datetime], Window] = {}
        self.window_deliveries = 0
        """Windows received, duplicates included."""
        self.duplicates = 0
        """Windows received that the hub already had."""
        self.events: dict[tuple[str, str, datetime], MeterEvent] = {}
        self.event_arrivals: dict[tuple[str, str, datetime], float] = {}
        """Monotonic time each event first arrived."""
        self.deliveries: Counter[int] = Counter()
        """Seq → how many times it arrived."""
        self.log: list[Delivery] = []
        self.births: list[GatewayBirth] = []
        self.states: list[GatewayState] = []
        self.undecodable = 0
        self.acked: set[int] = set()
        self.connects = 0
        self._acking = acks
        self._unacked: dict[str, set[int]] = defaultdict(set)
        self._pending_acks: dict[str, list[int]] = defaultdict(list)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="acking-hub")
        async with asyncio.timeout(10):
            await self._connected.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_connected(self, within: float = 10.0) -> None:
        """Wait until the hub is connected (after a broker restart, say)."""
        async with asyncio.timeout(within):
            await self._connected.wait()

    async def _run(self) -> None:
        while True:
            will = aiomqtt.Will(
                hub_state_topic(),
                encode(HubState(hub_id=self.hub_id, state=ConnectionState.OFFLINE)),
                qos=1,
                retain=True,
            )
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.hub_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    will=will,
                    timeout=5,
                ) as client:
                    await client.subscribe(
                        [
                            (subscription(TopicKind.WINDOWS), 1),
                            (subscription(TopicKind.EVENTS), 1),
                            (subscription(TopicKind.GATEWAY_BIRTH), 1),
                            (subscription(TopicKind.GATEWAY_STATE), 1),
                        ]
                    )
                    self._client = client
                    await self.announce(ConnectionState.ONLINE)
                    self.connects += 1
                    self._connected.set()
                    async for message in client.messages:
                        self._handle(message.topic.value, message.payload)
                        if len(client.messages) == 0 or self._pending_count() >= _ACK_BATCH:
                            await self._flush_acks(client)
            except aiomqtt.MqttError:
                pass
            self._client = None
            self._connected.clear()
            self._pending_acks.clear()  # lost with the connection; the edge resends
            await asyncio.sleep(self.reconnect_s)

    # --- what tests call ----------------------------------------------------------------------

    def pause_acks(self) -> None:
        """Keep storing batches but acknowledge none of them."""
        self._acking = False

    async def resume_acks(self) -> None:
        """Acknowledge everything received while paused, then every batch again."""
        self._acking = True
        for gateway, seqs in self._unacked.items():
            self._pending_acks[gateway].extend(sorted(seqs))
        self._unacked.clear()
        if self._client is not None:
            await self._flush_acks(self._client)

    async def announce(self, state: ConnectionState) -> None:
        """Publish the hub's state (retained), as the real hub does on connect."""
        client = self._require_client()
        payload = HubState(hub_id=self.hub_id, state=state, at=datetime.now(UTC))
        await client.publish(hub_state_topic(), encode(payload), qos=1, retain=True)

    async def send_resend(self, gateway_id: str, from_seq: int, to_seq: int) -> None:
        """Send a ``resend`` command to ``gateway_id``."""
        command = ResendCommand(
            command_id=f"cmd-{time.monotonic_ns()}",
            issued_at=datetime.now(UTC),
            from_seq=from_seq,
            to_seq=to_seq,
        )
        client = self._require_client()
        await client.publish(gateway_topic(gateway_id, TopicKind.COMMAND), encode(command), qos=1)

    async def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish anything (for tests of bad input)."""
        await self._require_client().publish(topic, payload, qos=1, retain=retain)

    def windows_of(self, meter_id: str) -> list[Window]:
        """The windows of ``meter_id``, by window start."""
        found = [w for (meter, _), w in self.windows.items() if meter == meter_id]
        return sorted(found, key=lambda w: w.window_start)

    def events_of(self, meter_id: str, kind: str | None = None) -> list[MeterEvent]:
        """The events of ``meter_id`` (of ``kind``), by time."""
        found = [e for (m, k, _), e in self.events.items() if m == meter_id and kind in (None, k)]
        return sorted(found, key=lambda e: e.at)

    @property
    def seqs(self) -> set[int]:
        """Every seq received."""
        return set(self.deliveries)

    # --- internals ----------------------------------------------------------------------------

    def _require_client(self) -> aiomqtt.Client:
        if self._client is None:
            raise RuntimeError("the test hub is not connected")
        return self._client

    def _pending_count(self) -> int:
        return sum(len(seqs) for seqs in self._pending_acks.values())

    def _handle(self, topic: str, payload: object) -> None:
        if not isinstance(payload, bytes | bytearray) or not payload:
            return  # a cleared retained message
        try:
            message = decode_message(topic, payload).payload
        except DecodeError:
            self.undecodable += 1
            return
        now = time.monotonic()
        if isinstance(message, WindowBatch):
            for window in message.windows:
                key = (window.meter_id, window.window_start)
                self.window_deliveries += 1
                if key in self.windows:
                    self.duplicates += 1
                else:
                    self.windows[key] = window
            self._received(message.gateway_id, message.seq, TopicKind.WINDOWS, message, now)
        elif isinstance(message, EventBatch):
            for event in message.events:
                key = (event.meter_id, event.kind.value, event.at)
                if key not in self.events:
                    self.events[key] = event
                    self.event_arrivals[key] = now
            self._received(message.gateway_id, message.seq, TopicKind.EVENTS, message, now)
        elif isinstance(message, GatewayBirth):
            self.births.append(message)
        elif isinstance(message, GatewayState):
            self.states.append(message)

    def _received(
        self,
        gateway_id: str,
        seq: int,
        kind: TopicKind,
        message: WindowBatch | EventBatch,
        now: float,
    ) -> None:
        items = len(message.windows) if isinstance(message, WindowBatch) else len(message.events)
        historical = message.historical if isinstance(message, WindowBatch) else False
        self.deliveries[seq] += 1
        self.log.append(Delivery(gateway_id, seq, kind, historical, items, now))
        if self._acking:
            self._pending_acks[gateway_id].append(seq)
        else:
            self._unacked[gateway_id].add(seq)

    async def _flush_acks(self, client: aiomqtt.Client) -> None:
        pending, self._pending_acks = self._pending_acks, defaultdict(list)
        for gateway, seqs in pending.items():
            unique = sorted(set(seqs))
            for start in range(0, len(unique), 5000):
                ack = Ack(
                    gateway_id=gateway,
                    seqs=tuple(unique[start : start + 5000]),
                    acked_at=datetime.now(UTC),
                )
                await client.publish(gateway_topic(gateway, TopicKind.ACK), encode(ack), qos=1)
                self.acked.update(ack.seqs)


# --- helpers for the agent's tests ---------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], object], *, within: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until true; after ``within`` s fail with an error naming ``what``."""
    try:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 - conditions on other objects' state
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"waited {within} s in vain for {what}") from None


def _buses_and_meters(sim: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    buses = [
        {
            "kind": "tcp",
            "name": bus.id,
            "host": "127.0.0.1",
            "port": sim.bus_port(bus.id),
            "timeout_s": 0.3,
        }
        for bus in sim.config.buses
    ]
    meters = [
        {"id": meter.id, "profile": meter.profile, "bus": meter.bus, "unit": meter.unit_id}
        for meter in sim.config.meters
    ]
    return buses, meters


def edge_settings(
    data_dir: Path,
    *,
    sim: Any,
    mqtt_url: str,
    gateway_id: str = "gw-test-01",
    window_seconds: int = 2,
    poll_interval_s: float = 0.25,
    **overrides: Any,
) -> EdgeSettings:
    """Settings for an agent that reads every meter of the running simulator ``sim``."""
    buses, meters = _buses_and_meters(sim)
    values: dict[str, Any] = {
        "gateway_id": gateway_id,
        "region": "region-test",
        "window_seconds": window_seconds,
        "poll_interval_s": poll_interval_s,
        "data_dir": data_dir,
        "mqtt": {"url": mqtt_url},
        "buses": buses,
        "meters": meters,
        "retries": 1,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 1.0,
        "ack_timeout_s": 3.0,
        **overrides,
    }
    return EdgeSettings(**values)


def edge_toml(
    data_dir: Path,
    *,
    sim: Any,
    mqtt_url: str,
    gateway_id: str = "gw-test-01",
    window_seconds: int = 2,
    poll_interval_s: float = 0.25,
    ack_timeout_s: float = 3.0,
) -> str:
    """The same settings as :func:`edge_settings`, as an ``edge.toml`` text."""
    buses, meters = _buses_and_meters(sim)
    top = {
        "gateway_id": gateway_id,
        "region": "region-test",
        "window_seconds": window_seconds,
        "poll_interval_s": poll_interval_s,
        "data_dir": str(data_dir),
        "retries": 1,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 1.0,
        "ack_timeout_s": ack_timeout_s,
    }
    lines = [_toml_pairs(top), "[mqtt]", _toml_pairs({"url": mqtt_url})]
    lines += [f"[[buses]]\n{_toml_pairs(bus)}" for bus in buses]
    lines += [f"[[meters]]\n{_toml_pairs(meter)}" for meter in meters]
    return "\n".join(lines)


def _toml_pairs(values: dict[str, Any]) -> str:
    # JSON strings and numbers are valid TOML values.
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def outbox_rows(data_dir: Path) -> list[tuple[int, str, int, int]]:
    """``(seq, kind, items, attempts)`` of every batch in the agent's outbox file."""
    path = data_dir / "outbox.db"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return [
            (int(seq), str(kind), int(items), int(attempts))
            for seq, kind, items, attempts in conn.execute(
                "SELECT seq, kind, items, attempts FROM batches ORDER BY seq"
            )
        ]


def energy_consistent(windows: Sequence[Window], *, tolerance: float = 1e-6) -> list[str]:
    """Problems with one meter's consecutive windows: deltas must sum to counter differences.

    For each pair of consecutive windows the later one's import and export deltas
    must equal the counter difference (which also holds across gaps and restarts,
    since a window's delta runs from the previous stored window's counters).
    """
    problems: list[str] = []
    for before, after in itertools.pairwise(windows):
        for name in ("import", "export"):
            delta = getattr(after, f"{name}_delta_kwh")
            diff = getattr(after, f"{name}_kwh") - getattr(before, f"{name}_kwh")
            if abs(delta - diff) > tolerance * max(1.0, abs(diff)):
                problems.append(
                    f"{after.meter_id} {after.window_start:%H:%M:%S}: {name} delta {delta!r} "
                    f"!= counter difference {diff!r}"
                )
    return problems


def make_window(meter: int, start: datetime, *, window_seconds: int = 60) -> Window:
    """A plausible window of meter ``MTR-{meter:08d}`` starting at ``start``."""
    return Window(
        meter_id=f"MTR-{meter:08d}",
        window_start=start,
        window_seconds=window_seconds,
        import_kwh=1000.0 + meter,
        export_kwh=0.0,
        import_delta_kwh=0.05,
        export_delta_kwh=0.0,
        power_min_kw=2.9,
        power_avg_kw=3.0,
        power_max_kw=3.1,
        voltage_avg_v=231.0,
        current_avg_a=4.5,
        power_factor_avg=0.97,
        frequency_avg_hz=50.0,
        samples_got=60,
        samples_expected=60,
    )


@contextlib.asynccontextmanager
async def running_sim(
    meters: int = 3,
    *,
    profile: str = "mixed",
    per_bus: int = 247,
    update_interval: float = 0.25,
    control: bool = False,
) -> AsyncIterator[Simulator]:
    """A simulator on free ports running on real time, without PV (so nothing exports)."""
    config = quick_config(
        meters,
        0,
        profile=profile,
        per_bus=per_bus,
        update_interval=update_interval,
        control=ControlConfig(port=0, enabled=control),
        prosumer_share=0.0,
        seed=7,
    )
    async with Simulator(config) as sim:
        yield sim


def starts(windows: Sequence[Window]) -> list[float]:
    """The windows' starts, epoch seconds."""
    return [w.window_start.timestamp() for w in windows]


def gaps(windows: Sequence[Window]) -> list[float]:
    """Window starts (epoch s) missing between a meter's first and last window."""
    got = starts(windows)
    width = windows[0].window_seconds
    present = set(got)
    return [float(t) for t in range(int(got[0]), int(got[-1]), width) if t not in present]


@contextlib.asynccontextmanager
async def running_agent(settings: EdgeSettings, **kwargs: Any) -> AsyncIterator[Agent]:
    """The agent as a task; stopped at the end, when it must exit with 0 within 10 s."""
    kwargs.setdefault("mqtt_backoff_initial_s", 0.2)
    kwargs.setdefault("mqtt_backoff_max_s", 1.0)
    agent = Agent(settings, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
        assert not task.done(), "the agent stopped on its own"
    finally:
        stop.set()
        async with asyncio.timeout(10):
            code = await task
    assert code == 0


async def sleep_until(epoch: float) -> None:
    """Sleep until the wall clock reads ``epoch``."""
    await asyncio.sleep(max(0.0, epoch - time.time()))


def truth_power_and_voltage(state: dict[str, Any]) -> tuple[float, float]:
    """The true total power (kW) and mean phase voltage (V) of a meter's state."""
    values = state["values"]
    phases = range(1, state["phases"] + 1)
    power = values.get("power_total")
    if power is None:
        power = sum(values[f"power_l{n}"] for n in phases)
    voltage = sum(values[f"voltage_l{n}"] for n in phases) / len(phases)
    return float(power), float(voltage)


@dataclass(frozen=True)
class Truth:
    """What the simulator really did in each window of a stepped run."""

    states: dict[tuple[str, float], dict[str, Any]]
    """The control API's state of each (meter, window start), read mid-window."""
    clean: list[float]
    """Window starts stepped on time, so no poll of the window saw a stale state."""
    last: float
    """The last window start."""


async def step_windows(
    sim: Simulator, meters: Sequence[str], *, window_s: int, windows: int = 5
) -> Truth:
    """Move the physics once per window, 0.1 s before it starts; record the truth mid-window.

    The simulator must run with a long ``update_interval`` so only these steps
    move it: every poll of a window then reads the same state and the truth is exact.
    """
    assert sim.control is not None
    states: dict[tuple[str, float], dict[str, Any]] = {}
    clean: list[float] = []
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim.control.port}", timeout=5)
    async with api:
        first = math.ceil(time.time() / window_s) * window_s + window_s
        for k in range(windows):
            boundary = first + k * window_s
            await sleep_until(boundary - 0.1)
            sim.update()
            if time.time() < boundary - 0.03:  # on time: no poll of the window is stale
                clean.append(boundary)
            await sleep_until(boundary + window_s / 2)
            for meter in meters:
                states[meter, boundary] = (await api.get(f"/meters/{meter}")).json()
    return Truth(states, clean, first + (windows - 1) * window_s)

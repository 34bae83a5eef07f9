"""The edge agent: the single owner of the pollers, the aggregator, the outbox and the MQTT link.

``segs edge run --config edge.toml`` calls :func:`run`, which runs an
:class:`Agent` until SIGTERM or SIGINT and returns the exit code::

    exit_code = asyncio.run(run(load_settings(Path("edge.toml"))))

In process (tests, tools), without signal handlers::

    stop = asyncio.Event()
    agent = Agent(settings)
    task = asyncio.create_task(agent.run(stop))
    ...
    stop.set()
    assert await task == 0

What runs, as tasks of one :class:`asyncio.TaskGroup`:

* one :class:`~segs.edge.poller.BusPoller` per bus. Each sample goes to the
  :class:`~segs.edge.aggregate.Aggregator` and the
  :class:`~segs.edge.events.EventDetector`; offline/online changes too;
* **events**: events are stored in the outbox as an event batch as soon as they
  happen (the events of one poll round, collected for a few tens of
  milliseconds, share one batch), and the publisher is woken;
* **ticker**: closes due windows shortly after each window ends (``grace`` = one
  poll interval), splits them into batches of at most ``max_windows_per_batch``
  windows, stores them (durable once stored) and writes each meter's last
  counters to ``data_dir/counters.json`` (:mod:`segs.edge.counters`);
* the :class:`~segs.edge.link.MqttLink` (connection, birth, state, will,
  subscriptions, reconnects) and the :class:`~segs.edge.publisher.Publisher`
  (live batches first, paced backlog, resends, acks);
* **stats**: every ``stats_interval_s`` logs the outbox (pending, bytes, oldest
  age, drops) at INFO and republishes the retained ``state`` with those stats.

At start the aggregator is seeded with the counters of each meter's last stored
window, so the first window after a restart has a delta covering the downtime.

On SIGTERM/SIGINT (or ``stop`` set) every task is cancelled, the link publishes
``state: offline`` and disconnects (at most a second), buffered events are
stored, and the outbox is closed. Windows still open are not published: their
samples are lost, but the counters carry their energy into the next run's first
window. :func:`run` then returns 0; it returns 1 when the outbox cannot be
opened or a task fails unexpectedly.

Nothing blocks the loop for long: every outbox call is one short SQLite
transaction (one fsync per stored batch).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

from segs import __version__
from segs.edge.aggregate import Aggregator
from segs.edge.config import EdgeSettings
from segs.edge.counters import DEFAULT_FILENAME as COUNTERS_FILENAME
from segs.edge.counters import CounterMark, CounterStore, merge_windows
from segs.edge.events import EventDetector
from segs.edge.exceptions import CorruptBatchError, OutboxError
from segs.edge.link import LinkError, MqttLink
from segs.edge.memory import trim_heap
from segs.edge.outbox import (
    DEFAULT_FILENAME as OUTBOX_FILENAME,
)
from segs.edge.outbox import (
    BatchKind,
    Outbox,
    OutboxLimits,
    split_events,
    split_windows,
)
from segs.edge.poller import BusPoller
from segs.edge.publisher import Publisher
from segs.edge.samples import Sample, from_epoch
from segs.protocol import (
    CounterReset,
    GatewayBirth,
    MeterEvent,
    MeterInfo,
    MeterOffline,
    MeterOnline,
    OutboxStats,
    Window,
    WindowBatch,
)

__all__ = ["Agent", "run"]

_log = logging.getLogger(__name__)

_CLOSE_MARGIN_S: Final = 0.02
"""How long after a window's end plus grace the ticker closes it."""
_MAX_TICK_S: Final = 1.0
"""The ticker looks at the clock at least this often (a stepped clock is noticed)."""
_MAX_EVENT_DELAY_S: Final = 0.1
"""Longest time events wait to share a batch with the other events of the same poll round."""


class Agent:
    """Everything the edge agent runs, for one :class:`EdgeSettings`; see the module docstring.

    The constructor builds the parts but starts nothing and does no I/O; :meth:`run`
    opens the outbox, connects and runs the tasks. ``clock`` gives epoch seconds
    (UTC) to the pollers, the aggregator, the outbox and the payloads. The other
    keyword arguments tune delivery (see :class:`~segs.edge.publisher.Publisher`)
    and the MQTT reconnect backoff (tests shorten them).
    """

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        clock: Callable[[], float] = time.time,
        stats_interval_s: float = 60.0,
        max_inflight: int = 16,
        burst: int = 8,
        mqtt_backoff_initial_s: float = 1.0,
        mqtt_backoff_max_s: float = 60.0,
    ) -> None:
        if stats_interval_s <= 0.0:
            raise ValueError(f"stats_interval_s must be positive, got {stats_interval_s!r}")
        self.settings = settings
        self._clock = clock
        self._stats_interval_s = stats_interval_s
        self._event_delay_s = min(_MAX_EVENT_DELAY_S, settings.poll_interval_s / 4)
        self._config_hash = settings.config_hash()
        self._meter_infos = tuple(
            MeterInfo(meter_id=m.id, profile=m.load_profile().id, bus=m.bus, unit_id=m.unit)
            for m in settings.meters
        )
        self._started_at = 0.0
        self._events: list[MeterEvent] = []
        self._events_ready = asyncio.Event()
        self._counters = CounterStore(Path(settings.data_dir) / COUNTERS_FILENAME)
        self._marks: dict[str, CounterMark] = {}
        self.aggregator = Aggregator(
            settings.window_seconds, settings.poll_interval_s, [m.id for m in settings.meters]
        )
        self.detector = EventDetector(
            nominal_v=settings.nominal_voltage_v,
            spike_ratio=settings.spike_ratio,
            voltage_tolerance=settings.voltage_tolerance,
            voltage_rearm_margin=min(0.01, settings.voltage_tolerance / 2),
        )
        self.outbox = Outbox(
            Path(settings.data_dir) / OUTBOX_FILENAME,
            limits=OutboxLimits(
                max_batches=settings.outbox.max_batches, max_bytes=settings.outbox.max_bytes
            ),
            clock=lambda: from_epoch(self._clock()),
        )
        self.publisher = Publisher(
            self.outbox,
            gateway_id=settings.gateway_id,
            window_seconds=settings.window_seconds,
            ack_timeout_s=settings.ack_timeout_s,
            max_inflight=max_inflight,
            burst=burst,
            clock=clock,
        )
        self.link = MqttLink(
            settings.mqtt,
            gateway_id=settings.gateway_id,
            birth=self._birth,
            outbox_stats=self._outbox_stats,
            on_ack=self.publisher.on_ack,
            on_resend=self.publisher.on_resend,
            on_hub_state=self.publisher.on_hub_state,
            on_ready=self.publisher.on_link_ready,
            clock=clock,
            backoff_initial_s=mqtt_backoff_initial_s,
            backoff_max_s=mqtt_backoff_max_s,
        )
        self.pollers: list[BusPoller] = []
        self.errors = 0
        """Unexpected errors caught at the top of the agent's own tasks (bugs; logged)."""

    # --- the run ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; return the exit code (0 after a clean stop)."""
        settings = self.settings
        self._started_at = self._clock()
        try:
            self.outbox.open()
        except OutboxError as exc:
            _log.critical("cannot open the outbox: %s", exc)
            return 1
        try:
            self._seed_counters()
            stats = self.outbox.stats()
            _log.info(
                "edge agent %s starting: gateway %s, %d meters on %d buses, %d s windows, "
                "polled every %g s; outbox %s: %d batches pending, %d dropped so far",
                __version__,
                settings.gateway_id,
                len(settings.meters),
                len(settings.buses),
                settings.window_seconds,
                settings.poll_interval_s,
                self.outbox.path,
                stats.pending_batches,
                stats.dropped_batches,
            )
            self.pollers = []
            async with AsyncExitStack() as stack:
                for bus in settings.buses:
                    if not settings.meters_on(bus.name):
                        continue
                    poller = BusPoller.from_settings(
                        settings,
                        bus.name,
                        on_sample=self._on_sample,
                        on_offline=self._on_offline,
                        on_online=self._on_online,
                        clock=self._clock,
                    )
                    self.pollers.append(await stack.enter_async_context(poller))
                # What start-up freed (config, profiles, outbox scan) leaves the RSS (issue 4).
                gc.collect()
                trim_heap()
                await self._run_tasks(stop)
        except Exception:  # noqa: BLE001 - the agent's top level: log, exit non-zero
            _log.critical("the edge agent failed", exc_info=True)
            return 1
        finally:
            self._shutdown()
        return 0

    async def _run_tasks(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(poller.run(), name=f"poll-{poller.bus.name}")
                for poller in self.pollers
            ]
            tasks += [
                group.create_task(self._ticker(), name="windows"),
                group.create_task(self._event_writer(), name="events"),
                group.create_task(self.link.run(), name="mqtt"),
                group.create_task(self.publisher.run(self.link), name="publisher"),
                group.create_task(self._stats_loop(), name="stats"),
            ]
            await stop.wait()
            _log.info("stopping")
            for task in tasks:
                task.cancel()

    def _shutdown(self) -> None:
        if not self.outbox.is_open:
            return
        try:
            self._write_events()
            stats = self.outbox.stats()
        finally:
            self.outbox.close()
        _log.info(
            "stopped; outbox: %d batches pending (%d bytes), %d dropped in total",
            stats.pending_batches,
            stats.pending_bytes,
            stats.dropped_batches,
        )

    # --- counters across restarts -------------------------------------------------------------

    def _seed_counters(self) -> None:
        """Seed the aggregator with each meter's last stored counters."""
        seq, marks = self._counters.load()
        # Window batches stored after the file was last written (a crash in between).
        cursor = seq + 1
        while True:
            page = self.outbox.pending(from_seq=cursor, limit=100)
            if not page:
                break
            for batch in page:
                if batch.kind is not BatchKind.WINDOWS:
                    continue
                try:
                    message = self.outbox.build_message(
                        batch, gateway_id=self.settings.gateway_id, historical=True
                    )
                except CorruptBatchError:
                    continue
                if isinstance(message, WindowBatch):
                    marks = merge_windows(marks, message.windows)
            cursor = page[-1].seq + 1
        known = set(self.aggregator.meters)
        seeded = 0
        for meter_id, mark in marks.items():
            if meter_id not in known:
                continue
            try:
                self.aggregator.seed_counters(meter_id, mark.import_kwh, mark.export_kwh, mark.at)
            except ValueError as exc:
                _log.warning("cannot carry the counters of meter %s over: %s", meter_id, exc)
                continue
            seeded += 1
        self._marks = {m: v for m, v in marks.items() if m in known}
        if seeded:
            _log.info("carried the energy counters of %d meters over from the last run", seeded)

    # --- samples, events, windows -------------------------------------------------------------

    def _on_sample(self, sample: Sample) -> None:
        self.aggregator.add(sample)
        events = self.detector.observe(sample)
        if events:
            self._queue_events(events)

    def _on_offline(self, meter_id: str, at: float, error: str) -> None:
        self.aggregator.mark_offline(meter_id, at)
        event = self.detector.offline(meter_id, at, error)
        if event is not None:
            self._queue_events([event])

    def _on_online(self, meter_id: str, at: float) -> None:
        event = self.detector.online(meter_id, at)
        if event is not None:
            self._queue_events([event])

    def _queue_events(self, events: Sequence[MeterEvent]) -> None:
        for event in events:
            if isinstance(event, CounterReset):
                _log.warning(
                    "meter %s: energy counter reset (import %.3f -> %.3f kWh)",
                    event.meter_id,
                    event.previous_import_kwh,
                    event.import_kwh,
                )
            elif isinstance(event, MeterOnline | MeterOffline):
                _log.debug("meter %s: %s", event.meter_id, event.kind.value)
            else:
                _log.info("meter %s: %s", event.meter_id, event.model_dump_json(exclude_none=True))
        self._events.extend(events)
        self._events_ready.set()

    async def _event_writer(self) -> None:
        """Store queued events as soon as the current poll round has delivered its events."""
        while True:
            await self._events_ready.wait()
            await asyncio.sleep(self._event_delay_s)
            self._events_ready.clear()
            try:
                self._write_events()
            except Exception:  # noqa: BLE001 - the task's top level: log, count, go on
                self.errors += 1
                _log.exception("storing events failed")

    def _write_events(self) -> None:
        events, self._events = self._events, []
        if not events:
            return
        for chunk in split_events(events):
            try:
                seq = self.outbox.add_events(chunk)
            except OutboxError:
                _log.exception("cannot store %d events", len(chunk))
                continue
            self.publisher.notify_new(seq)

    async def _ticker(self) -> None:
        """Close every window shortly after it ends; store and announce the batches."""
        width = self.settings.window_seconds
        grace = self.aggregator.grace_s
        while True:
            now = self._clock()
            try:
                windows = self.aggregator.close_due(now)
                if windows:
                    self._store_windows(windows)
                    trim_heap()  # closing and encoding the windows freed many small blocks
            except Exception:  # noqa: BLE001 - the task's top level: log, count, go on
                self.errors += 1
                _log.exception("closing windows failed")
            next_close = (math.floor((now - grace) / width) + 1) * width + grace + _CLOSE_MARGIN_S
            await asyncio.sleep(min(max(next_close - now, 0.001), _MAX_TICK_S))

    def _store_windows(self, windows: list[Window]) -> None:
        stored: list[Window] = []
        for chunk in split_windows(windows, max_items=self.settings.max_windows_per_batch):
            try:
                seq = self.outbox.add_windows(chunk)
            except OutboxError:
                _log.exception("cannot store %d windows", len(chunk))
                continue
            stored += chunk
            self.publisher.notify_new(seq)
        _log.debug("stored %d windows", len(stored))
        if stored:
            self._marks = merge_windows(self._marks, stored)
            self._counters.save(self.outbox.last_seq, self._marks)

    # --- presence and stats -------------------------------------------------------------------

    def _outbox_stats(self) -> OutboxStats | None:
        return self.outbox.stats() if self.outbox.is_open else None

    def _birth(self) -> GatewayBirth:
        settings = self.settings
        return GatewayBirth(
            gateway_id=settings.gateway_id,
            region=settings.region,
            agent_version=__version__,
            started_at=from_epoch(self._started_at),
            window_seconds=settings.window_seconds,
            poll_interval_s=settings.poll_interval_s,
            config_hash=self._config_hash,
            meters=self._meter_infos,
            outbox=self.outbox.stats(),
        )

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self._stats_interval_s)
            stats = self.outbox.stats()
            age = stats.oldest_pending_age_s
            _log.info(
                "outbox: %d batches pending (%d bytes), oldest %s; %d batches (%d windows) "
                "dropped in total; MQTT %s; published %d, acked %d, in flight %d",
                stats.pending_batches,
                stats.pending_bytes,
                "-" if age is None else f"{age:.0f} s",
                stats.dropped_batches,
                stats.dropped_windows,
                "connected" if self.link.ready else "not connected",
                self.publisher.stats.published,
                self.publisher.stats.acked,
                self.publisher.inflight,
            )
            if self.link.ready:
                try:
                    await self.link.publish_state()
                except LinkError as exc:
                    _log.debug("could not republish the state: %s", exc)


async def run(
    settings: EdgeSettings,
    *,
    stop: asyncio.Event | None = None,
    handle_signals: bool | None = None,
    clock: Callable[[], float] = time.time,
    stats_interval_s: float = 60.0,
    mqtt_backoff_initial_s: float = 1.0,
    mqtt_backoff_max_s: float = 60.0,
) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop`` is set); return the exit code.

    Signal handlers are installed when ``handle_signals`` is true (default: when
    running in the main thread) and removed afterwards.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals is None:
        handle_signals = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()

    def on_signal(signum: int) -> None:
        _log.info("received %s", signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        agent = Agent(
            settings,
            clock=clock,
            stats_interval_s=stats_interval_s,
            mqtt_backoff_initial_s=mqtt_backoff_initial_s,
            mqtt_backoff_max_s=mqtt_backoff_max_s,
        )
        return await agent.run(stop)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)

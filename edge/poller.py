"""Modbus polling: one task, one connection and one lock per bus.

A :class:`BusPoller` owns one pymodbus client (TCP, or RTU on a serial line) and
reads the meters on that bus with the profile's coalesced block reads. By default
it reads only the registers a :class:`~segs.edge.samples.Sample` is made of
(:data:`SAMPLE_REGISTERS`; :func:`sample_profile` shrinks each planned block to
their span and drops blocks without any): one request per SDM630, SDM120 or
SunSpec 203 instead of the full plan's three, two and two. ``full_profile=True``
reads the whole plan (``segs edge check`` does, so a wrong profile shows up)::

    async with BusPoller.from_settings(settings, "rs485-0", on_sample=agg.add,
                                       on_offline=on_offline) as poller:
        await poller.run()          # until cancelled

Each cycle starts on a multiple of ``poll_interval_s`` on the injected clock and
reads, in order, every meter that is not waiting out a backoff. What can go wrong
and what happens then:

* **a block answers with a Modbus exception or the wrong register count**: that
  block's values are missing (``None`` to :meth:`Profile.decode`, NaN in the
  sample); when *every* block of the meter failed, the read failed;
* **no answer within the bus's ``timeout_s``**: the read failed at once (the
  remaining blocks would time out too);
* **a failed read** is tried again ``retries`` times in the same cycle, after the
  other meters have been read; when it still fails, the meter is **offline**:
  ``on_offline(meter_id, at, error)``, one WARNING line, then exponential backoff
  (``backoff_initial_s`` doubling to ``backoff_max_s``, minus up to 20 % jitter).
  When its backoff expires the meter is tried once (at most one timeout of delay
  for the other meters per backoff step); failures during an outage log at DEBUG.
  The first good read brings it back: ``on_online(meter_id, at)`` and an INFO line
  "recovered after N s". A meter's first answer ever also calls ``on_online``.
* **the bus itself fails** (TCP gateway refuses or drops the connection, serial
  device missing): every meter goes offline (one WARNING for the bus), and the
  poller reconnects with the same backoff; once connected, every meter is read
  at the next cycle. When no meter of a TCP bus answers any more, the poller also
  reconnects, to get past a half-open connection.

Good reads go to ``on_sample(Sample)`` (:func:`segs.edge.samples.sample_from_values`,
stamped with the clock when the meter's read started). Garbage values are not
judged here: :func:`segs.edge.samples.is_impossible` is the consumers' rule.
Nothing but cancellation escapes :meth:`BusPoller.run`; errors are counted in
:attr:`BusPoller.stats`.

RTU: pymodbus 3.16 keeps no inter-frame silence of its own, so the poller waits
the bus's ``frame_gap_s`` between the end of one exchange and the next request.

pymodbus logs every timeout and every late answer it discards at ERROR. The
poller reports those itself (first error loud, repeats at DEBUG), so entering a
poller sets the ``pymodbus`` logger to CRITICAL unless a level was set for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from segs.edge.config import EdgeSettings, MeterConfig, RtuBus, TcpBus
from segs.edge.exceptions import (
    BadAnswerError,
    BusConnectionError,
    ModbusError,
    ModbusExceptionError,
    NoAnswerError,
)
from segs.edge.samples import Sample, sample_from_values
from segs.protocol.profiles import Block, Profile

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

__all__ = [
    "EXCEPTION_NAMES",
    "SAMPLE_REGISTERS",
    "BusPoller",
    "MeterRead",
    "MeterStatus",
    "PollStats",
    "describe_exception",
    "sample_profile",
]

_log = logging.getLogger(__name__)

EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
"""Modbus exception codes and their names in the Modbus application protocol spec."""

_JITTER: Final = 0.2
"""A backoff waits between 80 % and 100 % of its nominal length, so meters that failed
together do not all come back to the bus in the same cycle."""

_NO_DISCONNECT: Final = 2**31
"""pymodbus drops a TCP connection after a few unanswered requests in a row. A dead meter
behind a live gateway is not a dead connection, so the poller decides that itself."""

SampleCallback = Callable[[Sample], object]
_Failure = tuple["_Meter", ModbusError, float]
"""A meter whose read failed in this cycle, the error, and when its first try started."""
OfflineCallback = Callable[[str, float, str], object]
OnlineCallback = Callable[[str, float], object]


SAMPLE_REGISTERS: Final = frozenset(
    {
        "power_total",
        "power_factor_total",
        "frequency",
        "import_energy",
        "export_energy",
        *(
            f"{quantity}_l{phase}"
            for quantity in ("voltage", "current", "power", "power_factor")
            for phase in (1, 2, 3)
        ),
    }
)
"""The canonical registers :func:`segs.edge.samples.sample_from_values` reads."""


def sample_profile(profile: Profile) -> Profile:
    """The part of ``profile`` a :class:`Sample` needs, and its read plan.

    Keeps the registers named in :data:`SAMPLE_REGISTERS` and the SunSpec scale
    factors they use. Each block of the profile's plan that holds some of them
    shrinks to the span from the first to the last; the others are not read. So
    every read is a sub-range of one the profile plans (a device answers it the
    same way) and there are never more of them. Decoding gives the same sample.
    """
    wanted = {reg.name for reg in profile.registers if reg.name in SAMPLE_REGISTERS}
    wanted |= {
        reg.scale_factor
        for reg in profile.registers
        if reg.name in wanted and reg.scale_factor is not None
    }
    blocks: list[Block] = []
    for block in profile.blocks:
        kept = tuple(reg for reg in block.registers if reg.name in wanted)
        if kept:
            start = min(reg.address for reg in kept)
            end = max(reg.address + reg.count for reg in kept)
            blocks.append(Block(block.function_code, start, end - start, kept))
    if not blocks:
        return profile
    registers = tuple(reg for block in blocks for reg in block.registers)
    return replace(profile, registers=registers, blocks=tuple(blocks))


def describe_exception(code: int) -> str:
    """``Modbus exception 2 (illegal data address)``."""
    name = EXCEPTION_NAMES.get(code)
    return f"Modbus exception {code}" + (f" ({name})" if name else "")


@dataclass(frozen=True, slots=True)
class MeterRead:
    """The outcome of one read of one meter."""

    meter_id: str
    at: float
    """Clock time when the read started (epoch s)."""
    sample: Sample | None
    """The decoded sample; ``None`` when the read failed."""
    error: str | None = None
    """Why the read failed, or, with a sample, why some of its blocks failed."""

    @property
    def ok(self) -> bool:
        """Every block answered."""
        return self.sample is not None and self.error is None


@dataclass(slots=True)
class MeterStatus:
    """What the poller knows about one meter right now."""

    meter_id: str
    unit: int
    online: bool | None = None
    """``None`` until the first answer or the first declared outage."""
    offline_since: float | None = None
    backoff_s: float = 0.0
    """The current backoff step (nominal, before jitter); 0 while online."""
    retry_at: float = 0.0
    """Clock time of the next try while offline."""
    last_error: str | None = None
    last_sample_at: float | None = None
    reads: int = 0
    """Read attempts, retries and probes included."""
    failures: int = 0
    """Failed read attempts in the current outage (or leading up to it)."""
    probes: int = 0
    """Tries at the end of a backoff in the current outage."""


@dataclass(slots=True)
class PollStats:
    """Counters of one bus poller (monotonic, never reset)."""

    cycles: int = 0
    skipped_ticks: int = 0
    """Poll ticks dropped because a cycle ran more than one interval late."""
    requests: int = 0
    samples: int = 0
    partial_reads: int = 0
    """Reads where some blocks failed but others answered."""
    failed_reads: int = 0
    timeouts: int = 0
    modbus_exceptions: int = 0
    bad_answers: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    callback_errors: int = 0
    errors: int = 0
    """Unexpected errors caught at the top of a cycle (bugs; logged with a traceback)."""
    last_cycle_s: float = 0.0
    max_cycle_s: float = 0.0


@dataclass(slots=True)
class _Meter:
    config: MeterConfig
    profile: Profile
    status: MeterStatus
    blocks: tuple[Block, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = self.profile.blocks


def _raise_if_cancelling() -> None:
    """Honour a cancellation that a library swallowed.

    On Python 3.11, ``asyncio.wait_for`` (pymodbus waits for every answer with it)
    returns the result instead of raising when a cancellation arrives just as the
    answer does; the task would then poll on and never stop. ``cancelling()``
    still counts the request, so the loop checks it before every read.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _quiet_pymodbus() -> None:
    logger = logging.getLogger("pymodbus")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


class BusPoller:
    """Polls the meters of one bus; an async context manager around one pymodbus client.

    ``meters`` are ``(MeterConfig, Profile)`` pairs, all on ``bus``. Callbacks are
    plain functions called from the poll loop (keep them quick; an exception in
    one is logged and counted, never fatal). ``clock`` gives epoch seconds; cycles
    align to its multiples of ``poll_interval_s`` and samples carry its time.
    ``rng`` draws the backoff jitter. ``full_profile`` reads every register of the
    profiles instead of only what a sample needs.
    """

    def __init__(
        self,
        bus: TcpBus | RtuBus,
        meters: Sequence[tuple[MeterConfig, Profile]],
        *,
        poll_interval_s: float = 1.0,
        on_sample: SampleCallback | None = None,
        on_offline: OfflineCallback | None = None,
        on_online: OnlineCallback | None = None,
        clock: Callable[[], float] = time.time,
        retries: int = 2,
        backoff_initial_s: float = 2.0,
        backoff_max_s: float = 300.0,
        rng: random.Random | None = None,
        full_profile: bool = False,
    ) -> None:
        if not 0.0 < poll_interval_s <= 3600.0 or not math.isfinite(poll_interval_s):
            raise ValueError(f"poll_interval_s must be in (0, 3600], got {poll_interval_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not 0.0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got "
                f"{backoff_initial_s!r}, {backoff_max_s!r}"
            )
        for config, _ in meters:
            if config.bus != bus.name:
                raise ValueError(f"meter {config.id!r} is on bus {config.bus!r}, not {bus.name!r}")
        self.bus = bus
        self.poll_interval_s = float(poll_interval_s)
        self.retries = retries
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.stats = PollStats()
        self._meters = [
            _Meter(
                config,
                profile if full_profile else sample_profile(profile),
                MeterStatus(config.id, config.unit),
            )
            for config, profile in meters
        ]
        self._by_id = {meter.config.id: meter for meter in self._meters}
        self._on_sample = on_sample
        self._on_offline = on_offline
        self._on_online = on_online
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._gap = bus.frame_gap_s if isinstance(bus, RtuBus) else 0.0
        self._quiet_until = 0.0
        self._bus_down_since: float | None = None
        self._up = False
        """Connected at the end of the last look: a closed connection now means it was lost."""
        self._answers = 0
        self._silences = 0
        self._bus_backoff_s = 0.0
        self._reconnect_at = 0.0
        self._bus_error = (
            f"cannot connect to {bus.endpoint}"
            if isinstance(bus, TcpBus)
            else f"cannot open {bus.device}"
        )

    @classmethod
    def from_settings(
        cls,
        settings: EdgeSettings,
        bus: str,
        *,
        on_sample: SampleCallback | None = None,
        on_offline: OfflineCallback | None = None,
        on_online: OnlineCallback | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> BusPoller:
        """A poller for bus ``bus`` of ``settings``, with its meters and tunables."""
        return cls(
            settings.bus(bus),
            [(meter, meter.load_profile()) for meter in settings.meters_on(bus)],
            poll_interval_s=settings.poll_interval_s,
            on_sample=on_sample,
            on_offline=on_offline,
            on_online=on_online,
            clock=clock,
            retries=settings.retries,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
            rng=rng,
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Create the client and connect; a bus that is down is retried by :meth:`run`."""
        _quiet_pymodbus()
        bus = self.bus
        if isinstance(bus, TcpBus):
            self._client = AsyncModbusTcpClient(
                bus.host,
                port=bus.port,
                name=bus.name,
                timeout=bus.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        else:
            self._client = AsyncModbusSerialClient(
                bus.device,
                name=bus.name,
                baudrate=bus.baudrate,
                bytesize=bus.bytesize,
                parity=bus.parity,
                stopbits=bus.stopbits,
                timeout=bus.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        self._client.set_max_no_responses(_NO_DISCONNECT)
        await self._ensure_connected()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the connection (cancel the :meth:`run` task first)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- what callers use -----------------------------------------------------------------------

    @property
    def meter_ids(self) -> tuple[str, ...]:
        """The meters of this bus, in polling order."""
        return tuple(meter.config.id for meter in self._meters)

    @property
    def bus_error(self) -> str:
        """What a meter read reports while the bus cannot be reached."""
        return self._bus_error

    @property
    def connected(self) -> bool:
        """Whether the bus connection is open."""
        return self._client is not None and self._client.connected

    def status(self, meter_id: str) -> MeterStatus:
        """What the poller knows about ``meter_id`` (a live object; do not change it)."""
        return self._by_id[meter_id].status

    async def read_meter(self, meter_id: str) -> MeterRead:
        """Read ``meter_id`` once, now: no retry, no callback, no change of its status.

        Connects first when the bus is not connected. For one-off reads
        (``segs edge check``); the poll loop does not use it.
        """
        meter = self._by_id[meter_id]
        client = self._require_client()
        async with self._lock:
            at = self._clock()
            if not client.connected:
                self.stats.connects += 1
                if not await self._connect(client):
                    self.stats.connect_failures += 1
                    return MeterRead(meter_id, at, None, self._bus_error)
            try:
                return await self._read(meter)
            except ModbusError as exc:
                return MeterRead(meter_id, at, None, str(exc))

    async def run(self) -> None:
        """Poll every cycle until cancelled (the one task of this bus)."""
        self._require_client()
        interval = self.poll_interval_s
        loop = asyncio.get_running_loop()
        tick = math.floor(self._clock() / interval)
        while True:
            _raise_if_cancelling()
            now = self._clock()
            due = tick + 1
            current = math.floor(now / interval)
            if current < tick:
                due = current + 1  # the clock stepped back: align to it again
            elif current > due:
                # More than one interval late (a stalled loop, dead meters, a clock step):
                # poll now and drop the ticks in between rather than bursting.
                self.stats.skipped_ticks += current - due
                due = current
            delay = due * interval - now
            if delay > 0:
                await asyncio.sleep(min(delay, interval))
            tick = due
            started = loop.time()
            try:
                await self._cycle()
            except Exception:  # noqa: BLE001 - the task's top level: log, count, keep polling
                self.stats.errors += 1
                _log.exception("bus %s: a poll cycle failed", self.bus.name)
            elapsed = loop.time() - started
            self.stats.cycles += 1
            self.stats.last_cycle_s = elapsed
            self.stats.max_cycle_s = max(self.stats.max_cycle_s, elapsed)

    # --- one cycle ------------------------------------------------------------------------------

    async def _cycle(self) -> None:
        if not await self._ensure_connected():
            return
        self._answers = self._silences = 0
        try:
            failed = await self._first_pass()
            for _ in range(self.retries):
                if not failed:
                    break
                failed = await self._retry(failed)
        except BusConnectionError:
            self._bus_lost(self._clock())
            return
        for meter, error, first_at in failed:
            self._went_offline(meter, error, first_at)
        if (
            isinstance(self.bus, TcpBus)
            and self._silences
            and not self._answers
            and not any(meter.status.online for meter in self._meters)
        ):
            # Nobody on the bus answers: the TCP connection may be half-open (a gateway
            # rebooted without a FIN). Reconnect at the next cycle; it costs one handshake.
            _log.debug("bus %s: no meter answers; reconnecting", self.bus.name)
            self.stats.disconnects += 1
            self._up = False
            self._require_client().close()

    async def _first_pass(self) -> list[_Failure]:
        """Read every meter that is due; probes of offline meters get one try."""
        now = self._clock()
        failed: list[_Failure] = []
        for meter in self._meters:
            status = meter.status
            if status.retry_at - now > self.backoff_max_s:
                status.retry_at = now  # the clock stepped back: do not wait out the step
            if status.online is False and now < status.retry_at:
                continue
            at = self._clock()
            outcome = await self._try(meter)
            if isinstance(outcome, MeterRead):
                self._deliver(meter, outcome)
            elif status.online is False:
                self._still_offline(meter, outcome, at)
            else:
                failed.append((meter, outcome, at))
        return failed

    async def _retry(self, failed: list[_Failure]) -> list[_Failure]:
        """Try the meters that failed in this cycle once more; return those failing still."""
        again: list[_Failure] = []
        for meter, _, first_at in failed:
            outcome = await self._try(meter)
            if isinstance(outcome, MeterRead):
                self._deliver(meter, outcome)
            else:
                again.append((meter, outcome, first_at))
        return again

    async def _try(self, meter: _Meter) -> MeterRead | ModbusError:
        """One read attempt; the error is returned, except a bus failure, which is raised."""
        _raise_if_cancelling()
        meter.status.reads += 1
        async with self._lock:
            try:
                read = await self._read(meter)
            except BusConnectionError:
                raise
            except ModbusError as exc:
                self.stats.failed_reads += 1
                meter.status.failures += 1
                if isinstance(exc, NoAnswerError):
                    self._silences += 1
                else:
                    self._answers += 1  # an exception or a bad answer: someone is there
                return exc
        self._answers += 1
        return read

    async def _read(self, meter: _Meter) -> MeterRead:
        """Read every block of one meter; raise :class:`ModbusError` when none answered."""
        at = self._clock()
        unit = meter.config.unit
        reads: list[Sequence[int] | None] = []
        first: ModbusError | None = None
        for block in meter.blocks:
            try:
                reads.append(await self._request(block, unit))
            except (ModbusExceptionError, BadAnswerError) as exc:
                reads.append(None)
                first = first or exc
        if first is not None:
            if all(regs is None for regs in reads):
                raise first
            self.stats.partial_reads += 1
        profile = meter.profile
        sample = sample_from_values(meter.config.id, at, profile.decode(reads), profile.phases)
        return MeterRead(meter.config.id, at, sample, None if first is None else str(first))

    async def _request(self, block: Block, unit: int) -> Sequence[int]:
        """One block read; raises a :class:`ModbusError` subclass for every failure."""
        client = self._require_client()
        loop = asyncio.get_running_loop()
        if self._gap:
            wait = self._quiet_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        self.stats.requests += 1
        response: ModbusPDU
        try:
            if block.function_code == 4:
                response = await client.read_input_registers(
                    block.address, count=block.count, device_id=unit
                )
            else:
                response = await client.read_holding_registers(
                    block.address, count=block.count, device_id=unit
                )
        except ConnectionException as exc:
            raise BusConnectionError(self._bus_error) from exc
        except ModbusIOException as exc:
            if not client.connected:
                raise BusConnectionError(f"lost the connection to {self.bus.endpoint}") from exc
            self.stats.timeouts += 1
            raise NoAnswerError(f"no answer (timeout {self.bus.timeout_s:g} s)") from exc
        except ModbusException as exc:
            self.stats.bad_answers += 1
            raise BadAnswerError(f"bad answer: {exc}") from exc
        finally:
            if self._gap:
                self._quiet_until = loop.time() + self._gap
        if response.isError():
            self.stats.modbus_exceptions += 1
            code = response.exception_code
            raise ModbusExceptionError(code, describe_exception(code))
        registers = response.registers
        if len(registers) != block.count:
            self.stats.bad_answers += 1
            raise BadAnswerError(
                f"bad answer: asked FC{block.function_code:02d} {block.address}+{block.count}, "
                f"got {len(registers)} registers"
            )
        return registers

    # --- state changes --------------------------------------------------------------------------

    def _deliver(self, meter: _Meter, read: MeterRead) -> None:
        status = meter.status
        sample = read.sample
        if sample is None:  # pragma: no cover - _read returns a sample or raises
            return
        if status.online is not True:
            if status.online is False and status.offline_since is not None:
                _log.info(
                    "meter %s (bus %s, unit %d) recovered after %.0f s",
                    status.meter_id,
                    self.bus.name,
                    status.unit,
                    max(0.0, read.at - status.offline_since),
                )
            status.online = True
            status.offline_since = None
            status.backoff_s = 0.0
            status.probes = 0
            self._call(self._on_online, status.meter_id, read.at)
        status.failures = 0
        status.last_sample_at = read.at
        status.last_error = read.error
        if read.error is not None:
            _log.debug("meter %s: partial read: %s", status.meter_id, read.error)
        self.stats.samples += 1
        self._call(self._on_sample, sample)

    def _went_offline(self, meter: _Meter, error: ModbusError, at: float) -> None:
        status = meter.status
        self._set_offline(status, str(error), at)
        self._schedule_retry(status, self.backoff_initial_s)
        _log.warning(
            "meter %s (bus %s, unit %d) offline: %s; trying again in %.1f s",
            status.meter_id,
            self.bus.name,
            status.unit,
            error,
            status.retry_at - self._clock(),
        )

    def _still_offline(self, meter: _Meter, error: ModbusError, at: float) -> None:
        status = meter.status
        status.probes += 1
        status.last_error = str(error)
        if status.online is None:  # pragma: no cover - probes only happen while offline
            self._set_offline(status, str(error), at)
        self._schedule_retry(status, self._next_backoff(status.backoff_s))
        _log.debug(
            "meter %s still offline: %s; next try in %.1f s",
            status.meter_id,
            error,
            status.retry_at - self._clock(),
        )

    def _set_offline(self, status: MeterStatus, error: str, at: float) -> None:
        status.last_error = error
        if status.online is False:
            return
        status.online = False
        status.offline_since = at
        status.probes = 0
        self._call(self._on_offline, status.meter_id, at, error)

    def _schedule_retry(self, status: MeterStatus, backoff_s: float) -> None:
        status.backoff_s = backoff_s
        status.retry_at = self._clock() + self._jittered(backoff_s)

    def _next_backoff(self, current: float) -> float:
        if current <= 0.0:
            return self.backoff_initial_s
        return min(current * 2.0, self.backoff_max_s)

    def _jittered(self, seconds: float) -> float:
        return seconds * (1.0 - _JITTER * self._rng.random())

    # --- the connection -------------------------------------------------------------------------

    def _require_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None:
            raise RuntimeError("use the BusPoller inside 'async with'")
        return self._client

    async def _connect(self, client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> bool:
        try:
            return bool(await client.connect())
        except (OSError, ModbusException) as exc:
            _log.debug("bus %s: connect failed: %s", self.bus.name, exc)
            return False

    async def _ensure_connected(self) -> bool:
        client = self._require_client()
        if client.connected:
            self._up = True
            return True
        now = self._clock()
        if self._up:
            self._bus_lost(now)  # the peer closed it between two cycles
        if self._reconnect_at - now > self.backoff_max_s:
            self._reconnect_at = now  # the clock stepped back
        if now < self._reconnect_at:
            return False
        self.stats.connects += 1
        if await self._connect(client):
            if self._bus_down_since is not None:
                _log.info(
                    "bus %s: connected to %s again after %.0f s",
                    self.bus.name,
                    self.bus.endpoint,
                    max(0.0, now - self._bus_down_since),
                )
            self._up = True
            self._bus_down_since = None
            self._bus_backoff_s = 0.0
            for meter in self._meters:
                meter.status.retry_at = 0.0  # read every meter at once
            return True
        self.stats.connect_failures += 1
        self._bus_backoff_s = self._next_backoff(self._bus_backoff_s)
        self._reconnect_at = now + self._jittered(self._bus_backoff_s)
        if self._bus_down_since is None:
            self._bus_down_since = now
            _log.warning(
                "bus %s: %s; its meters are offline, trying again in %.1f s",
                self.bus.name,
                self._bus_error,
                self._reconnect_at - now,
            )
        else:
            _log.debug(
                "bus %s: %s (still); next try in %.1f s",
                self.bus.name,
                self._bus_error,
                self._reconnect_at - now,
            )
        self._all_offline(now, self._bus_error)
        return False

    def _bus_lost(self, at: float) -> None:
        """The connection broke during a cycle: close it; the next cycle reconnects."""
        _log.warning("bus %s: lost the connection to %s", self.bus.name, self.bus.endpoint)
        self.stats.disconnects += 1
        self._up = False
        # The outage starts now: a failing reconnect logs at DEBUG, success at INFO.
        self._bus_down_since = at
        self._bus_backoff_s = 0.0
        self._require_client().close()
        self._all_offline(at, f"lost the connection to {self.bus.endpoint}")

    def _all_offline(self, at: float, error: str) -> None:
        for meter in self._meters:
            status = meter.status
            if status.online is not False:
                _log.debug("meter %s offline: %s", status.meter_id, error)
            self._set_offline(status, error, at)
            status.backoff_s = 0.0
            status.retry_at = 0.0

    def _call(self, callback: Callable[..., object] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - a consumer's bug must not stop the bus
            self.stats.callback_errors += 1
            _log.exception("bus %s: callback %r failed", self.bus.name, callback)

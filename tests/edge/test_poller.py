"""The bus poller against the real simulator over loopback (TCP) and a pty pair (RTU).

Each test runs a simulator in-process on free ports with its physics frozen
(``sim_clock``), and a :class:`BusPoller` paced by real time (``edge_clock``),
with short intervals and timeouts so faults play out in a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from testkit import FakeClock, PtyPair

from segs.edge.config import EdgeSettings, MeterConfig, RtuBus, TcpBus
from segs.edge.events import EventDetector
from segs.edge.poller import BusPoller, describe_exception, sample_profile
from segs.edge.samples import Sample, is_impossible, sample_from_values
from segs.protocol.messages import CounterReset, MeterEvent
from segs.protocol.profiles import load_profile
from segs.sim.app import Simulator
from segs.sim.config import (
    BusConfig,
    ControlConfig,
    RegionConfig,
    SimConfig,
    meter_id,
    quick_config,
)
from segs.sim.config import MeterConfig as SimMeter
from segs.sim.faults import (
    CounterResetFault,
    ExceptionFault,
    Fault,
    GarbageFault,
    OfflineFault,
    SlowFault,
)

pytestmark = pytest.mark.usefixtures("clean_env")

# The fixture's type (tests/edge/conftest.py, which is not importable as a module).
WaitUntil = Callable[..., Awaitable[None]]

MIXED = ("sdm630", "sdm120", "sunspec203")


class Recorder:
    """Collects what the poller reports."""

    def __init__(self) -> None:
        self.samples: defaultdict[str, list[Sample]] = defaultdict(list)
        self.offline: list[tuple[str, float, str]] = []
        self.online: list[tuple[str, float]] = []

    def sample(self, sample: Sample) -> None:
        self.samples[sample.meter_id].append(sample)

    def went_offline(self, meter: str, at: float, error: str) -> None:
        self.offline.append((meter, at, error))

    def came_online(self, meter: str, at: float) -> None:
        self.online.append((meter, at))

    def count(self, meter: str) -> int:
        return len(self.samples[meter])

    def online_of(self, meter: str) -> int:
        return sum(1 for who, _ in self.online if who == meter)


def simulator(clock: FakeClock, meters: int = 3, *, profile: str = "sdm630", port: int = 0) -> Any:
    config = quick_config(
        meters,
        port,
        profile=profile,
        seed=7,
        update_interval=3600.0,
        control=ControlConfig(enabled=False),
    )
    return Simulator(config, clock=clock)


def tcp_settings(
    port: int,
    profiles: tuple[str, ...] = ("sdm630",) * 3,
    *,
    timeout_s: float = 0.08,
    **tunables: Any,
) -> EdgeSettings:
    """Meters MTR-00000001.. with unit ids 1.. on bus ``bus-1`` at 127.0.0.1:``port``."""
    tunables.setdefault("poll_interval_s", 0.3)
    tunables.setdefault("backoff_initial_s", 0.2)
    tunables.setdefault("backoff_max_s", 0.8)
    return EdgeSettings(
        gateway_id="gw-test",
        region="region-1",
        window_seconds=60,
        buses=[TcpBus(kind="tcp", name="bus-1", host="127.0.0.1", port=port, timeout_s=timeout_s)],
        meters=[
            MeterConfig(id=meter_id(unit), profile=profile, bus="bus-1", unit=unit)
            for unit, profile in enumerate(profiles, start=1)
        ],
        **tunables,
    )


@contextlib.asynccontextmanager
async def polling(
    settings: EdgeSettings,
    recorder: Recorder,
    clock: Callable[[], float],
    *,
    bus: str = "bus-1",
    on_sample: Callable[[Sample], object] | None = None,
) -> AsyncIterator[BusPoller]:
    """A poller running its loop for the body; checks it never crashed."""
    poller = BusPoller.from_settings(
        settings,
        bus,
        on_sample=on_sample or recorder.sample,
        on_offline=recorder.went_offline,
        on_online=recorder.came_online,
        clock=clock,
        rng=random.Random(1),
    )
    async with poller:
        task = asyncio.create_task(poller.run())
        try:
            yield poller
        finally:
            task.cancel()
            # asyncio.wait never swallows the test's own cancellation (a test timeout).
            done, _ = await asyncio.wait([task], timeout=2.0)
        assert done, "the poller did not stop within 2 s of cancel()"
        assert task.cancelled(), task.exception()
    assert poller.stats.errors == 0


def ticks(samples: list[Sample], interval: float, after: float) -> list[int]:
    return [math.floor(sample.at / interval) for sample in samples if sample.at > after]


def assert_cadence(samples: list[Sample], interval: float, after: float, at_least: int) -> None:
    """One sample per poll tick, none skipped, since ``after``."""
    seen = ticks(samples, interval, after)
    assert len(seen) >= at_least, seen
    assert seen == list(range(seen[0], seen[0] + len(seen))), seen


async def test_samples_match_the_simulators_truth_for_three_profiles(
    sim_clock: FakeClock, edge_clock: Callable[[], float], wait_until: WaitUntil
) -> None:
    recorder = Recorder()
    async with simulator(sim_clock, profile="mixed") as sim:
        settings = tcp_settings(sim.bus_port("bus-1"), MIXED, poll_interval_s=0.1)
        ids = [meter_id(unit) for unit in (1, 2, 3)]
        async with polling(settings, recorder, edge_clock) as poller:
            await wait_until(lambda: all(recorder.count(m) >= 4 for m in ids), what="samples")
            cycles, requests = poller.stats.cycles, poller.stats.requests
        for meter in ids:
            truth = sim.meter_state(meter)
            expected = sample_from_values(meter, 0.0, truth["values"], truth["phases"])
            got = recorder.samples[meter][-1]
            assert not is_impossible(got)
            assert got.voltage_v == pytest.approx(expected.voltage_v, abs=0.06)
            assert got.current_a == pytest.approx(expected.current_a, abs=0.006)
            assert got.power_kw == pytest.approx(expected.power_kw, abs=0.002)
            assert got.power_factor == pytest.approx(expected.power_factor, abs=0.002)
            assert got.frequency_hz == pytest.approx(expected.frequency_hz, abs=0.006)
            assert got.import_kwh == pytest.approx(expected.import_kwh, abs=0.002)
            assert got.export_kwh == pytest.approx(expected.export_kwh, abs=0.002)
            assert len(got.voltages_v) == truth["phases"]
            assert_cadence(recorder.samples[meter], 0.1, 0.0, at_least=4)
        assert [recorder.online_of(m) for m in ids] == [1, 1, 1]
        assert recorder.offline == []
    # Lean polling: one request per meter and cycle (the full plans would take 3 + 2 + 2).
    per_cycle = sum(len(sample_profile(load_profile(name)).blocks) for name in MIXED)
    assert per_cycle == 3
    assert per_cycle * cycles <= requests <= per_cycle * (cycles + 1)


FAULTS = [
    pytest.param(OfflineFault(kind="offline"), "no answer (timeout 0.08 s)", id="offline"),
    pytest.param(
        ExceptionFault(kind="exception", code=4),
        "Modbus exception 4 (server device failure)",
        id="exception",
    ),
    pytest.param(SlowFault(kind="slow", delay_ms=400), "no answer (timeout 0.08 s)", id="slow"),
]


@pytest.mark.parametrize(("fault", "error"), FAULTS)
async def test_a_failing_meter_goes_offline_alone_backs_off_and_comes_back(
    *,
    fault: Fault,
    error: str,
    sim_clock: FakeClock,
    edge_clock: Callable[[], float],
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="segs.edge.poller")
    recorder = Recorder()
    dead, alive = meter_id(2), (meter_id(1), meter_id(3))
    async with simulator(sim_clock) as sim:
        settings = tcp_settings(sim.bus_port("bus-1"))
        async with polling(settings, recorder, edge_clock) as poller:
            await wait_until(lambda: recorder.count(dead) >= 2, what="first samples")
            sim.inject(dead, fault)
            faulted = edge_clock()
            await wait_until(lambda: recorder.offline, timeout=3.0, what="offline")
            before = recorder.count(dead)
            await asyncio.sleep(2.0)
            status = poller.status(dead)
            assert status.online is False
            assert status.last_error == error
            assert status.backoff_s == 0.8  # 0.2 → 0.4 → 0.8, the maximum
            assert 2 <= status.probes <= 5  # tried at each backoff step, not every cycle
            assert recorder.count(dead) == before
            for meter in alive:
                assert_cadence(recorder.samples[meter], 0.3, faulted, at_least=6)
            assert poller.stats.skipped_ticks == 0

            sim.clear(dead)
            await wait_until(lambda: status.online, timeout=2.0, what="recovery")
            await wait_until(lambda: recorder.count(dead) > before, what="samples again")
    assert [(who, why) for who, _, why in recorder.offline] == [(dead, error)]
    assert recorder.online_of(dead) == 2  # first answer, then the recovery
    assert all(recorder.online_of(meter) == 1 for meter in alive)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert dead in warnings[0]
    assert error in warnings[0]
    assert any(
        r.levelno == logging.DEBUG and "still offline" in r.getMessage() for r in caplog.records
    )
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(recovered) == 1
    assert "recovered after" in recovered[0]


@pytest.mark.parametrize("mode", ["random", "nan"])
async def test_garbage_answers_still_make_samples_that_consumers_can_reject(
    mode: str, sim_clock: FakeClock, edge_clock: Callable[[], float], wait_until: WaitUntil
) -> None:
    recorder = Recorder()
    garbled = meter_id(1)
    async with simulator(sim_clock) as sim:
        settings = tcp_settings(sim.bus_port("bus-1"), poll_interval_s=0.1)
        async with polling(settings, recorder, edge_clock):
            await wait_until(lambda: recorder.count(garbled) >= 1, what="first sample")
            sim.inject(garbled, GarbageFault(kind="garbage", mode=mode))  # type: ignore[arg-type]
            since = edge_clock()
            await wait_until(
                lambda: sum(s.at > since for s in recorder.samples[garbled]) >= 4, what="samples"
            )
    bad = [s for s in recorder.samples[garbled] if s.at > since]
    if mode == "nan":
        assert all(math.isnan(s.power_kw) and math.isnan(s.voltage_v or 0.0) for s in bad)
        assert all(math.isnan(s.import_kwh) for s in bad)
    else:
        assert all(is_impossible(s) for s in bad)
    for meter in (meter_id(2), meter_id(3)):
        assert not any(is_impossible(s) for s in recorder.samples[meter])
        assert not any(math.isnan(s.power_kw) for s in recorder.samples[meter])
    assert recorder.offline == []


async def test_a_counter_reset_reaches_the_event_detector(
    sim_clock: FakeClock, edge_clock: Callable[[], float], wait_until: WaitUntil
) -> None:
    recorder = Recorder()
    detector = EventDetector()
    events: list[MeterEvent] = []

    def observe(sample: Sample) -> None:
        recorder.sample(sample)
        events.extend(detector.observe(sample))

    swapped = meter_id(3)
    async with simulator(sim_clock) as sim:
        settings = tcp_settings(sim.bus_port("bus-1"), poll_interval_s=0.1)
        async with polling(settings, recorder, edge_clock, on_sample=observe):
            await wait_until(lambda: recorder.count(swapped) >= 2, what="first samples")
            old = recorder.samples[swapped][-1].import_kwh
            sim.inject(swapped, CounterResetFault(kind="counter_reset", start_kwh=0.5))
            sim_clock.advance(1.0)
            sim.update()
            await wait_until(
                lambda: any(isinstance(e, CounterReset) for e in events), what="a counter reset"
            )
            resets = [e for e in events if isinstance(e, CounterReset)]
            count = recorder.count(meter_id(1))
            await wait_until(lambda: recorder.count(meter_id(1)) > count + 2, what="more samples")
    assert [e.meter_id for e in resets] == [swapped]
    assert resets[0].previous_import_kwh == pytest.approx(old, abs=0.01)
    assert resets[0].import_kwh < 1.0
    assert recorder.samples[swapped][-1].import_kwh < 1.0
    assert [e for e in events if isinstance(e, CounterReset)] == resets
    assert recorder.offline == []


async def test_a_gateway_that_is_down_or_goes_away_only_takes_its_meters_offline(
    sim_clock: FakeClock,
    edge_clock: Callable[[], float],
    wait_until: WaitUntil,
    free_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="segs.edge.poller")
    recorder = Recorder()
    ids = [meter_id(unit) for unit in (1, 2, 3)]
    settings = tcp_settings(free_port, poll_interval_s=0.1, backoff_initial_s=0.1)
    async with polling(settings, recorder, edge_clock) as poller:
        # Nothing listens yet: every meter is offline once, and reconnects back off.
        await wait_until(lambda: len(recorder.offline) == 3, what="three offline")
        await wait_until(lambda: poller.stats.connect_failures >= 3, what="reconnect attempts")
        assert sorted(who for who, _, _ in recorder.offline) == ids
        assert {why for _, _, why in recorder.offline} == {
            f"cannot connect to 127.0.0.1:{free_port}"
        }
        down = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(down) == 1
        assert "cannot connect" in down[0].getMessage()

        async with simulator(sim_clock, port=free_port):
            await wait_until(lambda: all(recorder.count(m) >= 2 for m in ids), what="samples")
            assert [recorder.online_of(m) for m in ids] == [1, 1, 1]
        # The gateway went away under the poller.
        await wait_until(lambda: len(recorder.offline) == 6, what="offline again")
        await asyncio.sleep(0.3)
        assert len(recorder.offline) == 6
        assert {why for _, _, why in recorder.offline[3:]} == {
            f"lost the connection to 127.0.0.1:{free_port}"
        }
        assert poller.stats.disconnects == 1
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    warnings = [text for level, text in messages if level == logging.WARNING]
    assert len(warnings) == 2
    assert "lost the connection" in warnings[1]
    assert any(level == logging.INFO and "again after" in text for level, text in messages)


async def test_a_callback_that_raises_is_counted_and_polling_goes_on(
    sim_clock: FakeClock, edge_clock: Callable[[], float], wait_until: WaitUntil
) -> None:
    def broken(sample: Sample) -> None:
        raise RuntimeError("consumer bug")

    async with simulator(sim_clock, meters=1) as sim:
        settings = tcp_settings(sim.bus_port("bus-1"), ("sdm630",), poll_interval_s=0.05)
        async with polling(settings, Recorder(), edge_clock, on_sample=broken) as poller:
            await wait_until(lambda: poller.stats.callback_errors >= 3, what="three failures")
            assert poller.stats.samples >= 3
            assert poller.status(meter_id(1)).online is True


def _rtu_sim(device: str) -> SimConfig:
    return SimConfig(
        regions=(RegionConfig("north"),),
        buses=(BusConfig("line-1", transport="rtu", device=device, baudrate=115200),),
        meters=(
            SimMeter("EM-1", bus="line-1", unit_id=1, profile="sdm630", region="north"),
            SimMeter("EM-2", bus="line-1", unit_id=2, profile="sdm120", region="north"),
            SimMeter("EM-9", bus="line-1", unit_id=9, profile="sunspec203", region="north"),
        ),
        control=ControlConfig(enabled=False),
        update_interval=3600.0,
    )


async def test_an_rtu_bus_over_a_pty_pair(
    pty_pair: PtyPair,
    sim_clock: FakeClock,
    edge_clock: Callable[[], float],
    wait_until: WaitUntil,
) -> None:
    recorder = Recorder()
    gap = 0.03
    settings = EdgeSettings(
        gateway_id="gw-test",
        region="north",
        poll_interval_s=0.3,
        backoff_initial_s=0.2,
        backoff_max_s=0.4,
        buses=[
            RtuBus(
                kind="rtu",
                name="line-1",
                device=pty_pair.right,
                baudrate=115200,
                timeout_s=0.15,
                inter_frame_delay_s=gap,
            )
        ],
        meters=[
            MeterConfig(id="EM-1", profile="sdm630", bus="line-1", unit=1),
            MeterConfig(id="EM-2", profile="sdm120", bus="line-1", unit=2),
            MeterConfig(id="EM-9", profile="sunspec203", bus="line-1", unit=9),
        ],
    )
    ids = ("EM-1", "EM-2", "EM-9")
    async with (
        Simulator(_rtu_sim(pty_pair.left), clock=sim_clock) as sim,
        polling(settings, recorder, edge_clock, bus="line-1") as poller,
    ):
        await wait_until(lambda: all(recorder.count(m) >= 2 for m in ids), what="samples")
        for meter in ids:
            truth = sim.meter_state(meter)
            expected = sample_from_values(meter, 0.0, truth["values"], truth["phases"])
            got = recorder.samples[meter][-1]
            assert got.voltage_v == pytest.approx(expected.voltage_v, abs=0.06)
            assert got.import_kwh == pytest.approx(expected.import_kwh, abs=0.002)
        # Three requests a cycle, each after the inter-frame silence.
        assert poller.stats.max_cycle_s >= 2 * gap

        sim.inject("EM-2", OfflineFault(kind="offline"))
        await wait_until(lambda: recorder.offline, timeout=3.0, what="offline")
        count = recorder.count("EM-1")
        await wait_until(lambda: recorder.count("EM-1") >= count + 3, what="others polled")
        sim.clear("EM-2")
        await wait_until(lambda: recorder.online_of("EM-2") == 2, timeout=3.0, what="recovery")
    assert [(who, why) for who, _, why in recorder.offline] == [
        ("EM-2", "no answer (timeout 0.15 s)")
    ]


async def test_read_meter_reads_once_without_touching_the_status(
    sim_clock: FakeClock, edge_clock: Callable[[], float]
) -> None:
    async with simulator(sim_clock, meters=2) as sim:
        settings = tcp_settings(sim.bus_port("bus-1"), ("sdm630", "sdm630"))
        sim.inject(meter_id(2), ExceptionFault(kind="exception", code=2))
        async with BusPoller.from_settings(settings, "bus-1", clock=edge_clock) as poller:
            good = await poller.read_meter(meter_id(1))
            bad = await poller.read_meter(meter_id(2))
            assert poller.status(meter_id(2)).online is None
    assert good.ok
    assert good.sample is not None
    assert good.sample.frequency_hz == pytest.approx(50.0, abs=0.5)
    assert not bad.ok
    assert bad.sample is None
    assert bad.error == describe_exception(2) == "Modbus exception 2 (illegal data address)"


async def test_reading_only_what_a_sample_needs_gives_the_same_sample(
    sim_clock: FakeClock,
) -> None:
    async with simulator(sim_clock, profile="mixed") as sim:
        settings = tcp_settings(sim.bus_port("bus-1"), MIXED)
        sim_clock.advance(30.0)
        sim.update()
        reads = {}
        for full in (False, True):
            async with BusPoller(
                settings.buses[0],
                [(meter, meter.load_profile()) for meter in settings.meters],
                clock=lambda: 0.0,
                full_profile=full,
            ) as poller:
                reads[full] = [await poller.read_meter(meter_id(unit)) for unit in (1, 2, 3)]
                requests = poller.stats.requests
            assert requests == (7 if full else 3)
    for lean, full in zip(reads[False], reads[True], strict=True):
        assert lean.ok
        assert full.ok
        assert lean.sample == full.sample
    for name in MIXED:
        profile = load_profile(name)
        lean_blocks = sample_profile(profile).blocks
        # Every lean read is a sub-range of a read the profile plans.
        for block in lean_blocks:
            assert any(
                block.function_code == planned.function_code
                and planned.address <= block.address
                and block.address + block.count <= planned.address + planned.count
                for planned in profile.blocks
            )


async def test_a_clock_step_back_does_not_stall_polling(
    sim_clock: FakeClock, edge_clock: Callable[[], float], wait_until: WaitUntil
) -> None:
    step = [0.0]
    recorder = Recorder()
    samples = recorder.samples[meter_id(1)]
    async with simulator(sim_clock, meters=1) as sim:
        settings = tcp_settings(sim.bus_port("bus-1"), ("sdm630",), poll_interval_s=0.1)
        async with polling(settings, recorder, lambda: edge_clock() + step[0]):
            await wait_until(lambda: len(samples) >= 2, what="samples")
            step[0] = -3600.0  # NTP sets the clock an hour back
            before = len(samples) + 1  # one read may straddle the step
            await wait_until(lambda: len(samples) >= before + 5, timeout=1.5, what="samples")
    assert_cadence(samples[before:], 0.1, 0.0, at_least=5)
    assert samples[-1].at < samples[0].at

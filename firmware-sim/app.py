"""The simulator: owns the fleet, the register images, the buses, the control API and the timers.

:class:`Simulator` is an async context manager. Entering it builds the fleet from
the config (restoring counters from the state file), computes the first update,
starts every bus listening, then runs the long-lived parts as tasks of one
:class:`asyncio.TaskGroup`: the update loop, the state-file timer and the control
API. Leaving it stops them, closes the buses and saves the state one last time::

    async with Simulator(config) as sim:
        await stop_event.wait()      # segs sim sets it on SIGINT/SIGTERM

Everything runs on one event loop, and an update is one synchronous call, so a
Modbus answer or an API response never sees half an update.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from segs import __version__
from segs.sim.config import MeterConfig, SimConfig
from segs.sim.control import ControlServer, create_app, fault_json
from segs.sim.exceptions import SimError, UnknownMeterError
from segs.sim.faults import (
    ActiveFault,
    CounterResetFault,
    Fault,
    FaultTable,
    SpikeFault,
    VoltageFault,
    until_or_inf,
)
from segs.sim.modbus import BusRouter, BusServer, UnitTarget
from segs.sim.physics import Fleet, MeterSpec, RegionSpec, meter_seed
from segs.sim.registers import ImageMeter, ProfileImage, Readings, readings
from segs.sim.state import load_state, save_state

__all__ = ["Simulator", "UpdateStats"]

_log = logging.getLogger(__name__)


@dataclass
class UpdateStats:
    """Timing of the update loop (one update = physics step + register images)."""

    steps: int = 0
    errors: int = 0
    last_seconds: float = 0.0
    max_seconds: float = 0.0
    total_seconds: float = 0.0
    """Wall time spent in updates."""
    total_cpu_seconds: float = 0.0
    """CPU time spent in updates (thread time)."""


class Simulator:
    """The running simulator; see the module docstring."""

    def __init__(self, config: SimConfig, *, clock: Callable[[], float] = time.time) -> None:
        """Store the config; ``clock`` gives the simulated time (seconds since the epoch)."""
        self.config = config
        self.clock = clock
        self.faults = FaultTable(clock)
        self.update_stats = UpdateStats()
        self.buses: list[BusServer] = []
        self.control: ControlServer | None = None
        self._index = {meter.id: index for index, meter in enumerate(config.meters)}
        self._fleet: Fleet | None = None
        self._readings: Readings | None = None
        self._images: list[ProfileImage] = []
        self._targets: dict[int, UnitTarget] = {}
        self._stack: AsyncExitStack | None = None
        self._stopping = asyncio.Event()
        self._started = 0.0

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._build()
        stack = AsyncExitStack()
        try:
            for router in self._routers():
                self.buses.append(await stack.enter_async_context(BusServer(router)))
            control = self.config.control
            if control.enabled:
                self.control = await stack.enter_async_context(
                    ControlServer(create_app(self), host=control.host, port=control.port)
                )
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            tasks.create_task(self._update_loop(), name="sim-update")
            if self.config.state_file is not None:
                tasks.create_task(self._save_loop(), name="sim-state")
            if self.control is not None:
                # The socket already listens: clients connecting before uvicorn runs wait
                # in the backlog, so there is nothing to wait for here.
                tasks.create_task(self.control.serve(), name="sim-control")
        except BaseException:
            self._stop()
            await stack.aclose()
            raise
        self._stack = stack
        self._started = time.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                # The tasks end on their own once stopped; the body's exception is not theirs
                # (a TaskGroup would wrap it into an ExceptionGroup), so it is not passed on.
                await stack.aclose()
        finally:
            self.buses.clear()
            self.control = None
            self._save()

    def _stop(self) -> None:
        self._stopping.set()
        if self.control is not None:
            self.control.stop()

    def _build(self) -> None:
        """Build the fleet and the register images (no I/O but the state file)."""
        config = self.config
        regions = {region.id: index for index, region in enumerate(config.regions)}
        specs = [
            MeterSpec(
                phases=config.profile(meter.profile).phases,
                region=regions[meter.region],
                prosumer=meter.prosumer,
                seed=meter.seed if meter.seed is not None else meter_seed(config.seed, meter.id),
            )
            for meter in config.meters
        ]
        fleet = Fleet(
            specs,
            [RegionSpec(r.timezone, r.voltage_offset) for r in config.regions],
            seed=config.seed,
        )
        if config.state_file is not None:
            saved = load_state(config.state_file)
            for meter_id, rows in saved.items():
                index = self._index.get(meter_id)
                if index is not None:
                    fleet.counters[:, index, :] = rows
                    fleet.counters[:, index, 1:] *= fleet.phase_mask[index]
            _log.info("restored the counters of %d meters from %s", len(saved), config.state_file)
        self._fleet = fleet
        self.update()
        values = self._current()
        by_profile: dict[str, list[int]] = {}
        for index, meter in enumerate(config.meters):
            by_profile.setdefault(meter.profile, []).append(index)
        self._images = []
        self._targets = {}
        for name, members in by_profile.items():
            image = ProfileImage(
                config.profile(name),
                [self._image_meter(index, config.meters[index]) for index in members],
                values.names,
            )
            image.update(values)
            self._images.append(image)
            for row, index in enumerate(members):
                self._targets[index] = UnitTarget(image=image, row=row, meter=index)

    def _image_meter(self, index: int, meter: MeterConfig) -> ImageMeter:
        return ImageMeter(
            fleet_index=index, unit_id=meter.unit_id, meter_id=meter.id, firmware=__version__
        )

    def _routers(self) -> list[BusRouter]:
        routers = []
        for number, bus in enumerate(self.config.buses):
            units = {
                meter.unit_id: self._targets[index]
                for index, meter in enumerate(self.config.meters)
                if meter.bus == bus.id
            }
            routers.append(
                BusRouter(
                    bus=bus,
                    units=units,
                    faults=self.faults,
                    rng=random.Random(self.config.seed * 7919 + number),  # noqa: S311 - garbage words
                )
            )
        return routers

    # --- the update loop ------------------------------------------------------------------------

    def update(self) -> None:
        """Move every meter to the clock's current time and rebuild the register images."""
        fleet = self._require_fleet()
        wall, cpu = time.perf_counter(), time.thread_time()
        now = self.clock()
        dt = 0.0 if fleet.steps == 0 else max(0.0, now - fleet.time)
        fleet.step(max(now, fleet.time) if fleet.steps else now, dt)
        values = readings(fleet)
        for image in self._images:
            image.update(values)
        self._readings = values
        stats = self.update_stats
        stats.steps += 1
        stats.last_seconds = time.perf_counter() - wall
        stats.max_seconds = max(stats.max_seconds, stats.last_seconds)
        stats.total_seconds += stats.last_seconds
        stats.total_cpu_seconds += time.thread_time() - cpu

    async def _update_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.update_interval
        deadline = loop.time()
        while not self._stopping.is_set():
            # Ticks stay on a fixed grid; after a stall the loop skips to the next tick
            # instead of bursting (dt covers the gap, so energy stays exact).
            deadline += interval
            deadline = max(deadline, loop.time())
            try:
                async with asyncio.timeout_at(deadline):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            if self._stopping.is_set():
                return
            try:
                self.update()
            except Exception:  # noqa: BLE001 - a task's top level: log, count, keep the meters up
                self.update_stats.errors += 1
                _log.exception("the simulator update failed")

    async def _save_loop(self) -> None:
        interval = self.config.state_interval
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(interval):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            if self._stopping.is_set():
                return
            snapshot = self._snapshot()
            path = self.config.state_file
            if path is None:
                return
            try:
                await asyncio.to_thread(save_state, path, snapshot, saved_at=self.clock())
            except SimError:
                _log.exception("saving the state file failed; retrying at the next interval")

    def _snapshot(self) -> dict[str, list[list[float]]]:
        fleet = self._require_fleet()
        counters = fleet.counters.transpose(1, 0, 2).tolist()
        return {meter.id: counters[index] for index, meter in enumerate(self.config.meters)}

    def _save(self) -> None:
        if self.config.state_file is None or self._fleet is None:
            return
        save_state(self.config.state_file, self._snapshot(), saved_at=self.clock())

    # --- what the control API uses --------------------------------------------------------------

    def _require_fleet(self) -> Fleet:
        if self._fleet is None:
            raise RuntimeError("the simulator has not been started")
        return self._fleet

    def _current(self) -> Readings:
        if self._readings is None:
            raise RuntimeError("the simulator has not been started")
        return self._readings

    def meter_index(self, meter_id: str) -> int:
        """Return the fleet index of ``meter_id``; :class:`UnknownMeterError` if there is none."""
        try:
            return self._index[meter_id]
        except KeyError:
            raise UnknownMeterError(meter_id) from None

    def meter_state(self, meter_id: str) -> dict[str, Any]:
        """The true state of one meter, as of the last update."""
        return self._state(self.meter_index(meter_id))

    def meter_states(self) -> list[dict[str, Any]]:
        """The true state of every meter, as of the last update."""
        return [self._state(index) for index in range(len(self.config.meters))]

    def _state(self, index: int) -> dict[str, Any]:
        fleet = self._require_fleet()
        meter = self.config.meters[index]
        return {
            "meter_id": meter.id,
            "profile": meter.profile,
            "bus": meter.bus,
            "unit_id": meter.unit_id,
            "region": meter.region,
            "prosumer": meter.prosumer,
            "phases": int(fleet.phases[index]),
            "step": fleet.steps,
            "timestamp": fleet.time,
            "time": datetime.fromtimestamp(fleet.time, UTC).isoformat().replace("+00:00", "Z"),
            "values": self._current().meter(index),
            "faults": [fault_json(active) for active in self.faults.active(index)],
        }

    def faults_of(self, meter_id: str) -> list[ActiveFault]:
        """The faults active on ``meter_id``."""
        return self.faults.active(self.meter_index(meter_id))

    def inject(self, meter_id: str, fault: Fault) -> ActiveFault:
        """Start ``fault`` on ``meter_id``; physical faults act from the next update."""
        index = self.meter_index(meter_id)
        fleet = self._require_fleet()
        active = self.faults.add(index, fault)
        if isinstance(fault, SpikeFault):
            fleet.set_spike(index, fault.factor, until_or_inf(active))
        elif isinstance(fault, VoltageFault):
            fleet.set_voltage(index, fault.value, until_or_inf(active))
        elif isinstance(fault, CounterResetFault):
            fleet.reset_counters(index, fault.start_kwh)
        _log.info("meter %s: fault %s", meter_id, fault)
        return active

    def clear(self, meter_id: str, kind: str | None = None) -> list[ActiveFault]:
        """Clear the faults of ``meter_id`` (only ``kind`` when given); return what was cleared."""
        index = self.meter_index(meter_id)
        fleet = self._require_fleet()
        removed = self.faults.clear(index, kind)
        for active in removed:
            if isinstance(active.fault, SpikeFault):
                fleet.clear_spike(index)
            elif isinstance(active.fault, VoltageFault):
                fleet.clear_voltage(index)
        return removed

    def stats(self) -> dict[str, Any]:
        """Update loop timing, request counters per bus, process CPU time."""
        stats = self.update_stats
        uptime = time.monotonic() - self._started if self._started else 0.0
        return {
            "meters": len(self.config.meters),
            "update_interval": self.config.update_interval,
            "uptime_seconds": uptime,
            "process_cpu_seconds": time.process_time(),
            "update": {
                "steps": stats.steps,
                "errors": stats.errors,
                "last_seconds": stats.last_seconds,
                "max_seconds": stats.max_seconds,
                "mean_seconds": stats.total_seconds / stats.steps if stats.steps else 0.0,
                "total_seconds": stats.total_seconds,
                "total_cpu_seconds": stats.total_cpu_seconds,
            },
            "buses": [
                {
                    "id": bus.bus.id,
                    "transport": bus.bus.transport,
                    "endpoint": bus.endpoint,
                    "meters": len(bus.router.units),
                    **vars(bus.router.stats),
                }
                for bus in self.buses
            ],
        }

    # --- for tests and tools ---------------------------------------------------------------------

    @property
    def fleet(self) -> Fleet:
        """The fleet model (read it, do not change it)."""
        return self._require_fleet()

    def bus_port(self, bus_id: str) -> int:
        """The TCP port bus ``bus_id`` listens on."""
        for bus in self.buses:
            if bus.bus.id == bus_id and bus.port is not None:
                return bus.port
        raise KeyError(bus_id)

    def energy_kwh(self, meter_id: str) -> tuple[float, float]:
        """(import, export) total energy of a meter, in kWh, as of the last update."""
        index = self.meter_index(meter_id)
        fleet = self._require_fleet()
        return float(fleet.counters[0, index, 0]), float(fleet.counters[1, index, 0])

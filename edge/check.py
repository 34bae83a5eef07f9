"""``segs edge check``: read every configured meter once and show what it says.

What an installer runs on site after wiring the meters: every bus is read at
the same time, the meters of one bus one after the other (as the poller does),
each meter once, without retries. The table has one row per meter, in the
order of the config file (columns: meter, bus/unit, profile, mean V, mean I,
P kW, PF, Hz, import kWh, export kWh, status)::

    meter         bus/unit   profile       V     I   P kW    PF     Hz  import kWh  ...  status
    MTR-00000001  rs485-0/1  sdm630    230.3  0.38  0.251  0.95  50.02      766.23  ...  ok
    MTR-00000002  rs485-0/2  sdm120                                  ...  no answer (timeout 0.5 s)

A row is ``ok`` when every block answered with plausible values. Anything
else fails the check: no answer, a Modbus exception, a bus that cannot be
reached, some blocks failing (``partial: ...``, usually a wrong profile), or
values outside their physical range (``implausible values``: wrong profile,
word order or unit id). ``-`` marks a value the meter did not deliver; an
empty cell one its profile does not have.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from segs.edge.config import EdgeSettings, MeterConfig, RtuBus, TcpBus
from segs.edge.poller import BusPoller, MeterRead
from segs.edge.samples import Sample, is_impossible

__all__ = ["CheckResult", "check_meters", "exit_code", "format_table"]

_HEADERS: Final = (
    "meter",
    "bus/unit",
    "profile",
    "V",
    "I",
    "P kW",
    "PF",
    "Hz",
    "import kWh",
    "export kWh",
    "status",
)
_NUMERIC: Final = frozenset(range(3, 10))
_HUGE: Final = 1e7


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One meter's row: its config, its profile id and what the read gave."""

    meter: MeterConfig
    profile: str
    read: MeterRead

    @property
    def ok(self) -> bool:
        """Every block answered and every value is physically possible."""
        sample = self.read.sample
        return self.read.ok and sample is not None and not is_impossible(sample)

    @property
    def status(self) -> str:
        """``ok`` or what went wrong, in an installer's words."""
        sample = self.read.sample
        if sample is None:
            return self.read.error or "failed"
        if self.read.error is not None:
            return f"partial: {self.read.error}"
        if is_impossible(sample):
            return "implausible values (wrong profile, unit id or word order?)"
        return "ok"


async def check_meters(
    settings: EdgeSettings,
    *,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> list[CheckResult]:
    """Read every meter of ``settings`` once; results in the order of the config.

    ``timeout_s`` replaces every bus's own timeout.
    """
    buses: list[TcpBus | RtuBus] = [
        bus if timeout_s is None else bus.model_copy(update={"timeout_s": timeout_s})
        for bus in settings.buses
    ]
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_check_bus(bus, settings.meters_on(bus.name), clock))
            for bus in buses
            if settings.meters_on(bus.name)
        ]
    reads = {read.meter_id: read for task in tasks for read in task.result()}
    return [
        CheckResult(meter, meter.load_profile().id, reads[meter.id]) for meter in settings.meters
    ]


async def _check_bus(
    bus: TcpBus | RtuBus, meters: Sequence[MeterConfig], clock: Callable[[], float]
) -> list[MeterRead]:
    # The whole profile, not just what a sample needs: a wrong profile shows up here.
    poller = BusPoller(
        bus,
        [(meter, meter.load_profile()) for meter in meters],
        retries=0,
        clock=clock,
        full_profile=True,
    )
    async with poller:
        if not poller.connected:
            return [MeterRead(meter.id, clock(), None, poller.bus_error) for meter in meters]
        return [await poller.read_meter(meter.id) for meter in meters]


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when every meter is ok, else 1."""
    return 0 if all(result.ok for result in results) else 1


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "-"
    if not abs(value) < _HUGE:
        return f"{value:.3g}"  # garbage: keep the table narrow
    return f"{value:.{digits}f}"


def _values(sample: Sample | None) -> list[str]:
    if sample is None:
        return [""] * 7
    return [
        _number(sample.voltage_v, 1),
        _number(sample.current_a, 2),
        _number(sample.power_kw, 3),
        _number(sample.power_factor, 2),
        _number(sample.frequency_hz, 2),
        _number(sample.import_kwh, 2),
        _number(sample.export_kwh, 2),
    ]


def format_table(results: Sequence[CheckResult]) -> str:
    """The check as a text table, with a summary line."""
    rows = [list(_HEADERS)]
    for result in results:
        meter = result.meter
        rows.append(
            [
                meter.id,
                f"{meter.bus}/{meter.unit}",
                result.profile,
                *_values(result.read.sample),
                result.status,
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADERS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[column]) if column in _NUMERIC else cell.ljust(widths[column])
            for column, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    good = sum(result.ok for result in results)
    failed = len(results) - good
    lines.append("")
    lines.append(f"{len(results)} meters: {good} ok, {failed} failed")
    return "\n".join(lines)

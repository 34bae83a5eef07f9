"""Fault injection: the fault kinds (validated with pydantic, discriminated on ``kind``) and
the table of faults active on each meter.

Two families act in two places:

* **wire faults** change how a meter answers, request by request (``offline``: no
  answer at all; ``slow``: a delayed answer; ``exception``: a Modbus exception;
  ``garbage``: NaN or random register words). :meth:`FaultTable.wire` tells the
  Modbus servers what applies now.
* **physical faults** change what the meter measures, from the next physics update
  on, so energy stays the integral of the served power (``spike``: the household
  load times ``factor``; ``voltage``: a sag or swell to ``value``; ``counter_reset``:
  a meter swap, the counters restart near zero). :class:`~segs.sim.app.Simulator`
  hands them to the fleet.

A fault lasts ``seconds`` when given, else until it is cleared. Removing a
``counter_reset`` does not undo it: a swapped meter stays swapped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from segs.sim.exceptions import FaultError

__all__ = [
    "EXCEPTION_CODES",
    "FAULT_KINDS",
    "ActiveFault",
    "CounterResetFault",
    "ExceptionFault",
    "Fault",
    "FaultKind",
    "FaultTable",
    "GarbageFault",
    "OfflineFault",
    "SlowFault",
    "SpikeFault",
    "VoltageFault",
    "WireFaults",
    "parse_fault",
    "until_or_inf",
]

EXCEPTION_CODES: Final = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 11})
"""Modbus exception codes an ``exception`` fault may answer with."""

_MAX_SECONDS: Final = 7 * 86400.0

Seconds = Annotated[
    float | None,
    Field(gt=0, le=_MAX_SECONDS, description="how long it lasts; unset: until cleared"),
]


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class OfflineFault(_Fault):
    """The meter does not answer at all (the master times out)."""

    kind: Literal["offline"]
    seconds: Seconds = None


class SlowFault(_Fault):
    """The meter answers ``delay_ms`` late."""

    kind: Literal["slow"]
    delay_ms: int = Field(ge=1, le=60_000, description="delay of every answer, ms")
    seconds: Seconds = None


class ExceptionFault(_Fault):
    """The meter answers every read with Modbus exception ``code``."""

    kind: Literal["exception"]
    code: int = Field(default=4, description="Modbus exception code: 1-6, 8, 10, 11")
    seconds: Seconds = None

    @field_validator("code")
    @classmethod
    def _known_code(cls, code: int) -> int:
        if code not in EXCEPTION_CODES:
            raise ValueError(f"code must be one of {sorted(EXCEPTION_CODES)}, got {code}")
        return code


class GarbageFault(_Fault):
    """The meter answers with NaN (``not implemented``) values or random register words."""

    kind: Literal["garbage"]
    mode: Literal["nan", "random"] = "random"
    seconds: Seconds = None


class CounterResetFault(_Fault):
    """The meter is swapped: its energy counters restart near zero at the next update."""

    kind: Literal["counter_reset"]
    start_kwh: float | None = Field(
        default=None, ge=0, le=1e6, description="where the counters restart (default: a few Wh)"
    )
    seconds: Seconds = None


class SpikeFault(_Fault):
    """The household load is multiplied by ``factor`` for ``seconds``."""

    kind: Literal["spike"]
    factor: float = Field(gt=0, le=100, description="load multiplier")
    seconds: Seconds = 10.0


class VoltageFault(_Fault):
    """The voltage sags or swells to ``value`` volts for ``seconds``."""

    kind: Literal["voltage"]
    value: float = Field(ge=0, le=400, description="voltage on every phase, V")
    seconds: Seconds = 10.0


Fault = Annotated[
    OfflineFault
    | SlowFault
    | ExceptionFault
    | GarbageFault
    | CounterResetFault
    | SpikeFault
    | VoltageFault,
    Field(discriminator="kind"),
]

FaultKind = Literal["offline", "slow", "exception", "garbage", "counter_reset", "spike", "voltage"]
FAULT_KINDS: Final[tuple[str, ...]] = get_args(FaultKind)
WIRE_KINDS: Final = frozenset({"offline", "slow", "exception", "garbage"})

_ADAPTER: Final[TypeAdapter[Fault]] = TypeAdapter(Fault)


def parse_fault(data: object) -> Fault:
    """Validate a fault description (parsed JSON); :class:`FaultError` says what is wrong."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'fault'}: {error['msg']}"
            for error in exc.errors()
        )
        raise FaultError(f"invalid fault: {problems}") from None


@dataclass(frozen=True)
class ActiveFault:
    """A fault on a meter, with when it started and when it ends (``None``: when cleared)."""

    fault: Fault
    since: float
    until: float | None

    def expired(self, now: float) -> bool:
        """Return whether the fault has run out at ``now``."""
        return self.until is not None and now >= self.until


@dataclass(frozen=True)
class WireFaults:
    """How a meter answers right now."""

    offline: bool = False
    delay: float = 0.0
    """Seconds to wait before answering."""
    exception: int | None = None
    garbage: Literal["nan", "random"] | None = None


class FaultTable:
    """The faults active on each meter (by fleet index), expiring on the injected clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._faults: dict[int, dict[str, ActiveFault]] = {}
        self._wire: dict[int, WireFaults] = {}

    def add(self, meter: int, fault: Fault) -> ActiveFault:
        """Start ``fault`` on ``meter``, replacing an active fault of the same kind."""
        now = self._clock()
        seconds = fault.seconds
        until = None if seconds is None else now + seconds
        active = ActiveFault(fault=fault, since=now, until=until)
        self._faults.setdefault(meter, {})[fault.kind] = active
        self._refresh(meter)
        return active

    def clear(self, meter: int, kind: str | None = None) -> list[ActiveFault]:
        """Remove the faults of ``meter`` (only ``kind`` when given); return what was removed."""
        faults = self._faults.get(meter, {})
        kinds = list(faults) if kind is None else [kind] if kind in faults else []
        removed = [faults.pop(k) for k in kinds]
        self._refresh(meter)
        return removed

    def active(self, meter: int) -> list[ActiveFault]:
        """Return the faults of ``meter`` that have not run out."""
        self._expire(meter)
        return list(self._faults.get(meter, {}).values())

    def wire(self, meter: int) -> WireFaults | None:
        """Return how ``meter`` answers now, ``None`` when normally (the fast path)."""
        wire = self._wire.get(meter)
        if wire is None:
            return None
        self._expire(meter)
        return self._wire.get(meter)

    def _expire(self, meter: int) -> None:
        faults = self._faults.get(meter)
        if not faults:
            return
        now = self._clock()
        gone = [kind for kind, active in faults.items() if active.expired(now)]
        for kind in gone:
            del faults[kind]
        if gone:
            self._refresh(meter)

    def _refresh(self, meter: int) -> None:
        """Recompute the wire summary of ``meter`` after a change."""
        faults = self._faults.get(meter, {})
        if not faults:
            self._faults.pop(meter, None)
        wire = [active.fault for kind, active in faults.items() if kind in WIRE_KINDS]
        if not wire:
            self._wire.pop(meter, None)
            return
        summary = WireFaults()
        for fault in wire:
            if isinstance(fault, OfflineFault):
                summary = WireFaults(True, summary.delay, summary.exception, summary.garbage)
            elif isinstance(fault, SlowFault):
                delay = fault.delay_ms / 1000.0
                summary = WireFaults(summary.offline, delay, summary.exception, summary.garbage)
            elif isinstance(fault, ExceptionFault):
                summary = WireFaults(summary.offline, summary.delay, fault.code, summary.garbage)
            elif isinstance(fault, GarbageFault):
                summary = WireFaults(summary.offline, summary.delay, summary.exception, fault.mode)
        self._wire[meter] = summary


def until_or_inf(active: ActiveFault) -> float:
    """The fault's end as a number for the physics arrays (``inf`` when open-ended)."""
    return math.inf if active.until is None else active.until

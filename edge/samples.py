"""One poll of one meter, reduced to the quantities the edge agent aggregates.

A :class:`Sample` is what the poller hands to the window aggregator
(:mod:`segs.edge.aggregate`) and the event detector (:mod:`segs.edge.events`).
It is a small frozen slotted dataclass, not a pydantic model: the agent builds
one per meter per poll, so construction must cost about a microsecond.

Time is float epoch seconds (UTC, ``time.time()``) everywhere in the edge's pure
cores; :func:`to_epoch` and :func:`from_epoch` convert at the boundaries.

:func:`sample_from_values` builds a sample from a decoded profile read
(:meth:`segs.protocol.profiles.Profile.decode`) using the canonical register
names. Each quantity of a sample is in one of four states:

* a finite value inside its physical range: good;
* ``None``: the meter's profile has no register for it (not measured; only the
  optional quantities voltage, current, power factor and frequency);
* ``NaN``: the profile has the register but the read gave no value (failed block,
  "not implemented" marker, NaN on the wire, a string where a number belongs);
* a value outside the physical range of :mod:`segs.protocol.limits`, including
  ``inf``: impossible, so the read is garbage (random register words, wrong
  word order, W read as kW).

Quantities combined over phases (mean voltage, mean current, summed power, mean
power factor) are ``NaN`` when any phase the profile has is missing and ``inf``
when any phase is impossible, because a mean or a sum over fewer phases would
quietly misstate the meter and a mean can hide one garbage phase.
:func:`is_impossible` tells whether a sample holds an impossible value; the
aggregator and the event detector both ignore such a sample's values, and the
aggregator decides what each state means for a window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from segs.protocol import limits

__all__ = [
    "MAX_EPOCH",
    "MIN_EPOCH",
    "RawValue",
    "Sample",
    "from_epoch",
    "is_impossible",
    "sample_from_values",
    "to_epoch",
]

RawValue = float | int | str | None
"""A decoded register value, as :meth:`Profile.decode` returns it."""

MIN_EPOCH: Final = limits.MIN_TIME.timestamp()
"""Earliest sample time (epoch s) that can appear on the wire."""
MAX_EPOCH: Final = limits.MAX_TIME.timestamp()
"""Sample times must be before this (epoch s); later ones cannot appear on the wire."""

_NAN: Final = math.nan
_INF: Final = math.inf


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll of one meter. Units: kW (import +, export -), V, A, Hz, kWh; ``at`` epoch s UTC.

    See the module docstring for what ``None``, ``NaN`` and out-of-range values mean.
    """

    meter_id: str
    at: float
    """When the meter was read, UTC epoch seconds (stamp the start of the poll)."""
    power_kw: float
    """Total active power: ``power_total``, else the sum of the phases."""
    import_kwh: float
    """Cumulative import energy counter."""
    export_kwh: float
    """Cumulative export energy counter (0 for a profile without one)."""
    voltage_v: float | None = None
    """Mean line-to-neutral voltage over the phases."""
    current_a: float | None = None
    """Mean current magnitude over the phases."""
    power_factor: float | None = None
    """Total power factor, else the mean of the phases."""
    frequency_hz: float | None = None
    voltages_v: tuple[float, ...] = ()
    """Per-phase line-to-neutral voltages, L1 first, as read (``NaN`` when missing)."""


def to_epoch(moment: datetime) -> float:
    """Return the epoch seconds of an aware datetime; ``ValueError`` for a naive one."""
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: SEGS times are UTC")
    return moment.timestamp()


def from_epoch(at: float) -> datetime:
    """Return the UTC datetime of epoch seconds ``at``."""
    return datetime.fromtimestamp(at, UTC)


def _outside(value: float | None, low: float, high: float) -> bool:
    return value is not None and not math.isnan(value) and not low <= value <= high


def is_impossible(sample: Sample) -> bool:
    """Whether a value of ``sample`` is outside its physical range (a garbage read).

    ``None`` (not measured) and ``NaN`` (missing) are not impossible. Per-phase
    voltages are not checked: :func:`sample_from_values` makes ``voltage_v``
    infinite when one phase is impossible, and a hand-built sample must do the same.
    """
    return (
        _outside(sample.power_kw, -limits.MAX_POWER_KW, limits.MAX_POWER_KW)
        or _outside(sample.import_kwh, 0.0, limits.MAX_ENERGY_KWH)
        or _outside(sample.export_kwh, 0.0, limits.MAX_ENERGY_KWH)
        or _outside(sample.voltage_v, 0.0, limits.MAX_VOLTAGE_V)
        or _outside(sample.current_a, 0.0, limits.MAX_CURRENT_A)
        or _outside(sample.power_factor, -1.0, 1.0)
        or _outside(sample.frequency_hz, limits.MIN_FREQUENCY_HZ, limits.MAX_FREQUENCY_HZ)
    )


def _number(values: Mapping[str, RawValue], name: str) -> float | None:
    """The register's value as a float; ``None`` when absent, ``NaN`` when unusable."""
    if name not in values:
        return None
    raw = values[name]
    if raw is None or isinstance(raw, (str, bool)):
        return _NAN
    value = float(raw)
    return value if math.isfinite(value) else _NAN


def _phase_values(values: Mapping[str, RawValue], prefix: str, phases: int) -> list[float] | None:
    found = [_number(values, f"{prefix}_l{n}") for n in range(1, phases + 1)]
    present = [v for v in found if v is not None]
    return present or None


def _combine(present: list[float] | None, low: float, high: float, *, mean: bool) -> float | None:
    """Mean or sum of per-phase values: NaN if one is missing, inf if one is impossible."""
    if present is None:
        return None
    if any(math.isnan(v) for v in present):
        return _NAN
    if any(not low <= v <= high for v in present):
        return _INF
    total = math.fsum(present)
    return total / len(present) if mean else total


def sample_from_values(
    meter_id: str, at: float, values: Mapping[str, RawValue], phases: int
) -> Sample:
    """Build a :class:`Sample` from one decoded poll (canonical register names).

    ``phases`` is the profile's phase count (1..3); per-phase registers beyond it
    are ignored. Power is ``power_total`` when the profile has it and it has a
    value, else the sum of the phase powers; power factor likewise with
    ``power_factor_total``. Current is taken as a magnitude (some meters sign it
    with the direction of power). A profile without an energy counter reports
    0 kWh for it (an import-only meter); with no power register at all, power is
    ``NaN``.
    """
    if phases not in (1, 2, 3):
        raise ValueError(f"meter {meter_id!r}: phases must be 1, 2 or 3, got {phases!r}")

    power = _number(values, "power_total")
    if power is None or math.isnan(power):
        summed = _combine(
            _phase_values(values, "power", phases),
            -limits.MAX_POWER_KW,
            limits.MAX_POWER_KW,
            mean=False,
        )
        if summed is not None and (power is None or not math.isnan(summed)):
            power = summed
    if power is None:
        power = _NAN

    pf = _number(values, "power_factor_total")
    if pf is None or math.isnan(pf):
        phase_pf = _combine(_phase_values(values, "power_factor", phases), -1.0, 1.0, mean=True)
        if phase_pf is not None and (pf is None or not math.isnan(phase_pf)):
            pf = phase_pf

    currents = _phase_values(values, "current", phases)
    if currents is not None:
        currents = [abs(c) for c in currents]

    voltages = [_number(values, f"voltage_l{n}") for n in range(1, phases + 1)]
    frequency = _number(values, "frequency")
    import_kwh = _number(values, "import_energy")
    export_kwh = _number(values, "export_energy")

    return Sample(
        meter_id=meter_id,
        at=float(at),
        power_kw=power,
        import_kwh=0.0 if import_kwh is None else import_kwh,
        export_kwh=0.0 if export_kwh is None else export_kwh,
        voltage_v=_combine(
            [v for v in voltages if v is not None] or None,
            0.0,
            limits.MAX_VOLTAGE_V,
            mean=True,
        ),
        current_a=_combine(currents, 0.0, limits.MAX_CURRENT_A, mean=True),
        power_factor=pf,
        frequency_hz=frequency,
        voltages_v=tuple(_NAN if v is None else v for v in voltages),
    )

"""The fleet model: household load, PV, voltage, frequency and energy counters of N meters.

Pure numpy, no I/O and no clock of its own: :meth:`Fleet.step` takes the time,
so tests drive it with any sequence of instants. For a given seed and the same
sequence of ``step`` calls the values are identical.

Every array has one row per meter; per-phase arrays have three columns (L1..L3),
and a single-phase meter keeps L2 and L3 at zero. Units: kW, kvar, kVA, V, A, Hz,
kWh (kvarh, kVAh). Active power is positive when importing, negative when exporting;
power factors are signed ratios ``P / S`` (negative while exporting).

Energy is exact by construction: the power set by one ``step`` is held until the
next one, and the next ``step`` first adds ``P * dt`` to the counters (float64),
so over any interval the counter difference is the integral of the served power.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

__all__ = [
    "COUNTERS",
    "NOMINAL_FREQUENCY",
    "NOMINAL_VOLTAGE",
    "Fleet",
    "MeterSpec",
    "RegionSpec",
    "meter_seed",
]

Array = npt.NDArray[np.float64]

NOMINAL_VOLTAGE: Final = 230.0
NOMINAL_FREQUENCY: Final = 50.0

COUNTERS: Final = (
    "import",
    "export",
    "import_apparent",
    "export_apparent",
    "reactive_q1",
    "reactive_q2",
    "reactive_q3",
    "reactive_q4",
)
"""Energy counters each meter keeps, as total (column 0) and per phase (columns 1..3).

``import``/``export`` integrate positive/negative active power (kWh); the apparent
counters integrate S while importing/exporting (kVAh); ``reactive_qN`` integrate
|Q| in quadrant N of the P-Q plane (kvarh): Q1 = import inductive, Q2 = export
inductive, Q3 = export capacitive, Q4 = import capacitive. Totals integrate the
meter's net total power (a "saldierend" meter), phases their own power.
"""

_IMPORT, _EXPORT, _VA_IMPORT, _VA_EXPORT, _Q1, _Q2, _Q3, _Q4 = range(len(COUNTERS))

# Appliances: rating (kW, 1-phase meter / 3-phase meter), power factor, mean on
# time (s), starts per day, whether starts follow the household's activity.
_APPLIANCES: Final = (
    # name       kW 1ph  kW 3ph  pf    on (s)  starts/day  follows activity
    ("fridge", 0.12, 0.15, 0.80, 900.0, 48.0, False),
    ("kettle", 2.0, 2.2, 1.00, 180.0, 4.0, True),
    ("cooking", 2.0, 2.5, 1.00, 1800.0, 1.5, True),
    ("washing", 1.0, 1.2, 0.85, 3600.0, 0.5, True),
    ("ev", 3.7, 11.0, 0.99, 7200.0, 0.4, True),
)
_EV: Final = 4
_SECONDS_PER_DAY: Final = 86400.0
_OUTAGE_VOLTAGE: Final = 50.0
"""Below this (only reachable by a voltage fault) a phase is dead: no power flows."""

# Ornstein-Uhlenbeck processes: (time constant s, standard deviation).
_FEEDER_OU: Final = (600.0, 1.5)  # regional feeder voltage, V
_FREQUENCY_OU: Final = (30.0, 0.03)  # grid frequency, Hz
_CLOUD_OU: Final = (900.0, 0.25)  # regional cloudiness around 0.75
_ACTIVITY_OU: Final = (300.0, 0.15)  # per-household log activity


@dataclass(frozen=True)
class RegionSpec:
    """What the physics needs to know about a region."""

    timezone: str = "UTC"
    voltage_offset: float = 0.0


@dataclass(frozen=True)
class MeterSpec:
    """What the physics needs to know about a meter."""

    phases: int
    region: int
    """Index into the fleet's regions."""
    prosumer: bool
    seed: int
    """The meter's own seed: its parameters depend on it alone (see :func:`meter_seed`)."""


def meter_seed(fleet_seed: int, meter_id: str) -> int:
    """Return a meter's default seed: the same for a (fleet seed, meter id) in any fleet."""
    return (fleet_seed * 1_000_003 + zlib.crc32(meter_id.encode())) % 2**63


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _ou(x: Array, dt: float, tau: float, sigma: float, rng: np.random.Generator) -> Array:
    """Advance an Ornstein-Uhlenbeck process exactly over ``dt`` (mean 0)."""
    decay = math.exp(-dt / tau)
    return x * decay + sigma * math.sqrt(1.0 - decay * decay) * rng.standard_normal(x.shape)


def _bump(hour: Array, center: Array, width: Array) -> Array:
    """A daily Gaussian bump, wrapped around midnight."""
    delta = (hour - center + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (delta / width) ** 2)


@dataclass(frozen=True)
class _Drawn:
    """One meter's parameters, drawn from its own seed."""

    params: tuple[float, ...]
    weights: Array
    rating: Array
    appliance_phase: Array
    counters: Array
    """Starting counters, (len(COUNTERS), 4)."""


def _draw_meter(spec: MeterSpec) -> _Drawn:
    rng = np.random.default_rng(spec.seed)
    three = spec.phases == 3
    size = rng.uniform(0.6, 1.6) if three else rng.uniform(0.4, 1.0)
    kwp = (rng.uniform(4.0, 10.0) if three else rng.uniform(1.5, 4.0)) * spec.prosumer
    params = (
        size * rng.uniform(0.08, 0.25),  # 0 base kW
        size * rng.uniform(0.2, 0.9),  # 1 morning peak kW
        rng.normal(7.0, 0.6),  # 2 morning peak hour
        rng.uniform(0.6, 1.2),  # 3 morning peak width h
        size * rng.uniform(0.05, 0.4),  # 4 midday kW
        size * rng.uniform(0.5, 1.6),  # 5 evening peak kW
        rng.normal(19.0, 0.8),  # 6 evening peak hour
        rng.uniform(1.0, 2.0),  # 7 evening peak width h
        rng.uniform(0.88, 0.97),  # 8 power factor of the base load
        kwp,  # 9 PV peak kW
        rng.uniform(0.75, 0.9),  # 10 PV system efficiency
        rng.uniform(-2.5, 2.5),  # 11 voltage offset on the feeder, V
        rng.uniform(0.2, 0.6),  # 12 voltage drop per kW of phase load, V
        rng.uniform(-1.0, 1.0),  # 13..15 per-phase voltage offsets, V
        rng.uniform(-1.0, 1.0),
        rng.uniform(-1.0, 1.0),
        size,  # 16 household size
    )
    weights = rng.dirichlet([3.0, 3.0, 3.0]) if three else np.array([1.0, 0.0, 0.0])
    has_ev = rng.random() < (0.25 if three else 0.1)
    rating = np.zeros(len(_APPLIANCES))
    appliance_phase = np.zeros((len(_APPLIANCES), 3))
    for a, (_, kw1, kw3, *_rest) in enumerate(_APPLIANCES):
        present = a != _EV or has_ev
        rating[a] = (kw3 if three else kw1) * rng.uniform(0.8, 1.2) * present
        if not three:
            appliance_phase[a, 0] = 1.0
        elif a == _EV:
            appliance_phase[a, :] = 1.0 / 3.0
        else:
            appliance_phase[a, rng.integers(0, 3)] = 1.0
    imported = size * rng.uniform(1000.0, 30000.0)
    exported = kwp * rng.uniform(300.0, 6000.0)
    start = np.array(
        [
            imported,
            exported,
            1.08 * imported,
            exported,
            0.25 * imported,
            0.02 * exported,
            0.01 * exported,
            0.01 * imported,
        ]
    )
    counters = np.empty((len(COUNTERS), 4))
    counters[:, 0] = start
    counters[:, 1:] = start[:, None] * weights[None, :]
    return _Drawn(params, weights, rating, appliance_phase, counters)


class Fleet:
    """N meters, stepped together.

    The constructor draws each meter's parameters (size, daily profile, appliances,
    PV, feeder position, starting counters) from its own seed; :meth:`step` moves
    everything to a new instant.
    """

    def __init__(
        self,
        meters: Sequence[MeterSpec],
        regions: Sequence[RegionSpec],
        *,
        seed: int,
    ) -> None:
        if not meters:
            raise ValueError("a fleet needs at least one meter")
        if not regions:
            raise ValueError("a fleet needs at least one region")
        for index, spec in enumerate(meters):
            if spec.phases not in (1, 3):
                raise ValueError(f"meter {index}: phases must be 1 or 3, got {spec.phases}")
            if not 0 <= spec.region < len(regions):
                raise ValueError(f"meter {index}: region {spec.region} is not in the fleet")
        n = len(meters)
        self.size = n
        self.regions = tuple(regions)
        self.region = np.array([m.region for m in meters], dtype=np.intp)
        self.phases = np.array([m.phases for m in meters], dtype=np.int64)
        self.phase_mask = np.zeros((n, 3), dtype=bool)
        self.phase_mask[:, 0] = True
        self.phase_mask[self.phases == 3, 1:] = True
        self._rng = np.random.default_rng([seed, 0x5E65])

        self._draw(meters, regions)
        self._feeder = _FEEDER_OU[1] * self._rng.standard_normal(len(regions))
        self._cloud = _CLOUD_OU[1] * self._rng.standard_normal(len(regions))
        self._grid = _FREQUENCY_OU[1] * self._rng.standard_normal(1)
        self._activity = _ACTIVITY_OU[1] * self._rng.standard_normal(n)
        self._on = np.zeros((n, len(_APPLIANCES)), dtype=bool)

        """Energy counters, shape (len(COUNTERS), N, 4): kWh, kVAh, kvarh."""
        self.power = np.zeros((n, 3))
        self.reactive = np.zeros((n, 3))
        self.apparent = np.zeros((n, 3))
        self.power_factor = np.ones((n, 3))
        self.voltage = np.zeros((n, 3))
        self.current = np.zeros((n, 3))
        self.frequency = np.full(n, NOMINAL_FREQUENCY)
        self.time = math.nan
        """The instant of the last step (seconds since the epoch); NaN before the first."""
        self.steps = 0

        # Fault hooks (see segs.sim.faults): a spike multiplies the household load,
        # a voltage fault pins the voltage; both until their deadline.
        self.spike_factor = np.ones(n)
        self.spike_until = np.zeros(n)
        self.voltage_value = np.full(n, np.nan)
        self.voltage_until = np.zeros(n)
        self._pending_resets: dict[int, float | None] = {}

    def _draw(self, meters: Sequence[MeterSpec], regions: Sequence[RegionSpec]) -> None:
        """Draw each meter's parameters from its own generator (processes start stationary)."""
        drawn = [_draw_meter(spec) for spec in meters]
        params = np.array([d.params for d in drawn])
        self._base, self._morning, self._morning_h, self._morning_w = params[:, 0:4].T
        self._midday, self._evening, self._evening_h, self._evening_w = params[:, 4:8].T
        self._base_tan = np.tan(np.arccos(params[:, 8]))
        self._pv_kwp, self._pv_eff = params[:, 9], params[:, 10]
        self._v_offset, self._v_drop = params[:, 11], params[:, 12]
        self._v_phase = params[:, 13:16] * self.phase_mask
        self.prosumer = self._pv_kwp > 0
        self._weights = np.array([d.weights for d in drawn])
        self._rating = np.array([d.rating for d in drawn])
        self._appliance_phase = np.array([d.appliance_phase for d in drawn])
        self._appliance_tan = np.tan(np.arccos(np.array([a[3] for a in _APPLIANCES])))
        self._mean_on = np.array([a[4] for a in _APPLIANCES])
        self._starts = np.array([a[5] for a in _APPLIANCES]) / _SECONDS_PER_DAY
        self._follows = np.array([a[6] for a in _APPLIANCES])
        day = np.linspace(0.0, 24.0, 96, endpoint=False)[:, None]
        self._activity_mean = self._shape(day).mean(axis=0)
        self._region_offset = np.array([r.voltage_offset for r in regions])
        self.counters = np.ascontiguousarray(
            np.array([d.counters for d in drawn]).transpose(1, 0, 2)
        )
        """Energy counters, shape (len(COUNTERS), N, 4): kWh, kVAh, kvarh."""

    # --- faults --------------------------------------------------------------------------------

    def set_spike(self, meter: int, factor: float, until: float) -> None:
        """Multiply meter ``meter``'s load by ``factor`` from the next step until ``until``."""
        self.spike_factor[meter] = factor
        self.spike_until[meter] = until

    def set_voltage(self, meter: int, value: float, until: float) -> None:
        """Hold meter ``meter``'s voltage at ``value`` from the next step until ``until``."""
        self.voltage_value[meter] = value
        self.voltage_until[meter] = until

    def clear_spike(self, meter: int) -> None:
        """End a spike of meter ``meter`` (from the next step)."""
        self.spike_factor[meter] = 1.0
        self.spike_until[meter] = 0.0

    def clear_voltage(self, meter: int) -> None:
        """End a voltage fault of meter ``meter`` (from the next step)."""
        self.voltage_value[meter] = np.nan
        self.voltage_until[meter] = 0.0

    def reset_counters(self, meter: int, start_kwh: float | None = None) -> None:
        """Swap meter ``meter``: at the next step its counters restart near zero.

        The energy of the interval before that step is still counted on the old
        counters (it was consumed before the swap); the new counters start at
        ``start_kwh``, or at a few Wh when ``None``.
        """
        self._pending_resets[meter] = start_kwh

    # --- stepping ------------------------------------------------------------------------------

    def step(self, t: float, dt: float) -> None:
        """Integrate the held power over ``dt`` seconds, then move every meter to instant ``t``."""
        if not math.isfinite(t) or not math.isfinite(dt) or dt < 0:
            raise ValueError(f"step needs a finite time and dt >= 0, got t={t!r}, dt={dt!r}")
        if dt > 0:
            self._integrate(dt)
        for meter, start in self._pending_resets.items():
            self.counters[:, meter, :] = (
                start if start is not None else self._rng.uniform(0.0, 0.01, (len(COUNTERS), 4))
            )
            self.counters[:, meter, 1:] *= self.phase_mask[meter]
        self._pending_resets.clear()
        hours, day_of_year = self._local_time(t)
        hour = hours[self.region]
        first = self.steps == 0
        self._advance_processes(dt)
        self._switch_appliances(hour, dt, first=first)

        load_p, load_q = self._household_load(hour)
        spiking = t < self.spike_until
        factor = np.where(spiking, self.spike_factor, 1.0)[:, None]
        load_p *= factor
        load_q *= factor
        pv = self._pv(hours, day_of_year)
        p = (load_p - pv) * self.phase_mask
        q = load_q * self.phase_mask

        evening = _bump(hours, np.full_like(hours, 19.5), np.full_like(hours, 2.0))
        feeder = self._region_offset + self._feeder - 2.0 * evening
        volts = (
            NOMINAL_VOLTAGE
            + (feeder[self.region] + self._v_offset)[:, None]
            + self._v_phase
            - self._v_drop[:, None] * p
            + 0.15 * self._rng.standard_normal((self.size, 3))
        )
        volts = np.clip(volts, 195.0, 260.0)
        pinned = t < self.voltage_until
        volts = np.where(pinned[:, None], self.voltage_value[:, None], volts) * self.phase_mask
        # A sag this deep is an outage: loads and inverters drop out, nothing flows.
        dark = volts < _OUTAGE_VOLTAGE
        p = np.where(dark, 0.0, p)
        q = np.where(dark, 0.0, q)
        s = np.hypot(p, q)
        self.power = p
        self.reactive = q
        self.apparent = s
        self.power_factor = np.divide(p, s, out=np.ones_like(p), where=s > 1e-9)
        self.voltage = volts
        self.current = np.divide(s * 1000.0, volts, out=np.zeros_like(s), where=~dark)
        grid = NOMINAL_FREQUENCY + self._grid[0]
        noise = 0.002 * self._rng.standard_normal(self.size)
        self.frequency = np.clip(grid + noise, 49.8, 50.2)
        self.time = t
        self.steps += 1

    def _integrate(self, dt: float) -> None:
        hours = dt / 3600.0
        c = self.counters
        p_all = np.empty((self.size, 4))
        q_all = np.empty((self.size, 4))
        s_all = np.empty((self.size, 4))
        p_all[:, 0] = self.power.sum(axis=1)
        q_all[:, 0] = self.reactive.sum(axis=1)
        s_all[:, 0] = self.apparent.sum(axis=1)
        p_all[:, 1:] = self.power
        q_all[:, 1:] = self.reactive
        s_all[:, 1:] = self.apparent
        importing = p_all >= 0.0
        inductive = q_all >= 0.0
        c[_IMPORT] += np.where(importing, p_all, 0.0) * hours
        c[_EXPORT] += np.where(importing, 0.0, -p_all) * hours
        c[_VA_IMPORT] += np.where(importing, s_all, 0.0) * hours
        c[_VA_EXPORT] += np.where(importing, 0.0, s_all) * hours
        q_abs = np.abs(q_all) * hours
        c[_Q1] += np.where(importing & inductive, q_abs, 0.0)
        c[_Q2] += np.where(~importing & inductive, q_abs, 0.0)
        c[_Q3] += np.where(~importing & ~inductive, q_abs, 0.0)
        c[_Q4] += np.where(importing & ~inductive, q_abs, 0.0)

    def _local_time(self, t: float) -> tuple[Array, Array]:
        """Local hour of day and day of year of each region at ``t``."""
        hours = np.empty(len(self.regions))
        days = np.empty(len(self.regions))
        for index, region in enumerate(self.regions):
            local = datetime.fromtimestamp(t, _zone(region.timezone))
            hours[index] = (
                local.hour + local.minute / 60.0 + (local.second + local.microsecond / 1e6) / 3600.0
            )
            days[index] = local.timetuple().tm_yday
        return hours, days

    def _advance_processes(self, dt: float) -> None:
        if dt <= 0:
            return
        self._feeder = _ou(self._feeder, dt, *_FEEDER_OU, self._rng)
        self._cloud = _ou(self._cloud, dt, *_CLOUD_OU, self._rng)
        self._grid = _ou(self._grid, dt, *_FREQUENCY_OU, self._rng)
        self._activity = _ou(self._activity, dt, *_ACTIVITY_OU, self._rng)

    def _shape(self, hour: Array) -> Array:
        """The household's smooth daily load (kW) without appliances."""
        load: Array = (
            self._base
            + self._morning * _bump(hour, self._morning_h, self._morning_w)
            + self._midday
            * _bump(hour, np.full_like(self._base, 12.5), np.full_like(self._base, 2.0))
            + self._evening * _bump(hour, self._evening_h, self._evening_w)
        )
        return load

    def _switch_appliances(self, hour: Array, dt: float, *, first: bool) -> None:
        activity = (self._shape(hour) / self._activity_mean)[:, None]
        rate = self._starts[None, :] * np.where(self._follows[None, :], activity, 1.0)
        present = self._rating > 0
        if first:
            # Start in the steady state: on with probability rate*T / (1 + rate*T).
            busy = rate * self._mean_on
            self._on = present & (self._rng.random(self._on.shape) < busy / (1.0 + busy))
            return
        if dt <= 0:
            return
        start = self._rng.random(self._on.shape) < -np.expm1(-rate * dt)
        stop = self._rng.random(self._on.shape) < -np.expm1(-dt / self._mean_on)
        self._on = present & np.where(self._on, ~stop, start)

    def _household_load(self, hour: Array) -> tuple[Array, Array]:
        smooth = self._shape(hour) * np.exp(self._activity)
        p = smooth[:, None] * self._weights
        q = p * self._base_tan[:, None]
        running = np.where(self._on, self._rating, 0.0)
        p_app = np.einsum("nk,nkp->np", running, self._appliance_phase)
        q_app = np.einsum("nk,nkp->np", running * self._appliance_tan, self._appliance_phase)
        return p + p_app, q + q_app

    def _pv(self, hours: Array, day_of_year: Array) -> Array:
        """PV generation per phase (kW): a clear-sky day arc times regional clouds."""
        season = np.sin(2.0 * np.pi * (day_of_year - 80.0) / 365.0)
        daylight = 12.0 + 4.0 * season
        sunrise = 12.5 - daylight / 2.0
        arc = np.sin(np.pi * np.clip((hours - sunrise) / daylight, 0.0, 1.0)) ** 1.2
        sky = np.clip(0.75 + self._cloud, 0.1, 1.0) * (0.75 + 0.25 * season)
        region_kw = arc * sky
        kw = self._pv_kwp * self._pv_eff * region_kw[self.region]
        three = (self.phases == 3)[:, None]
        split = np.where(three, 1.0 / 3.0, np.array([1.0, 0.0, 0.0])[None, :])
        result: Array = kw[:, None] * split
        return result

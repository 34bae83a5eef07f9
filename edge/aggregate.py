"""Samples → UTC-aligned windows: the pure core of the edge agent's aggregation.

No I/O, no clock: every function takes the time it works on, in float epoch
seconds (UTC), so tests drive it with synthetic streams.

Public surface
--------------
:func:`check_window_seconds`, :func:`window_start`, :func:`window_start_utc`
    Alignment: window ``k`` covers ``[k*W, (k+1)*W)`` epoch seconds, and ``W``
    divides a day (and is at most ``limits.MAX_WINDOW_SECONDS``), so windows
    never straddle midnight UTC.
:func:`counter_step`
    One step of a cumulative energy counter: the energy added, or ``None`` for a
    discontinuity (reset). Shared with :mod:`segs.edge.events`.
:class:`MeterAccumulator`
    One meter's open window in preallocated numpy arrays, and the energy counter
    state it carries from window to window.
:class:`Aggregator`
    Routes samples of many meters to their windows and closes windows on time.

Typical loop (the agent's shell)::

    agg = Aggregator(60, 1.0, ["m1", "m2"])
    agg.seed_counters("m1", 1234.5, 12.0, last_window_end)   # optional, after a restart
    for each poll round:
        for each meter: agg.add(sample)          # or agg.mark_offline(meter_id, at)
        windows = agg.close_due(clock())         # list[segs.protocol.Window]

Validation policy (per sample)
------------------------------
``NaN`` means "no value" and an out-of-range value means "impossible"
(see :mod:`segs.edge.samples`). Ranges are the protocol's
(:mod:`segs.protocol.limits`): ``|power| <= 10 000 kW``, counters ``0..1e10`` kWh,
voltage ``0..1000`` V, current ``0..10 000`` A, power factor ``-1..1``,
frequency ``40..70`` Hz.

* Power or either counter missing or impossible → the whole sample is dropped:
  a window cannot use a sample without them.
* Voltage, current, power factor or frequency **missing** → only that field is
  left out of the window's average; the rest of the sample counts.
* Any of them **impossible** → the whole sample is dropped. An impossible value
  means the read returned garbage (random register words, wrong word order, a
  unit mix-up), and the other values of the same read cannot be trusted: random
  words are in range for power or a counter about half the time, and one
  garbage counter would bill garbage. This includes 0 Hz: an all-zero read (a
  Modbus gateway answering zeros for a meter that timed out) would otherwise
  look like a counter reset, and a meter fed by the mains it measures cannot
  answer without voltage anyway.
* A field the profile does not have (``None`` in the sample) is simply absent.

Every dropped sample and every missing field sets ``invalid_values_dropped`` on
the window; nothing invalid is ever published.

Energy
------
Each counter is tracked as a high-water mark since its last reset: a decrease
within ``max(COUNTER_ABS_TOLERANCE_KWH, COUNTER_REL_TOLERANCE * counter)`` is
float32 read noise and is ignored (the mark does not go down, so noise is never
counted twice). A larger decrease, or an increase faster than
``limits.MAX_POWER_KW`` could produce, is a discontinuity: the step contributes
no energy, the counter restarts from the new value and the window is flagged
``counter_reset``. Deltas are therefore never negative and never include a
jump.

A window reports as ``import_kwh``/``export_kwh`` the counter mark at its last
valid sample (the last sample's value unless that was a noise dip). Its delta is
that mark minus the previous window's reported mark (in a meter's first window:
minus its first sample), plus the energy of the segments before any reset in
the window. Without resets, ``delta[k] == import_kwh[k] - import_kwh[k-1]``
exactly and deltas telescope, so windows lost or never produced (meter offline
for a whole window) do not lose billed energy: the next window's delta covers
the gap. After a restart, :meth:`Aggregator.seed_counters` with the last
published window's counters extends this across the downtime.

Windows and time
----------------
A sample at ``t`` belongs to the window containing ``t``. A sample for a later
window closes the meter's open window (returned by the next
:meth:`Aggregator.close_due`). :meth:`Aggregator.close_due` closes every open
window whose end is ``<= now - grace`` whether or not more samples come, so a
window closes on time when its meter goes offline, and the meter starts afresh
with its next sample. ``grace`` defaults to one poll interval, so a sample
stamped just before a window's end that is processed just after it still
lands. A sample for a window already closed is dropped and counted
(``Aggregator.samples_late``), never published as a second window with the same
``(meter_id, window_start)``. A window needs at least one valid sample;
otherwise no window is produced (the gap is visible to the hub). Samples
stamped outside the protocol's years (a clock not yet set) are dropped and
counted (``samples_bad_time``).

``samples_expected = round(window_seconds / poll_interval_s)``; ``samples_got``
is the number of valid samples, capped at ``samples_expected`` (poll jitter can
put one extra sample in a window); ``partial`` is set exactly when
``samples_got < samples_expected``. ``meter_offline`` is set on a window that
overlaps a period between :meth:`Aggregator.mark_offline` and the meter's next
sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np
import numpy.typing as npt

from segs.edge.samples import MAX_EPOCH, MIN_EPOCH, Sample, from_epoch
from segs.protocol import limits
from segs.protocol.ids import validate_id
from segs.protocol.messages import QualityFlag, Window

__all__ = [
    "COUNTER_ABS_TOLERANCE_KWH",
    "COUNTER_REL_TOLERANCE",
    "COUNTER_SLACK_S",
    "Aggregator",
    "MeterAccumulator",
    "check_window_seconds",
    "counter_step",
    "window_start",
    "window_start_utc",
]

COUNTER_ABS_TOLERANCE_KWH: Final = 0.01
"""A counter decrease up to this many kWh is read noise, not a reset."""
COUNTER_REL_TOLERANCE: Final = 1e-6
"""A counter decrease up to this fraction of the counter is read noise (float32 has ~7 digits)."""
COUNTER_SLACK_S: Final = 1.0
"""Seconds added to the time between two reads when bounding a plausible counter increase."""

_SECONDS_PER_DAY: Final = 86_400
_NAN: Final = math.nan
_MAX_P: Final = limits.MAX_POWER_KW
_MAX_E: Final = limits.MAX_ENERGY_KWH
_MAX_V: Final = limits.MAX_VOLTAGE_V
_MAX_A: Final = limits.MAX_CURRENT_A
_MIN_F: Final = limits.MIN_FREQUENCY_HZ
_MAX_F: Final = limits.MAX_FREQUENCY_HZ

# Columns of MeterAccumulator's buffer, with the physical range of each field.
_POWER, _VOLTAGE, _CURRENT, _PF, _FREQ = range(5)
_BOUNDS: Final = (
    (-_MAX_P, _MAX_P),
    (0.0, _MAX_V),
    (0.0, _MAX_A),
    (-1.0, 1.0),
    (_MIN_F, _MAX_F),
)

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- alignment


def check_window_seconds(window_seconds: int) -> int:
    """Return ``window_seconds`` if it divides a day and is 1..``MAX_WINDOW_SECONDS``."""
    if (
        isinstance(window_seconds, bool)
        or not isinstance(window_seconds, int)
        or not 1 <= window_seconds <= limits.MAX_WINDOW_SECONDS
        or _SECONDS_PER_DAY % window_seconds
    ):
        raise ValueError(
            f"window_seconds must be an integer from 1 to {limits.MAX_WINDOW_SECONDS} that "
            f"divides 86400, got {window_seconds!r}"
        )
    return window_seconds


def window_start(t: float, window_seconds: int) -> int:
    """Return the start (epoch s) of the ``window_seconds`` window containing epoch ``t``."""
    check_window_seconds(window_seconds)
    if not math.isfinite(t):
        raise ValueError(f"time must be finite, got {t!r}")
    return int(t // window_seconds) * window_seconds


def window_start_utc(t: float, window_seconds: int) -> datetime:
    """Return the start of the window containing epoch ``t`` as a UTC datetime."""
    return from_epoch(window_start(t, window_seconds))


# ------------------------------------------------------------------------------ energy


def counter_step(previous: float, current: float, elapsed_s: float) -> float | None:
    """Energy (kWh) a cumulative counter gained from ``previous`` to ``current``.

    ``elapsed_s`` is the time between the two reads. Returns ``0.0`` for no change
    or a decrease within the float32 noise tolerance, the increase when it is
    physically possible (at most ``limits.MAX_POWER_KW`` over ``elapsed_s +
    COUNTER_SLACK_S``), and ``None`` for a discontinuity: a real decrease (meter
    replaced or reset) or an impossible jump (garbage, or a swap to a meter with
    a higher counter).
    """
    change = current - previous
    tolerance = max(COUNTER_ABS_TOLERANCE_KWH, COUNTER_REL_TOLERANCE * abs(previous))
    if change < 0.0:
        return 0.0 if -change <= tolerance else None
    possible = _MAX_P * (max(elapsed_s, 0.0) + COUNTER_SLACK_S) / 3600.0 + tolerance
    return change if change <= possible else None


# ------------------------------------------------------------------------- accumulator


class MeterAccumulator:
    """One meter's open window (numpy buffers) plus the counter state carried across windows.

    :meth:`add` validates and appends a sample (a handful of float comparisons and
    five scalar stores); :meth:`close` reduces the buffered samples into a
    :class:`~segs.protocol.messages.Window` and starts the next window. Which
    window a sample belongs to is the caller's business (:class:`Aggregator`).
    """

    __slots__ = (
        "_bank_e",
        "_bank_i",
        "_buf",
        "_cols",
        "_dropped",
        "_flag_invalid",
        "_flag_offline",
        "_flag_reset",
        "_n",
        "_ref_e",
        "_ref_i",
        "_ref_t",
        "_seg_e",
        "_seg_i",
        "meter_id",
        "samples_expected",
        "window_seconds",
    )

    def __init__(
        self,
        meter_id: str,
        *,
        window_seconds: int,
        samples_expected: int,
        capacity: int | None = None,
    ) -> None:
        self.meter_id = validate_id(meter_id, kind="meter id")
        self.window_seconds = check_window_seconds(window_seconds)
        if not 1 <= samples_expected <= limits.MAX_SAMPLES_PER_WINDOW:
            raise ValueError(
                f"meter {meter_id!r}: samples_expected must be 1..{limits.MAX_SAMPLES_PER_WINDOW},"
                f" got {samples_expected}"
            )
        self.samples_expected = samples_expected
        if capacity is None:
            capacity = samples_expected + max(4, samples_expected // 8)
        self._buf: FloatArray = np.empty((len(_BOUNDS), max(capacity, 1)))
        self._cols: tuple[FloatArray, ...] = tuple(self._buf)
        self._n = 0
        self._dropped = 0
        self._flag_invalid = False
        self._flag_offline = False
        self._flag_reset = False
        # Counter state, carried across windows: high-water marks since the last reset
        # (_ref_*), the mark when the current window's last segment began (_seg_*) and
        # the energy of the window's segments closed by resets (_bank_*).
        self._ref_i: float | None = None
        self._ref_e = 0.0
        self._ref_t = 0.0
        self._seg_i = 0.0
        self._seg_e = 0.0
        self._bank_i = 0.0
        self._bank_e = 0.0

    @property
    def samples(self) -> int:
        """Valid samples in the open window."""
        return self._n

    @property
    def dropped(self) -> int:
        """Samples dropped as invalid from the open window."""
        return self._dropped

    @property
    def counters(self) -> tuple[float, float] | None:
        """The import/export counter marks carried so far (kWh), ``None`` before any sample."""
        if self._ref_i is None:
            return None
        return (self._ref_i, self._ref_e)

    def seed_counters(self, import_kwh: float, export_kwh: float, at: float) -> None:
        """Start the counter marks from a previous run's last published window.

        After a restart, the first window's deltas then cover the downtime too, so
        deltas keep summing to the counter difference across restarts. Only
        allowed before the first sample; ``ValueError`` otherwise or for counters
        outside ``0..MAX_ENERGY_KWH``.
        """
        if self._ref_i is not None:
            raise ValueError(f"meter {self.meter_id!r}: counters are already running")
        if not (0.0 <= import_kwh <= _MAX_E and 0.0 <= export_kwh <= _MAX_E):
            raise ValueError(
                f"meter {self.meter_id!r}: counters must be 0..{_MAX_E:g} kWh, "
                f"got {import_kwh!r}, {export_kwh!r}"
            )
        self._ref_i = self._seg_i = float(import_kwh)
        self._ref_e = self._seg_e = float(export_kwh)
        self._ref_t = float(at)

    def flag_offline(self) -> None:
        """Mark the open window ``meter_offline``."""
        self._flag_offline = True

    def add(self, sample: Sample) -> bool:
        """Validate ``sample`` and append it to the open window; ``False`` when it was dropped."""
        power = sample.power_kw
        imp = sample.import_kwh
        exp = sample.export_kwh
        if not (-_MAX_P <= power <= _MAX_P and 0.0 <= imp <= _MAX_E and 0.0 <= exp <= _MAX_E):
            return self._drop()
        volt = sample.voltage_v
        amps = sample.current_a
        pf = sample.power_factor
        freq = sample.frequency_hz
        if not (
            volt is not None
            and 0.0 <= volt <= _MAX_V
            and amps is not None
            and 0.0 <= amps <= _MAX_A
            and pf is not None
            and -1.0 <= pf <= 1.0
            and freq is not None
            and _MIN_F <= freq <= _MAX_F
        ):
            # Slow path: something is absent, missing or impossible.
            fields: list[float] = []
            for value, (low, high) in zip((volt, amps, pf, freq), _BOUNDS[1:], strict=True):
                if value is None:
                    fields.append(_NAN)
                    continue
                if math.isnan(value):  # missing, leave it out of the average
                    self._flag_invalid = True
                elif not low <= value <= high:
                    return self._drop()
                fields.append(value)
            volt, amps, pf, freq = fields

        n = self._n
        if n == self._buf.shape[1]:
            self._grow()
        cols = self._cols
        cols[_POWER][n] = power
        cols[_VOLTAGE][n] = volt
        cols[_CURRENT][n] = amps
        cols[_PF][n] = pf
        cols[_FREQ][n] = freq
        self._n = n + 1
        self._count_energy(imp, exp, sample.at)
        return True

    def _drop(self) -> bool:
        self._dropped += 1
        self._flag_invalid = True
        return False

    def _grow(self) -> None:
        grown = np.empty((self._buf.shape[0], self._buf.shape[1] * 2))
        grown[:, : self._n] = self._buf[:, : self._n]
        self._buf = grown
        self._cols = tuple(grown)

    def _count_energy(self, imp: float, exp: float, at: float) -> None:
        ref_i = self._ref_i
        if ref_i is None:
            self._ref_i = self._seg_i = imp
            self._ref_e = self._seg_e = exp
            self._ref_t = at
            return
        elapsed = at - self._ref_t
        step = counter_step(ref_i, imp, elapsed)
        if step is None:
            self._bank_i += ref_i - self._seg_i
            self._ref_i = self._seg_i = imp
            self._flag_reset = True
        elif step > 0.0:
            self._ref_i = imp
        step = counter_step(self._ref_e, exp, elapsed)
        if step is None:
            self._bank_e += self._ref_e - self._seg_e
            self._ref_e = self._seg_e = exp
            self._flag_reset = True
        elif step > 0.0:
            self._ref_e = exp
        self._ref_t = at

    def close(self, window_start: int) -> Window | None:
        """Reduce the open window into a :class:`Window` starting at ``window_start`` (epoch s).

        Returns ``None`` when the window has no valid sample; the counter state then
        carries over, so the next window's deltas cover this one. Either way the
        next window starts empty.
        """
        n = self._n
        flags = (self._flag_invalid, self._flag_offline, self._flag_reset)
        self._n = self._dropped = 0
        self._flag_invalid = self._flag_offline = self._flag_reset = False
        if n == 0 or self._ref_i is None:
            return None
        import_kwh = self._ref_i
        export_kwh = self._ref_e
        import_delta = self._bank_i + (import_kwh - self._seg_i)
        export_delta = self._bank_e + (export_kwh - self._seg_e)
        self._seg_i, self._seg_e = import_kwh, export_kwh
        self._bank_i = self._bank_e = 0.0

        power = self._cols[_POWER][:n]
        p_min = float(power.min())
        p_max = float(power.max())
        p_avg = min(max(float(power.mean()), p_min), p_max)
        averages = [_mean(self._cols[k][:n], *_BOUNDS[k]) for k in (_VOLTAGE, _CURRENT, _PF, _FREQ)]

        got = min(n, self.samples_expected)
        invalid, offline, reset = flags
        quality = tuple(
            flag
            for flag, on in (
                (QualityFlag.PARTIAL, got < self.samples_expected),
                (QualityFlag.METER_OFFLINE, offline),
                (QualityFlag.INVALID_VALUES_DROPPED, invalid),
                (QualityFlag.COUNTER_RESET, reset),
            )
            if on
        )
        return Window(
            meter_id=self.meter_id,
            window_start=from_epoch(window_start),
            window_seconds=self.window_seconds,
            import_kwh=import_kwh,
            export_kwh=export_kwh,
            import_delta_kwh=import_delta,
            export_delta_kwh=export_delta,
            power_min_kw=p_min,
            power_avg_kw=p_avg,
            power_max_kw=p_max,
            voltage_avg_v=averages[0],
            current_avg_a=averages[1],
            power_factor_avg=averages[2],
            frequency_avg_hz=averages[3],
            samples_got=got,
            samples_expected=self.samples_expected,
            quality=quality,
        )


def _mean(values: FloatArray, low: float, high: float) -> float | None:
    """Mean of the non-NaN values, clipped to their range against rounding; ``None`` if none."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        return None
    return min(max(float(present.mean()), low), high)


# -------------------------------------------------------------------------- aggregator


@dataclass(slots=True)
class _MeterState:
    acc: MeterAccumulator
    open_start: int | None = None
    """Start of the open window (epoch s); ``None`` when none is open."""
    closed_until: int | None = None
    """End of the last window closed: samples before it are late."""
    offline: bool = False


class Aggregator:
    """Routes samples of many meters to UTC-aligned windows and closes them on time.

    ``window_seconds`` must divide a day (≤ 3600); ``poll_interval_s`` is the
    meters' poll interval (``0 < poll_interval_s <= window_seconds``); ``grace_s``
    (default: one poll interval, ``0 <= grace_s < window_seconds``) is how long
    after its end a window stays open for late samples. Raises ``ValueError`` for
    invalid settings, a duplicate or invalid meter id, and samples of unknown meters.
    """

    def __init__(
        self,
        window_seconds: int,
        poll_interval_s: float,
        meters: Iterable[str],
        *,
        grace_s: float | None = None,
    ) -> None:
        self.window_seconds = check_window_seconds(window_seconds)
        if not (math.isfinite(poll_interval_s) and 0.0 < poll_interval_s <= window_seconds):
            raise ValueError(
                f"poll_interval_s must be > 0 and <= window_seconds ({window_seconds}), "
                f"got {poll_interval_s!r}"
            )
        self.poll_interval_s = float(poll_interval_s)
        expected = round(window_seconds / poll_interval_s)
        if expected > limits.MAX_SAMPLES_PER_WINDOW:
            raise ValueError(
                f"{window_seconds} s windows polled every {poll_interval_s} s hold {expected} "
                f"samples, more than {limits.MAX_SAMPLES_PER_WINDOW}"
            )
        self.samples_expected = expected
        grace = self.poll_interval_s if grace_s is None else float(grace_s)
        if not (math.isfinite(grace) and 0.0 <= grace < window_seconds):
            raise ValueError(f"grace_s must be >= 0 and < window_seconds, got {grace_s!r}")
        self.grace_s = grace
        self._meters: dict[str, _MeterState] = {}
        for meter_id in meters:
            if meter_id in self._meters:
                raise ValueError(f"meter {meter_id!r} is listed twice")
            self._meters[meter_id] = _MeterState(
                MeterAccumulator(meter_id, window_seconds=window_seconds, samples_expected=expected)
            )
        self._ready: list[Window] = []
        self.samples_accepted = 0
        """Samples that went into a window."""
        self.samples_invalid = 0
        """Samples dropped as invalid (their windows are flagged)."""
        self.samples_late = 0
        """Samples dropped because their window was already closed."""
        self.samples_bad_time = 0
        """Samples dropped because their time cannot be on the wire (clock not set)."""
        self.windows_closed = 0
        """Windows produced."""
        self.windows_empty = 0
        """Windows closed without a valid sample (no window produced)."""

    @property
    def meters(self) -> tuple[str, ...]:
        """The meter ids, in configuration order."""
        return tuple(self._meters)

    def accumulator(self, meter_id: str) -> MeterAccumulator:
        """The accumulator of ``meter_id`` (for inspection)."""
        return self._state(meter_id).acc

    def _state(self, meter_id: str) -> _MeterState:
        try:
            return self._meters[meter_id]
        except KeyError:
            raise ValueError(f"unknown meter {meter_id!r}") from None

    def add(self, sample: Sample) -> None:
        """Put ``sample`` into its window; a sample for a later window closes the open one."""
        state = self._state(sample.meter_id)
        at = sample.at
        if not MIN_EPOCH <= at < MAX_EPOCH:
            self.samples_bad_time += 1
            return
        width = self.window_seconds
        start = int(at // width) * width
        if start != state.open_start:
            if (state.open_start is not None and start < state.open_start) or (
                state.closed_until is not None and start < state.closed_until
            ):
                self.samples_late += 1
                return
            if state.open_start is not None:
                self._close(state, self._ready)
            state.open_start = start
        if state.offline:
            # The meter was offline until now: that overlaps this window unless it is
            # back exactly at the window's start.
            if at > start:
                state.acc.flag_offline()
            state.offline = False
        if state.acc.add(sample):
            self.samples_accepted += 1
        else:
            self.samples_invalid += 1

    def seed_counters(self, meter_id: str, import_kwh: float, export_kwh: float, at: float) -> None:
        """Carry ``meter_id``'s counters over from a previous run (its last published window).

        ``at`` is that window's end. See :meth:`MeterAccumulator.seed_counters`.
        """
        self._state(meter_id).acc.seed_counters(import_kwh, export_kwh, at)

    def mark_offline(self, meter_id: str, at: float) -> None:
        """Record that ``meter_id`` stopped answering at ``at`` (until its next sample)."""
        state = self._state(meter_id)
        state.offline = True
        start = state.open_start
        if start is not None and start <= at < start + self.window_seconds:
            state.acc.flag_offline()

    def close_due(self, now: float) -> list[Window]:
        """Close every window that ended at or before ``now - grace_s``; return the windows.

        Also returns windows closed earlier by a sample for a later window. A meter
        without valid samples in a closed window contributes no window. Windows are
        ordered by (window_start, meter_id).
        """
        limit = now - self.grace_s
        out, self._ready = self._ready, []
        width = self.window_seconds
        for state in self._meters.values():
            start = state.open_start
            if start is not None and start + width <= limit:
                self._close(state, out)
        out.sort(key=lambda w: (w.window_start, w.meter_id))
        return out

    def _close(self, state: _MeterState, out: list[Window]) -> None:
        start = state.open_start
        if start is None:
            return
        window = state.acc.close(start)
        state.open_start = None
        state.closed_until = start + self.window_seconds
        if window is None:
            self.windows_empty += 1
        else:
            self.windows_closed += 1
            out.append(window)

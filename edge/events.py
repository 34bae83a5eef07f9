"""Immediate meter events, detected sample by sample (not at window close).

:class:`EventDetector` keeps a little state per meter and returns protocol event
models (:mod:`segs.protocol.messages`) ready to go into an ``EventBatch``:

``observe(sample) -> list[MeterEvent]``
    Call for every sample (every poll the meter answered). Returns, in this order:

    * :class:`MeterOnline` when the meter was offline or not seen before
      (``offline_seconds`` is absent for the first answer);
    * :class:`CounterReset` when an energy counter went back by more than the
      float32 noise tolerance or jumped more than physically possible
      (:func:`segs.edge.aggregate.counter_step`, the rule the windows use);
    * :class:`PowerSpike` when ``|power|`` exceeds ``spike_ratio`` times the
      baseline. The baseline is an EWMA of ``|power|`` (weight
      ``baseline_alpha`` per sample) floored at ``min_baseline_kw`` so a near-zero
      night load does not turn every kettle into a spike. No spike fires during
      the first ``warmup_samples`` samples. The sample that fires does not feed
      the baseline. After firing, the detector re-arms only once ``|power|`` is
      back at or below the threshold, so one excursion gives one event; the
      samples of a long excursion do feed the baseline, so a lasting new load
      level becomes the new normal instead of silencing the detector for good;
    * :class:`VoltageOutOfRange` per phase when a phase voltage leaves
      ``nominal_v * (1 +/- voltage_tolerance)`` (EN 50160: +/-10 %). One event on
      leaving, none while it stays out; the phase re-arms once it is back within
      ``voltage_tolerance - voltage_rearm_margin`` (1 % of nominal by default),
      so a voltage hovering at the limit does not flood the hub.

``offline(meter_id, at, error) -> MeterOffline | None``
    Call when a meter stopped answering (after the poller's retries). Returns an
    event only when the meter was online or never seen. Going offline restarts
    the spike warm-up and re-arms the voltage phases (the situation after an
    outage is a new one) but keeps the counter marks, so a meter swapped while
    offline is reported as a counter reset.
``online(meter_id, at) -> MeterOnline | None``
    The same for a meter that answers again; :meth:`observe` calls it itself.

Garbage samples (a value outside its physical range, see
:func:`segs.edge.samples.is_impossible`) only count as an answer: they raise no
spike, voltage or counter event. ``NaN`` values are skipped field by field.
Samples stamped outside the times the protocol accepts (an unsynchronised
clock) produce no events and change no state; ``bad_time`` counts them.
Times are epoch seconds (UTC) like everywhere in the edge's pure cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from segs.edge.aggregate import counter_step
from segs.edge.samples import MAX_EPOCH, MIN_EPOCH, Sample, from_epoch, is_impossible
from segs.protocol import limits
from segs.protocol.ids import validate_id
from segs.protocol.messages import (
    CounterReset,
    MeterEvent,
    MeterOffline,
    MeterOnline,
    PowerSpike,
    VoltageOutOfRange,
)

__all__ = ["EventDetector"]

_PHASES = 3
_MAX_OFFLINE_S = 1e10


@dataclass(slots=True)
class _MeterState:
    online: bool | None = None
    """``None`` until the first answer or failure."""
    offline_since: float | None = None
    baseline_kw: float = 0.0
    seen: int = 0
    """Valid power samples since start or the last outage (for the warm-up)."""
    armed: bool = True
    voltage_out: list[bool] = field(default_factory=lambda: [False] * _PHASES)
    import_kwh: float | None = None
    export_kwh: float = 0.0
    counters_at: float = 0.0


class EventDetector:
    """Detects power spikes, voltage excursions, counter resets and offline/online changes.

    All settings are keyword-only and validated (``ValueError``): ``nominal_v`` in
    (0, 1000] V; ``spike_ratio`` > 1; ``baseline_alpha`` in (0, 1];
    ``min_baseline_kw`` in (0, 10 000] kW; ``warmup_samples`` >= 1;
    ``voltage_tolerance`` in (0, 1); ``voltage_rearm_margin`` in
    [0, ``voltage_tolerance``).
    """

    def __init__(
        self,
        *,
        nominal_v: float = 230.0,
        spike_ratio: float = 2.0,
        baseline_alpha: float = 0.05,
        min_baseline_kw: float = 0.2,
        warmup_samples: int = 5,
        voltage_tolerance: float = 0.10,
        voltage_rearm_margin: float = 0.01,
    ) -> None:
        _check("nominal_v", nominal_v, 0.0 < nominal_v <= limits.MAX_VOLTAGE_V)
        _check("spike_ratio", spike_ratio, 1.0 < spike_ratio <= 1e6)
        _check("baseline_alpha", baseline_alpha, 0.0 < baseline_alpha <= 1.0)
        _check("min_baseline_kw", min_baseline_kw, 0.0 < min_baseline_kw <= limits.MAX_POWER_KW)
        _check(
            "warmup_samples",
            warmup_samples,
            isinstance(warmup_samples, int)
            and not isinstance(warmup_samples, bool)
            and warmup_samples >= 1,
        )
        _check("voltage_tolerance", voltage_tolerance, 0.0 < voltage_tolerance < 1.0)
        _check(
            "voltage_rearm_margin",
            voltage_rearm_margin,
            0.0 <= voltage_rearm_margin < voltage_tolerance,
        )
        self.nominal_v = float(nominal_v)
        self.spike_ratio = float(spike_ratio)
        self.baseline_alpha = float(baseline_alpha)
        self.min_baseline_kw = float(min_baseline_kw)
        self.warmup_samples = warmup_samples
        self.voltage_tolerance = float(voltage_tolerance)
        self.voltage_rearm_margin = float(voltage_rearm_margin)
        self._v_out = voltage_tolerance * nominal_v
        self._v_back = (voltage_tolerance - voltage_rearm_margin) * nominal_v
        self._meters: dict[str, _MeterState] = {}
        self.bad_time = 0
        """Samples and state changes ignored because their time cannot be on the wire."""

    def _state(self, meter_id: str) -> _MeterState:
        state = self._meters.get(meter_id)
        if state is None:
            validate_id(meter_id, kind="meter id")
            state = self._meters[meter_id] = _MeterState()
        return state

    def _time(self, at: float) -> datetime | None:
        if MIN_EPOCH <= at < MAX_EPOCH:
            return from_epoch(at)
        self.bad_time += 1
        return None

    # ------------------------------------------------------------------ online/offline

    def online(self, meter_id: str, at: float) -> MeterOnline | None:
        """``MeterOnline`` if ``meter_id`` was offline or never seen, else ``None``."""
        state = self._state(meter_id)
        if state.online is True:
            return None
        when = self._time(at)
        if when is None:
            return None
        offline_s = None
        if state.offline_since is not None:
            offline_s = min(max(at - state.offline_since, 0.0), _MAX_OFFLINE_S)
        state.online = True
        state.offline_since = None
        return MeterOnline(meter_id=meter_id, at=when, offline_seconds=offline_s)

    def offline(self, meter_id: str, at: float, error: str) -> MeterOffline | None:
        """``MeterOffline`` if ``meter_id`` was online or never seen, else ``None``."""
        state = self._state(meter_id)
        if state.online is False:
            return None
        when = self._time(at)
        if when is None:
            return None
        state.online = False
        state.offline_since = at
        state.seen = 0
        state.armed = True
        state.voltage_out = [False] * _PHASES
        return MeterOffline(meter_id=meter_id, at=when, error=error[: limits.MAX_TEXT_LENGTH])

    # -------------------------------------------------------------------------- samples

    def observe(self, sample: Sample) -> list[MeterEvent]:
        """Events raised by ``sample``, in the order: online, counter reset, spike, voltages."""
        meter_id = sample.meter_id
        state = self._state(meter_id)
        when = self._time(sample.at)
        if when is None:
            return []
        events: list[MeterEvent] = []
        came_online = self.online(meter_id, sample.at)
        if came_online is not None:
            events.append(came_online)
        if is_impossible(sample):
            return events
        reset = self._counters(state, sample, when)
        if reset is not None:
            events.append(reset)
        spike = self._spike(state, sample, when)
        if spike is not None:
            events.append(spike)
        self._voltages(state, sample, when, events)
        return events

    def _counters(self, state: _MeterState, sample: Sample, when: datetime) -> CounterReset | None:
        imp, exp = sample.import_kwh, sample.export_kwh
        if math.isnan(imp) or math.isnan(exp):
            return None
        previous_imp = state.import_kwh
        previous_exp = state.export_kwh
        if previous_imp is None:
            state.import_kwh, state.export_kwh, state.counters_at = imp, exp, sample.at
            return None
        elapsed = sample.at - state.counters_at
        step_imp = counter_step(previous_imp, imp, elapsed)
        step_exp = counter_step(previous_exp, exp, elapsed)
        state.counters_at = sample.at
        if step_imp is None or step_exp is None:
            state.import_kwh, state.export_kwh = imp, exp
            return CounterReset(
                meter_id=sample.meter_id,
                at=when,
                previous_import_kwh=previous_imp,
                import_kwh=imp,
                previous_export_kwh=previous_exp,
                export_kwh=exp,
            )
        # High-water marks: a float32 noise dip does not lower them.
        if step_imp > 0.0:
            state.import_kwh = imp
        if step_exp > 0.0:
            state.export_kwh = exp
        return None

    def _spike(self, state: _MeterState, sample: Sample, when: datetime) -> PowerSpike | None:
        power = sample.power_kw
        if math.isnan(power):
            return None
        magnitude = abs(power)
        state.seen += 1
        if state.seen == 1:
            state.baseline_kw = magnitude
            return None
        baseline = max(state.baseline_kw, self.min_baseline_kw)
        event = None
        if magnitude > self.spike_ratio * baseline:
            if state.armed and state.seen > self.warmup_samples:
                event = PowerSpike(
                    meter_id=sample.meter_id,
                    at=when,
                    power_kw=power,
                    baseline_kw=baseline,
                    ratio=magnitude / baseline,
                )
            # A crossing during the warm-up must not fire as soon as it ends either.
            state.armed = False
        else:
            state.armed = True
        if event is None:
            state.baseline_kw += self.baseline_alpha * (magnitude - state.baseline_kw)
        return event

    def _voltages(
        self, state: _MeterState, sample: Sample, when: datetime, events: list[MeterEvent]
    ) -> None:
        nominal = self.nominal_v
        for index, volts in enumerate(sample.voltages_v[:_PHASES]):
            if not 0.0 <= volts <= limits.MAX_VOLTAGE_V:  # also skips NaN
                continue
            deviation = abs(volts - nominal)
            if deviation > self._v_out:
                if not state.voltage_out[index]:
                    state.voltage_out[index] = True
                    events.append(
                        VoltageOutOfRange(
                            meter_id=sample.meter_id,
                            at=when,
                            voltage_v=volts,
                            nominal_v=nominal,
                            phase=index + 1,
                        )
                    )
            elif deviation <= self._v_back:
                state.voltage_out[index] = False


def _check(name: str, value: object, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name} is out of range: {value!r}")

"""Immediate events: spikes, voltage excursions, counter resets, offline/online."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segs.edge.events import EventDetector
from segs.edge.samples import Sample, from_epoch
from segs.protocol import (
    CounterReset,
    EventBatch,
    MeterEvent,
    MeterOffline,
    MeterOnline,
    PowerSpike,
    VoltageOutOfRange,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC).timestamp()


def sample(
    k: float,
    *,
    meter: str = "m1",
    power: float = 1.0,
    imp: float = 1000.0,
    exp: float = 0.0,
    volts: tuple[float, ...] = (230.0, 230.0, 230.0),
) -> Sample:
    return Sample(
        meter_id=meter,
        at=T0 + k,
        power_kw=power,
        import_kwh=imp,
        export_kwh=exp,
        voltage_v=sum(volts) / len(volts),
        current_a=5.0,
        power_factor=0.95,
        frequency_hz=50.0,
        voltages_v=volts,
    )


def feed(detector: EventDetector, samples: list[Sample]) -> list[tuple[int, MeterEvent]]:
    """Observe every sample; return (sample index, event) for all events but MeterOnline."""
    out: list[tuple[int, MeterEvent]] = []
    for index, s in enumerate(samples):
        out += [(index, e) for e in detector.observe(s) if not isinstance(e, MeterOnline)]
    return out


# -------------------------------------------------------------------------- spikes


def test_spike_fires_once_on_the_first_sample_of_the_jump() -> None:
    powers = [1.0] * 20 + [5.0] * 5 + [1.0] * 10 + [4.0] * 3
    events = feed(EventDetector(), [sample(k, power=p) for k, p in enumerate(powers)])
    assert [index for index, _ in events] == [20, 35]
    spike = events[0][1]
    assert isinstance(spike, PowerSpike)
    assert spike.power_kw == 5.0
    assert spike.baseline_kw == pytest.approx(1.0)
    assert spike.ratio == pytest.approx(5.0)
    assert spike.at == from_epoch(T0 + 20)


def test_no_spike_during_warm_up() -> None:
    powers = [1.0, 1.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    assert (
        feed(EventDetector(warmup_samples=5), [sample(k, power=p) for k, p in enumerate(powers)])
        == []
    )


def test_spike_on_export_uses_the_magnitude() -> None:
    powers = [-2.0] * 10 + [-7.0]
    ((index, spike),) = feed(EventDetector(), [sample(k, power=p) for k, p in enumerate(powers)])
    assert index == 10
    assert isinstance(spike, PowerSpike)
    assert spike.power_kw == -7.0
    assert spike.ratio == pytest.approx(3.5)


def test_small_baseline_is_floored() -> None:
    powers = [0.01] * 10 + [0.3, 0.01, 0.5]
    ((index, spike),) = feed(
        EventDetector(min_baseline_kw=0.2), [sample(k, power=p) for k, p in enumerate(powers)]
    )
    assert index == 12
    assert isinstance(spike, PowerSpike)
    assert spike.baseline_kw == 0.2
    assert spike.ratio == pytest.approx(2.5)


def test_lasting_new_load_becomes_the_baseline() -> None:
    powers = [1.0] * 10 + [3.0] * 200 + [1.0] * 5 + [7.0]
    events = feed(EventDetector(), [sample(k, power=p) for k, p in enumerate(powers)])
    # One event for the step; the new level is normal after a while, so the final
    # jump to 7 kW (about 2.3x a baseline that decayed towards 1 kW) fires again.
    assert [index for index, _ in events] == [10, 215]


@settings(max_examples=80, deadline=None)
@given(powers=st.lists(st.floats(min_value=-50.0, max_value=50.0), min_size=1, max_size=80))
def test_spikes_never_fire_in_warm_up_nor_twice_in_a_row(powers: list[float]) -> None:
    detector = EventDetector(warmup_samples=5)
    events = feed(detector, [sample(k, power=p) for k, p in enumerate(powers)])
    indices = [index for index, e in events if isinstance(e, PowerSpike)]
    assert all(index >= 5 for index in indices)
    assert all(b - a > 1 for a, b in itertools.pairwise(indices))
    for index, event in events:
        assert isinstance(event, PowerSpike)
        assert event.power_kw == powers[index]
        assert abs(event.power_kw) > 2.0 * event.baseline_kw


# ------------------------------------------------------------------------- voltage


def test_voltage_event_per_phase_once_per_excursion() -> None:
    phase2 = [230.0] * 3 + [260.0] * 5 + [230.0] * 3 + [200.0] * 2 + [252.0]
    samples = [sample(k, volts=(231.0, v, 229.0)) for k, v in enumerate(phase2)]
    events = feed(EventDetector(), samples)
    assert [(i, e.phase, e.voltage_v) for i, e in events if isinstance(e, VoltageOutOfRange)] == [
        (3, 2, 260.0),
        (11, 2, 200.0),
    ]
    assert all(isinstance(e, VoltageOutOfRange) and e.nominal_v == 230.0 for _, e in events)


def test_voltage_hovering_at_the_limit_gives_one_event() -> None:
    hovering = [253.5, 252.9, 253.4, 251.0, 253.2, 250.0, 253.1]
    events = feed(EventDetector(), [sample(k, volts=(v,)) for k, v in enumerate(hovering)])
    # Out at 253.5; back inside the limit but not by 1 % until 250.0; out again at 253.1.
    assert [i for i, _ in events] == [0, 6]


def test_voltage_events_on_several_phases_and_a_lost_phase() -> None:
    events = feed(EventDetector(), [sample(0, volts=(0.0, 300.0, 230.0))])
    assert [(e.phase, e.voltage_v) for _, e in events if isinstance(e, VoltageOutOfRange)] == [
        (1, 0.0),
        (2, 300.0),
    ]


def test_missing_phase_voltage_changes_nothing() -> None:
    detector = EventDetector()
    assert feed(detector, [sample(0, volts=(260.0,))])
    assert feed(detector, [sample(1, volts=(math.nan,)), sample(2, volts=(261.0,))]) == []


# ------------------------------------------------------------------------ counters


def test_counter_reset_event() -> None:
    detector = EventDetector()
    samples = [sample(k, imp=5000.0 + k * 0.01, exp=20.0) for k in range(5)]
    samples += [sample(5, imp=0.003, exp=0.0), sample(6, imp=0.013, exp=0.0)]
    ((index, event),) = feed(detector, samples)
    assert index == 5
    assert isinstance(event, CounterReset)
    assert event.previous_import_kwh == pytest.approx(5000.04)
    assert (event.import_kwh, event.previous_export_kwh, event.export_kwh) == (0.003, 20.0, 0.0)


def test_float32_noise_is_not_a_counter_reset() -> None:
    counters = [123_456.7, 123_456.71, 123_456.703, 123_456.72, 123_456.715]
    assert feed(EventDetector(), [sample(k, imp=c) for k, c in enumerate(counters)]) == []


def test_meter_swapped_while_offline_is_a_reset() -> None:
    detector = EventDetector()
    feed(detector, [sample(0, imp=5000.0)])
    detector.offline("m1", T0 + 1, "timeout")
    events = detector.observe(sample(3600, imp=2.0))
    assert [type(e) for e in events] == [MeterOnline, CounterReset]


def test_garbage_sample_raises_nothing_but_counts_as_an_answer() -> None:
    detector = EventDetector()
    feed(detector, [sample(k, power=1.0) for k in range(10)])
    garbage = Sample("m1", T0 + 10, 9000.0, 1e9, 0.0, 5000.0, 1.0, 0.9, 50.0, (5000.0,))
    assert detector.observe(garbage) == []
    assert feed(detector, [sample(11, power=1.0)]) == []  # no reset from the garbage


# ----------------------------------------------------------------- online/offline


def test_online_and_offline_only_on_change() -> None:
    detector = EventDetector()
    (first,) = detector.observe(sample(0))
    assert isinstance(first, MeterOnline)
    assert first.offline_seconds is None
    assert detector.observe(sample(1)) == []
    assert detector.online("m1", T0 + 1.5) is None
    went = detector.offline("m1", T0 + 2, "no answer after 3 retries")
    assert isinstance(went, MeterOffline)
    assert went.error == "no answer after 3 retries"
    assert detector.offline("m1", T0 + 3, "still nothing") is None
    back = detector.online("m1", T0 + 32)
    assert isinstance(back, MeterOnline)
    assert back.offline_seconds == 30.0
    assert detector.observe(sample(33)) == []


def test_meter_never_answering_is_reported_offline() -> None:
    detector = EventDetector()
    event = detector.offline("m9", T0, "x" * 5000)
    assert isinstance(event, MeterOffline)
    assert len(event.error) == 1000


def test_going_offline_restarts_the_spike_warm_up_and_voltage_arming() -> None:
    detector = EventDetector()
    assert feed(detector, [sample(k, volts=(260.0,)) for k in range(10)])
    detector.offline("m1", T0 + 10, "timeout")
    events = feed(detector, [sample(20, power=9.0, volts=(260.0,))])
    assert [type(e) for _, e in events] == [VoltageOutOfRange]  # no spike: new warm-up


def test_meters_are_independent() -> None:
    detector = EventDetector()
    samples = [sample(k, meter=m, power=1.0) for k in range(10) for m in ("a", "b")]
    samples.append(sample(10, meter="b", power=10.0))
    events = feed(detector, samples)
    assert [(e.meter_id, type(e)) for _, e in events] == [("b", PowerSpike)]


def test_bad_clock_gives_no_events() -> None:
    detector = EventDetector()
    assert detector.observe(Sample("m1", 5.0, 1.0, 1.0, 0.0)) == []
    assert detector.offline("m1", 5.0, "timeout") is None
    assert detector.bad_time == 2


def test_events_go_into_an_event_batch() -> None:
    detector = EventDetector()
    events: list[MeterEvent] = []
    for k in range(10):
        events += detector.observe(sample(k, power=1.0, imp=10.0 + k * 0.001))
    events += detector.observe(sample(10, power=6.0, imp=0.5, volts=(180.0, 230.0, 270.0)))
    offline = detector.offline("m1", T0 + 11, "timeout")
    assert offline is not None
    events.append(offline)
    batch = EventBatch(gateway_id="gw-1", seq=1, sent_at=from_epoch(T0 + 12), events=tuple(events))
    kinds = [e.kind for e in batch.events]
    assert kinds == [
        "meter_online",
        "counter_reset",
        "power_spike",
        "voltage_out_of_range",
        "voltage_out_of_range",
        "meter_offline",
    ]


def test_settings_are_validated() -> None:
    for bad in (
        {"nominal_v": 0.0},
        {"spike_ratio": 1.0},
        {"baseline_alpha": 0.0},
        {"min_baseline_kw": -1.0},
        {"warmup_samples": 0},
        {"voltage_tolerance": 1.5},
        {"voltage_rearm_margin": 0.2},
        {"nominal_v": math.nan},
    ):
        with pytest.raises(ValueError, match="out of range"):
            EventDetector(**bad)
    with pytest.raises(ValueError, match="meter id"):
        EventDetector().observe(sample(0, meter="bad id"))

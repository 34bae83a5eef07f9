"""Samples → windows: alignment, reductions, energy accounting, validation, routing."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segs.edge.aggregate import (
    Aggregator,
    MeterAccumulator,
    check_window_seconds,
    counter_step,
    window_start,
    window_start_utc,
)
from segs.edge.samples import (
    Sample,
    from_epoch,
    is_impossible,
    sample_from_values,
    to_epoch,
)
from segs.protocol import QualityFlag, Window
from segs.protocol.profiles import load_profile

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC).timestamp()  # aligned to every window length
DIVISORS = [w for w in range(1, 3601) if 86_400 % w == 0]


def sample(
    at: float,
    *,
    meter: str = "m1",
    power: float = 1.0,
    imp: float = 1000.0,
    exp: float = 0.0,
    volts: float | None = 230.0,
    amps: float | None = 5.0,
    pf: float | None = 0.95,
    hz: float | None = 50.0,
) -> Sample:
    return Sample(
        meter_id=meter,
        at=at,
        power_kw=power,
        import_kwh=imp,
        export_kwh=exp,
        voltage_v=volts,
        current_a=amps,
        power_factor=pf,
        frequency_hz=hz,
        voltages_v=() if volts is None else (volts,),
    )


def closed(agg: Aggregator, now: float) -> list[Window]:
    return agg.close_due(now)


# ------------------------------------------------------------------------- alignment


def test_window_start_aligns_to_utc_multiples() -> None:
    assert window_start(T0, 60) == T0
    assert window_start(T0 + 59.999, 60) == T0
    assert window_start(T0 + 60.0, 60) == T0 + 60
    assert window_start(T0 + 7.5, 5) == T0 + 5
    assert window_start_utc(T0 + 3599, 3600) == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert window_start_utc(T0 + 61, 60).tzinfo is UTC


@pytest.mark.parametrize("bad", [0, 7, 7200, 86_400, -60, True])
def test_window_seconds_must_divide_a_day_and_fit_the_protocol(bad: int) -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        check_window_seconds(bad)
    with pytest.raises(ValueError, match="window_seconds"):
        window_start(T0, bad)


def test_window_start_rejects_non_finite_time() -> None:
    with pytest.raises(ValueError, match="finite"):
        window_start(math.nan, 60)


@given(
    t=st.floats(min_value=946_684_800, max_value=4_102_444_799, allow_nan=False),
    width=st.sampled_from(DIVISORS),
)
def test_window_start_contains_t(t: float, width: int) -> None:
    start = window_start(t, width)
    assert start % width == 0
    assert start <= t < start + width
    assert window_start_utc(t, width) == from_epoch(start)


def test_epoch_conversions() -> None:
    moment = datetime(2026, 11, 27, 10, 0, 1, 500_000, tzinfo=UTC)
    assert from_epoch(to_epoch(moment)) == moment
    with pytest.raises(ValueError, match="naive"):
        to_epoch(datetime(2026, 11, 27, 10, 0))  # noqa: DTZ001 - the point of the test


# ---------------------------------------------------------------------- reductions


def test_constant_power_gives_flat_window_and_integrated_delta() -> None:
    power = 3.6
    agg = Aggregator(60, 1.0, ["m1"])
    for k in range(120):  # two windows; the counter integrates the power
        agg.add(sample(T0 + k, power=power, imp=1000.0 + power * (k + 1) / 3600))
    first, second = closed(agg, T0 + 121)
    for window in (first, second):
        assert window.power_min_kw == window.power_avg_kw == window.power_max_kw == power
        assert window.samples_got == window.samples_expected == 60
        assert window.quality == ()
        assert window.voltage_avg_v == 230.0
        assert window.current_avg_a == 5.0
        assert window.power_factor_avg == pytest.approx(0.95)
        assert window.frequency_avg_hz == 50.0
    assert first.window_start == from_epoch(T0)
    assert second.window_start == from_epoch(T0 + 60)
    # A meter's first window only sees its own samples; the next covers a full minute.
    assert first.import_delta_kwh == pytest.approx(power * 59 / 3600)
    assert second.import_delta_kwh == pytest.approx(power * 60 / 3600)
    assert second.import_kwh == pytest.approx(1000.0 + power * 120 / 3600)
    assert second.import_delta_kwh == second.import_kwh - first.import_kwh


def test_min_avg_max_and_averages_are_computed_over_the_window() -> None:
    agg = Aggregator(10, 1.0, ["m1"])
    powers = [-2.0, 0.5, 4.0, 1.5, 1.0, 3.0, -1.0, 2.0, 0.0, 1.0]
    for k, p in enumerate(powers):
        agg.add(sample(T0 + k, power=p, volts=220.0 + k, pf=-0.5 if k % 2 else 0.5))
    (window,) = closed(agg, T0 + 11)
    assert window.power_min_kw == -2.0
    assert window.power_max_kw == 4.0
    assert window.power_avg_kw == pytest.approx(sum(powers) / 10)
    assert window.voltage_avg_v == pytest.approx(224.5)
    assert window.power_factor_avg == pytest.approx(0.0)


def test_partial_window() -> None:
    agg = Aggregator(60, 1.0, ["m1"])
    for k in range(0, 60, 2):
        agg.add(sample(T0 + k, imp=1000.0 + k / 1000))
    (window,) = closed(agg, T0 + 61)
    assert (window.samples_got, window.samples_expected) == (30, 60)
    assert window.quality == (QualityFlag.PARTIAL,)


def test_poll_jitter_extra_sample_caps_samples_got() -> None:
    agg = Aggregator(10, 1.0, ["m1"])
    for k in range(11):  # 11 polls fall into one 10 s window
        agg.add(sample(T0 + k * 0.95))
    (window,) = closed(agg, T0 + 11)
    assert window.samples_got == window.samples_expected == 10
    assert QualityFlag.PARTIAL not in window.quality


def test_buffers_grow_when_a_meter_is_polled_faster_than_configured() -> None:
    acc = MeterAccumulator("m1", window_seconds=60, samples_expected=2, capacity=2)
    for k in range(50):
        assert acc.add(sample(T0 + k, power=float(k)))
    window = acc.close(int(T0))
    assert window is not None
    assert window.power_max_kw == 49.0
    assert window.power_avg_kw == pytest.approx(24.5)


# --------------------------------------------------------------------------- energy


def run_stream(
    counters: Sequence[float | None], *, width: int = 10, poll: float = 1.0
) -> list[Window]:
    """Feed one meter a counter per poll slot (``None`` = no sample) and close every window."""
    agg = Aggregator(width, poll, ["m1"])
    windows: list[Window] = []
    for k, counter in enumerate(counters):
        now = T0 + k * poll
        if counter is not None:
            agg.add(sample(now, imp=counter, exp=counter / 2))
        windows += agg.close_due(now)
    windows += agg.close_due(T0 + len(counters) * poll + width + poll)
    return windows


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(min_value=1.0, max_value=1e6),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.002), st.booleans()),
        min_size=1,
        max_size=200,
    ),
    gaps=st.lists(st.integers(min_value=0, max_value=199), max_size=4),
)
def test_deltas_sum_to_the_counter_difference(
    start: float, steps: list[tuple[float, bool]], gaps: list[int]
) -> None:
    # Counters rise by random amounts; samples go missing at random and whole
    # stretches (an offline meter) disappear. Billed energy must be conserved.
    counters: list[float | None] = []
    value = start
    missing_windows = {g // 10 for g in gaps}
    for k, (increment, present) in enumerate(steps):
        value += increment
        keep = present and (k // 10) not in missing_windows
        counters.append(value if keep else None)
    seen = [c for c in counters if c is not None]
    windows = run_stream(counters)
    if not seen:
        assert windows == []
        return
    assert all(w.import_delta_kwh >= 0.0 and w.export_delta_kwh >= 0.0 for w in windows)
    assert math.fsum(w.import_delta_kwh for w in windows) == seen[-1] - seen[0]
    assert math.fsum(w.export_delta_kwh for w in windows) == seen[-1] / 2 - seen[0] / 2
    assert windows[-1].import_kwh == seen[-1]
    for before, after in itertools.pairwise(windows):
        assert after.window_start > before.window_start
        assert after.import_delta_kwh == after.import_kwh - before.import_kwh


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=0.0, max_value=1e7, allow_nan=False), min_size=1, max_size=60
    )
)
def test_deltas_are_never_negative_whatever_the_counters_do(values: list[float]) -> None:
    windows = run_stream(values, width=5)
    assert windows
    for window in windows:
        assert window.import_delta_kwh >= 0.0
        assert window.export_delta_kwh >= 0.0
        if QualityFlag.COUNTER_RESET not in window.quality:
            assert window.import_delta_kwh <= max(values) - min(values)


def test_offline_window_produces_nothing_and_the_next_delta_covers_the_gap() -> None:
    agg = Aggregator(60, 1.0, ["m1"])
    for k in range(50):
        agg.add(sample(T0 + k, imp=1000.0 + k * 0.001))
    agg.mark_offline("m1", T0 + 50)
    (first,) = agg.close_due(T0 + 61)
    assert first.quality == (QualityFlag.PARTIAL, QualityFlag.METER_OFFLINE)
    assert first.import_kwh == pytest.approx(1000.049)
    assert agg.close_due(T0 + 121) == []  # the whole second window is offline
    assert agg.windows_empty == 0  # nothing was open: the meter produced nothing
    for k in range(130, 180):  # back at T0 + 130, mid third window
        agg.add(sample(T0 + k, imp=1000.0 + k * 0.001))
    (third,) = agg.close_due(T0 + 181)
    assert third.window_start == from_epoch(T0 + 120)
    assert QualityFlag.METER_OFFLINE in third.quality
    assert third.import_delta_kwh == pytest.approx(0.179 - 0.049)
    assert first.import_delta_kwh + third.import_delta_kwh == pytest.approx(0.179)


def test_window_closes_on_time_when_the_meter_stops_mid_window() -> None:
    agg = Aggregator(60, 1.0, ["m1", "m2"])
    agg.add(sample(T0 + 1, meter="m1"))
    agg.add(sample(T0 + 1, meter="m2"))
    agg.mark_offline("m2", T0 + 2)
    assert agg.close_due(T0 + 60.5) == []  # within grace
    windows = agg.close_due(T0 + 61)
    assert [(w.meter_id, w.samples_got) for w in windows] == [("m1", 1), ("m2", 1)]
    assert QualityFlag.METER_OFFLINE in windows[1].quality
    assert QualityFlag.METER_OFFLINE not in windows[0].quality


def test_meter_back_exactly_at_a_window_start_is_not_flagged_offline() -> None:
    agg = Aggregator(60, 1.0, ["m1"])
    agg.add(sample(T0 + 30))
    agg.mark_offline("m1", T0 + 40)
    agg.add(sample(T0 + 60))
    windows = agg.close_due(T0 + 121)
    assert [QualityFlag.METER_OFFLINE in w.quality for w in windows] == [True, False]


def test_window_with_only_invalid_samples_is_empty_but_state_moves_on() -> None:
    agg = Aggregator(60, 1.0, ["m1"])
    agg.add(sample(T0, imp=1000.0))
    agg.close_due(T0 + 61)
    agg.add(sample(T0 + 70, power=math.nan))
    assert agg.close_due(T0 + 121) == []
    assert agg.windows_empty == 1
    agg.add(sample(T0 + 125, imp=1000.5))
    (window,) = agg.close_due(T0 + 181)
    assert window.import_delta_kwh == pytest.approx(0.5)


def test_seeded_counters_carry_energy_across_a_restart() -> None:
    agg = Aggregator(60, 1.0, ["m1"])
    agg.seed_counters("m1", 1000.0, 5.0, T0 - 3600)  # last window published an hour ago
    for k in range(60):
        agg.add(sample(T0 + k, imp=1002.0 + k * 0.001, exp=5.5))
    (window,) = agg.close_due(T0 + 61)
    assert window.import_delta_kwh == pytest.approx(2.059)
    assert window.export_delta_kwh == pytest.approx(0.5)
    assert QualityFlag.COUNTER_RESET not in window.quality
    with pytest.raises(ValueError, match="already running"):
        agg.seed_counters("m1", 1000.0, 5.0, T0)
    with pytest.raises(ValueError, match="counters must be"):
        Aggregator(60, 1.0, ["m2"]).seed_counters("m2", -1.0, 0.0, T0)


def test_counter_reset_is_flagged_and_never_billed_negative() -> None:
    counters = [5000.0 + k * 0.01 for k in range(5)] + [0.002 + k * 0.01 for k in range(5)]
    counters += [0.052 + k * 0.01 for k in range(10)]
    first, second = run_stream(counters)
    assert QualityFlag.COUNTER_RESET in first.quality
    # Energy before the reset (4 steps) and after it (4 steps); the jump is excluded.
    assert first.import_delta_kwh == pytest.approx(0.08)
    assert first.import_kwh == pytest.approx(0.042)
    assert QualityFlag.COUNTER_RESET not in second.quality
    assert second.import_delta_kwh == pytest.approx(0.1)
    assert second.import_delta_kwh >= 0.0


def test_swap_to_a_meter_with_a_higher_counter_is_a_reset_not_energy() -> None:
    counters = [5000.0 + k * 0.001 for k in range(5)] + [9000.0 + k * 0.001 for k in range(5)]
    (window,) = run_stream(counters)
    assert QualityFlag.COUNTER_RESET in window.quality
    assert window.import_delta_kwh == pytest.approx(0.008)


def test_float32_noise_is_not_a_reset() -> None:
    base = 123_456.7
    # float32 has a 0.0078 kWh step here: the readings wobble by one step.
    raw = [base, base + 0.01, base + 0.005, base + 0.02, base + 0.015, base + 0.03]
    counters = [float(np.float32(v)) for v in raw]
    assert min(np.diff(counters)) < 0  # the stream really goes backwards
    (window,) = run_stream(counters)
    assert QualityFlag.COUNTER_RESET not in window.quality
    assert window.import_delta_kwh == pytest.approx(max(counters) - counters[0])
    assert window.import_kwh == max(counters)  # the mark never goes down


def test_counter_step_rules() -> None:
    assert counter_step(100.0, 100.5, 1.0) == 0.5
    assert counter_step(100.0, 99.995, 1.0) == 0.0  # noise
    assert counter_step(1e7, 1e7 - 5, 1.0) == 0.0  # relative noise on a big counter
    assert counter_step(100.0, 99.0, 1.0) is None  # reset
    assert counter_step(100.0, 200.0, 1.0) is None  # impossible jump in 1 s
    assert counter_step(100.0, 200.0, 3600.0) == 100.0  # possible over an hour


# ----------------------------------------------------------------------- validation


def test_invalid_samples_are_dropped_and_flagged() -> None:
    agg = Aggregator(10, 1.0, ["m1"])
    agg.add(sample(T0 + 0, power=1.0))
    agg.add(sample(T0 + 1, power=math.nan))  # missing power: dropped
    agg.add(sample(T0 + 2, power=20_000.0))  # impossible power: dropped
    agg.add(sample(T0 + 3, imp=-1.0))  # impossible counter: dropped
    agg.add(sample(T0 + 4, exp=math.inf))  # impossible counter: dropped
    agg.add(sample(T0 + 5, volts=5_000.0, power=9.0))  # garbage read: dropped whole
    agg.add(sample(T0 + 6, hz=0.0, power=9.0))  # 0 Hz, an all-zero read: dropped whole
    agg.add(sample(T0 + 7, volts=math.nan, power=3.0))  # missing voltage: field only
    agg.add(sample(T0 + 8, pf=math.nan, amps=math.nan, hz=math.nan, power=2.0))
    (window,) = agg.close_due(T0 + 11)
    assert window.samples_got == 3
    assert window.quality == (QualityFlag.PARTIAL, QualityFlag.INVALID_VALUES_DROPPED)
    assert (window.power_min_kw, window.power_max_kw) == (1.0, 3.0)
    assert window.power_avg_kw == pytest.approx(2.0)
    assert window.voltage_avg_v == 230.0
    assert window.frequency_avg_hz == 50.0
    assert agg.samples_invalid == 6
    assert agg.samples_accepted == 3


def test_fields_a_profile_lacks_are_absent_without_a_flag() -> None:
    agg = Aggregator(10, 1.0, ["m1"])
    for k in range(10):
        agg.add(sample(T0 + k, volts=None, amps=None, pf=None, hz=None))
    (window,) = agg.close_due(T0 + 11)
    assert window.quality == ()
    assert window.voltage_avg_v is None
    assert window.current_avg_a is None
    assert window.power_factor_avg is None
    assert window.frequency_avg_hz is None


def test_field_missing_in_every_sample_is_absent_and_flagged() -> None:
    agg = Aggregator(10, 1.0, ["m1"])
    agg.add(sample(T0, pf=math.nan))
    (window,) = agg.close_due(T0 + 11)
    assert window.power_factor_avg is None
    assert QualityFlag.INVALID_VALUES_DROPPED in window.quality


value_strategy = st.one_of(
    st.none(),
    st.just(math.nan),
    st.floats(allow_nan=False),
    st.floats(min_value=-2.0, max_value=2.0),
    st.floats(min_value=0.0, max_value=300.0),
)


@given(
    power=st.one_of(st.just(math.nan), st.floats(allow_nan=False)),
    imp=st.one_of(st.just(math.nan), st.floats(allow_nan=False), st.floats(0.0, 1e6)),
    volts=value_strategy,
    amps=value_strategy,
    pf=value_strategy,
    hz=st.one_of(value_strategy, st.floats(min_value=39.0, max_value=71.0)),
)
def test_aggregator_drops_exactly_the_samples_it_cannot_use(
    *,
    power: float,
    imp: float,
    volts: float | None,
    amps: float | None,
    pf: float | None,
    hz: float | None,
) -> None:
    s = sample(T0, power=power, imp=imp, volts=volts, amps=amps, pf=pf, hz=hz)
    acc = MeterAccumulator("m1", window_seconds=60, samples_expected=60)
    usable = not (is_impossible(s) or math.isnan(power) or math.isnan(imp))
    assert acc.add(s) is usable
    window = acc.close(int(T0))
    assert (window is not None) is usable
    if window is not None:
        missing = any(v is not None and math.isnan(v) for v in (volts, amps, pf, hz))
        assert (QualityFlag.INVALID_VALUES_DROPPED in window.quality) is missing


@pytest.mark.parametrize("profile_id", ["sdm630", "sdm120"])
def test_random_register_words_never_reach_a_window(profile_id: str) -> None:
    profile = load_profile(profile_id)
    draw = random.Random(4)
    agg = Aggregator(60, 1.0, ["m1"])
    for k in range(2000):
        reads = [[draw.randrange(65536) for _ in range(b.count)] for b in profile.blocks]
        s = sample_from_values("m1", T0 + k * 0.01, profile.decode(reads), profile.phases)
        agg.add(s)
    assert agg.samples_accepted == 0
    assert agg.close_due(T0 + 100) == []
    reads = [[0] * b.count for b in profile.blocks]  # an all-zero answer
    agg.add(sample_from_values("m1", T0 + 120, profile.decode(reads), profile.phases))
    assert agg.samples_accepted == 0


def test_samples_with_an_unset_clock_are_dropped() -> None:
    agg = Aggregator(60, 1.0, ["m1"])
    agg.add(sample(12.0))  # 1970: a Pi without RTC before NTP
    agg.add(sample(math.nan))
    assert agg.samples_bad_time == 2
    assert agg.close_due(T0) == []


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        Aggregator(7, 1.0, ["m1"])
    with pytest.raises(ValueError, match="poll_interval_s"):
        Aggregator(60, 0.0, ["m1"])
    with pytest.raises(ValueError, match="poll_interval_s"):
        Aggregator(60, 61.0, ["m1"])
    with pytest.raises(ValueError, match="more than"):
        Aggregator(3600, 0.01, ["m1"])
    with pytest.raises(ValueError, match="grace_s"):
        Aggregator(60, 1.0, ["m1"], grace_s=60.0)
    with pytest.raises(ValueError, match="twice"):
        Aggregator(60, 1.0, ["m1", "m1"])
    with pytest.raises(ValueError, match="meter id"):
        Aggregator(60, 1.0, ["bad/id"])
    agg = Aggregator(60, 1.0, ["m1"])
    with pytest.raises(ValueError, match="unknown meter"):
        agg.add(sample(T0, meter="m2"))
    with pytest.raises(ValueError, match="unknown meter"):
        agg.mark_offline("m2", T0)


# -------------------------------------------------------------------------- routing


def test_late_sample_within_grace_lands_in_its_window() -> None:
    agg = Aggregator(60, 1.0, ["m1"], grace_s=1.0)
    for k in range(59):
        agg.add(sample(T0 + k))
    assert agg.close_due(T0 + 60.5) == []  # the window ended, but grace holds it open
    agg.add(sample(T0 + 59.2))  # stamped in the window, processed after its end
    (window,) = agg.close_due(T0 + 61.0)
    assert window.samples_got == 60
    agg.add(sample(T0 + 59.5))  # too late: its window is gone
    assert agg.samples_late == 1
    assert agg.close_due(T0 + 200) == []  # never a second window for the same minute


def test_a_sample_for_a_later_window_closes_the_earlier_one() -> None:
    agg = Aggregator(60, 1.0, ["m1"])
    agg.add(sample(T0 + 10))
    agg.add(sample(T0 + 65))
    (window,) = agg.close_due(T0 + 66)  # not due yet by time, but closed by the sample
    assert window.window_start == from_epoch(T0)
    agg.add(sample(T0 + 20))  # its window was closed by the later sample
    assert agg.samples_late == 1


def test_interleaved_meters_get_their_own_windows() -> None:
    meters = ["m1", "m2", "m3"]
    agg = Aggregator(10, 1.0, meters)
    out: list[Window] = []
    for k in range(30):
        for n, meter in enumerate(meters):
            if meter == "m3" and k % 2:
                continue
            agg.add(sample(T0 + k + 0.1 * n, meter=meter, power=float(n + 1), imp=n * 100 + k))
        out += agg.close_due(T0 + k + 0.5)
    out += agg.close_due(T0 + 100)
    assert [(w.window_start, w.meter_id) for w in out] == [
        (from_epoch(T0 + 10 * w), m) for w in range(3) for m in meters
    ]
    for window in out:
        n = meters.index(window.meter_id)
        assert window.power_avg_kw == n + 1
        assert window.samples_got == (5 if window.meter_id == "m3" else 10)
    deltas = {m: sum(w.import_delta_kwh for w in out if w.meter_id == m) for m in meters}
    assert deltas == {"m1": 29.0, "m2": 29.0, "m3": 28.0}


# --------------------------------------------------------------------------- samples


def test_sample_from_three_phase_values() -> None:
    values: dict[str, float | int | str | None] = {
        "voltage_l1": 230.0,
        "voltage_l2": 232.0,
        "voltage_l3": 234.0,
        "current_l1": 1.0,
        "current_l2": -2.0,
        "current_l3": 3.0,
        "power_l1": 0.2,
        "power_l2": 0.4,
        "power_l3": 0.6,
        "power_total": 1.25,
        "power_factor_l1": 0.9,
        "power_factor_l2": 0.9,
        "power_factor_l3": 0.9,
        "power_factor_total": 0.95,
        "frequency": 50,
        "import_energy": 1234.5,
        "export_energy": 12.0,
    }
    s = sample_from_values("m1", T0, values, 3)
    assert s.power_kw == 1.25
    assert s.voltage_v == pytest.approx(232.0)
    assert s.current_a == pytest.approx(2.0)
    assert s.power_factor == 0.95
    assert s.frequency_hz == 50.0
    assert (s.import_kwh, s.export_kwh) == (1234.5, 12.0)
    assert s.voltages_v == (230.0, 232.0, 234.0)
    assert not is_impossible(s)

    no_total = {k: v for k, v in values.items() if not k.endswith("_total")}
    s = sample_from_values("m1", T0, no_total, 3)
    assert s.power_kw == pytest.approx(1.2)
    assert s.power_factor == pytest.approx(0.9)

    s = sample_from_values("m1", T0, {**values, "voltage_l2": None, "power_total": None}, 3)
    assert math.isnan(s.voltage_v or 0.0)  # one phase missing: no mean over two
    assert s.power_kw == pytest.approx(1.2)  # total missing: the phases stand in
    assert math.isnan(s.voltages_v[1])

    s = sample_from_values("m1", T0, {**values, "voltage_l3": 4000.0}, 3)
    assert s.voltage_v == math.inf  # a garbage phase cannot hide in the mean
    assert is_impossible(s)

    s = sample_from_values("m1", T0, {**values, "frequency": "x", "import_energy": math.inf}, 3)
    assert s.frequency_hz is not None
    assert math.isnan(s.frequency_hz)
    assert math.isnan(s.import_kwh)


def test_sample_from_single_phase_values_and_absent_registers() -> None:
    values: dict[str, float | int | str | None] = {
        "voltage_l1": 231.0,
        "power_l1": -1.5,
        "import_energy": 10.0,
        # no current, power factor, frequency or export counter
        "voltage_l2": 999.0,  # beyond the profile's phases: ignored
    }
    s = sample_from_values("m1", T0, values, 1)
    assert s.power_kw == -1.5
    assert s.voltage_v == 231.0
    assert s.voltages_v == (231.0,)
    assert (s.current_a, s.power_factor, s.frequency_hz) == (None, None, None)
    assert s.export_kwh == 0.0
    assert math.isnan(sample_from_values("m1", T0, {}, 1).power_kw)
    with pytest.raises(ValueError, match="phases"):
        sample_from_values("m1", T0, values, 4)


def test_sample_from_a_decoded_profile_read() -> None:
    profile = load_profile("sdm630")
    reads = [[0] * b.count for b in profile.blocks]
    s = sample_from_values("m1", T0, profile.decode(reads), profile.phases)
    assert s.power_kw == 0.0
    assert len(s.voltages_v) == 3
    failed = sample_from_values("m1", T0, profile.decode([None] * len(reads)), profile.phases)
    assert math.isnan(failed.power_kw)
    assert math.isnan(failed.import_kwh)

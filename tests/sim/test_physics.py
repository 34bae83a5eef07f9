"""The fleet model on its own: determinism, energy exactness, plausible physics, faults."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import START

from segs.sim.physics import COUNTERS, Fleet, MeterSpec, RegionSpec, meter_seed

IMPORT, EXPORT = COUNTERS.index("import"), COUNTERS.index("export")


def _fleet(
    n: int = 40, *, seed: int = 1, regions: int = 2, prosumer_every: int = 3, phases: int = 0
) -> Fleet:
    specs = [
        MeterSpec(
            phases=phases or (3 if i % 2 == 0 else 1),
            region=i % regions,
            prosumer=i % prosumer_every == 0,
            seed=meter_seed(seed, f"MTR-{i:08d}"),
        )
        for i in range(n)
    ]
    return Fleet(specs, [RegionSpec("UTC")] * regions, seed=seed)


def _run(fleet: Fleet, steps: list[float], start: float = START) -> list[np.ndarray]:
    t = start
    fleet.step(t, 0.0)
    seen = [fleet.power.copy()]
    for dt in steps:
        t += dt
        fleet.step(t, dt)
        seen.append(fleet.power.copy())
    return seen


def test_same_seed_and_steps_give_the_same_values() -> None:
    steps = [1.0, 0.5, 2.0, 1.0, 10.0]
    a, b = _fleet(seed=5), _fleet(seed=5)
    for x, y in zip(_run(a, steps), _run(b, steps), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.counters, b.counters)
    np.testing.assert_array_equal(a.voltage, b.voltage)
    np.testing.assert_array_equal(a.frequency, b.frequency)
    other = _fleet(seed=6)
    _run(other, steps)
    assert not np.array_equal(a.power, other.power)


def test_a_meters_parameters_do_not_depend_on_the_rest_of_the_fleet() -> None:
    alone = Fleet([MeterSpec(3, 0, True, seed=99)], [RegionSpec()], seed=1)
    crowd = Fleet(
        [MeterSpec(1, 0, False, seed=5), MeterSpec(3, 0, True, seed=99)], [RegionSpec()], seed=1
    )
    np.testing.assert_array_equal(alone.counters[:, 0], crowd.counters[:, 1])


def test_counters_integrate_the_held_power_exactly() -> None:
    fleet = _fleet(n=30)
    fleet.step(START, 0.0)
    before = fleet.counters.copy()
    expected = np.zeros((fleet.size, 4))
    t = START
    for dt in [1.0, 0.25, 3.0, 1.0, 17.5, 60.0, 0.001, 1.0] * 5:
        total = fleet.power.sum(axis=1)
        expected[:, 0] += total * dt / 3600.0
        expected[:, 1:] += fleet.power * dt / 3600.0
        t += dt
        fleet.step(t, dt)
    net = (fleet.counters[IMPORT] - before[IMPORT]) - (fleet.counters[EXPORT] - before[EXPORT])
    np.testing.assert_allclose(net, expected, rtol=1e-9, atol=1e-12)


def test_counters_never_decrease() -> None:
    fleet = _fleet()
    fleet.step(START, 0.0)
    previous = fleet.counters.copy()
    t = START
    for _ in range(200):
        t += 30.0
        fleet.step(t, 30.0)
        assert (fleet.counters >= previous).all()
        previous = fleet.counters.copy()


def test_power_voltage_current_and_power_factor_agree() -> None:
    fleet = _fleet()
    t = START
    fleet.step(t, 0.0)
    for _ in range(20):
        t += 60.0
        fleet.step(t, 60.0)
        # P [kW] * 1000 = V * I * PF on every phase; S = hypot(P, Q).
        np.testing.assert_allclose(
            fleet.power * 1000.0, fleet.voltage * fleet.current * fleet.power_factor, atol=1e-9
        )
        np.testing.assert_allclose(fleet.apparent, np.hypot(fleet.power, fleet.reactive))
        present = fleet.phase_mask
        assert ((fleet.voltage > 200) & (fleet.voltage < 260))[present].all()
        assert (fleet.voltage[~present] == 0).all()
        assert (fleet.power[~present] == 0).all()
        assert ((fleet.frequency > 49.8 - 1e-9) & (fleet.frequency < 50.2 + 1e-9)).all()
        assert (np.abs(fleet.power_factor) <= 1.0).all()


def test_load_follows_the_day_and_prosumers_export_at_noon() -> None:
    fleet = _fleet(n=120, prosumer_every=2)
    hourly = []
    t = START - 12 * 3600.0  # midnight UTC
    fleet.step(t, 0.0)
    for _ in range(24 * 12):
        t += 300.0
        fleet.step(t, 300.0)
        hourly.append(fleet.power.sum(axis=1).copy())
    curve = np.array(hourly)  # (time, meter), 5-minute steps from 00:05
    consumers = ~fleet.prosumer
    load = curve[:, consumers].mean(axis=1)
    night, evening = load[3 * 12 : 4 * 12].mean(), load[18 * 12 : 21 * 12].mean()
    assert evening > 2.0 * night, (night, evening)
    noon = curve[12 * 12 : 14 * 12]
    assert (noon[:, fleet.prosumer].mean(axis=0) < 0).mean() > 0.8, "prosumers export at noon"
    assert (curve[:, consumers] >= 0).all(), "consumers never export"


def test_three_phase_meters_split_the_load_and_single_phase_meters_use_l1() -> None:
    fleet = _fleet(n=20)
    fleet.step(START, 0.0)
    three = fleet.phases == 3
    assert (fleet.power[three] != 0).all()
    assert (fleet.power[~three][:, 1:] == 0).all()
    assert (fleet.power[~three][:, 0] != 0).all()


def test_meters_of_one_region_share_their_feeder_voltage() -> None:
    fleet = _fleet(n=40, regions=2, prosumer_every=1000)
    t = START
    fleet.step(t, 0.0)
    series = []
    for _ in range(240):
        t += 60.0
        fleet.step(t, 60.0)
        series.append(fleet.voltage[:, 0].copy())
    volts = np.array(series)
    corr = np.corrcoef(volts.T)
    same = [corr[i, j] for i in range(40) for j in range(i + 1, 40) if i % 2 == j % 2]
    other = [corr[i, j] for i in range(40) for j in range(i + 1, 40) if i % 2 != j % 2]
    assert np.mean(same) > 0.5
    assert np.mean(same) > np.mean(other) + 0.3


def test_a_spike_multiplies_the_load_until_it_ends() -> None:
    plain, spiked = _fleet(n=10, prosumer_every=1000), _fleet(n=10, prosumer_every=1000)
    for fleet in (plain, spiked):
        fleet.step(START, 0.0)
    spiked.set_spike(3, 4.0, until=START + 5.0)
    for t in (START + 1.0, START + 2.0):
        plain.step(t, 1.0)
        spiked.step(t, 1.0)
        np.testing.assert_allclose(spiked.power[3], 4.0 * plain.power[3])
        np.testing.assert_array_equal(spiked.power[2], plain.power[2])
    plain.step(START + 6.0, 4.0)
    spiked.step(START + 6.0, 4.0)
    np.testing.assert_allclose(spiked.power[3], plain.power[3])


def test_a_voltage_fault_pins_the_voltage_and_a_counter_reset_restarts_near_zero() -> None:
    fleet = _fleet(n=4, phases=3)
    fleet.step(START, 0.0)
    fleet.set_voltage(1, 190.0, until=START + 10.0)
    fleet.reset_counters(2)
    fleet.reset_counters(3, start_kwh=5.0)
    held = fleet.power[2].sum()
    old = fleet.counters[IMPORT, 2, 0]
    fleet.step(START + 1.0, 1.0)
    assert (fleet.voltage[1] == 190.0).all()
    assert 0 <= fleet.counters[IMPORT, 2, 0] < 0.011 < old
    assert (fleet.counters[:, 3, :] == 5.0).all()
    assert held > 0
    fleet.clear_voltage(1)
    fleet.step(START + 2.0, 1.0)
    assert (fleet.voltage[1] > 200).all()


def test_step_rejects_a_negative_interval() -> None:
    fleet = _fleet(n=2)
    with pytest.raises(ValueError, match="dt >= 0"):
        fleet.step(START, -1.0)


def test_a_voltage_fault_deep_enough_is_an_outage_and_nothing_flows() -> None:
    fleet = _fleet(n=4, phases=3)
    fleet.step(START, 0.0)
    fleet.set_voltage(0, 0.0, until=START + 100.0)
    fleet.step(START + 1.0, 1.0)
    before = fleet.counters[:, 0].copy()
    assert (fleet.voltage[0] == 0).all()
    assert (fleet.power[0] == 0).all()
    assert (fleet.current[0] == 0).all()
    fleet.step(START + 2.0, 1.0)
    np.testing.assert_array_equal(fleet.counters[:, 0], before)

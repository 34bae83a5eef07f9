"""What a real Modbus master sees over TCP: every register of every profile, and the exceptions."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from simtools import modbus_client, read_profile
from testkit import FakeClock

from segs.protocol.profiles import load_profile
from segs.sim.app import Simulator
from segs.sim.config import ControlConfig, quick_config
from segs.sim.exceptions import StartupError

# Meters 1..3 of a "mixed" quick start: sdm630, sdm120, sunspec203.
PROFILES = [("sdm630", 1), ("sdm120", 2), ("sunspec203", 3)]


def _phases(values: dict[str, Any], phases: int) -> list[tuple[float, float, float, float]]:
    return [
        (
            values[f"voltage_l{n}"],
            values[f"current_l{n}"],
            values[f"power_l{n}"],
            values[f"power_factor_l{n}"],
        )
        for n in range(1, phases + 1)
    ]


def _net_power(values: dict[str, Any], phases: int) -> float:
    total = values.get("power_total")
    if total is None:
        total = sum(values[f"power_l{n}"] for n in range(1, phases + 1))
    return float(total)


@pytest.mark.parametrize(("name", "unit"), PROFILES)
async def test_every_register_reads_plausible_consistent_values(
    make_sim: Callable[..., Simulator], name: str, unit: int
) -> None:
    profile = load_profile(name)
    sunspec = name == "sunspec203"
    async with make_sim(3) as sim, modbus_client(sim.bus_port("bus-1")) as client:
        values = await read_profile(client, profile, unit)
        truth = sim.meter_state(f"MTR-{unit:08d}")["values"]
    measured = {r.name for r in profile.registers if r.value is None and r.type.value != "string"}
    assert all(values[name] is not None for name in measured), values
    for volts, amps, kw, pf in _phases(values, profile.phases):
        assert 200.0 < volts < 260.0
        assert amps >= 0.0
        assert -1.0 <= pf <= 1.0
        # P = V * I * PF, up to the register resolution (SunSpec: 0.1 V, 0.01 A, 0.1 %, 1 W).
        slack = (0.05 * amps + 0.005 * volts + 0.0005 * volts * amps + 0.5) if sunspec else 1e-3
        assert kw * 1000.0 == pytest.approx(volts * amps * pf, abs=slack)
    if profile.has_register("power_total"):
        phase_sum = sum(values[f"power_l{n}"] for n in range(1, profile.phases + 1))
        assert values["power_total"] == pytest.approx(phase_sum, abs=0.002 if sunspec else 1e-5)
    assert 49.5 <= values["frequency"] <= 50.5
    assert values["import_energy"] > 0
    # The control API's truth is the same instant the registers were built from.
    for key in ("voltage_l1", "current_l1", "power_l1", "frequency", "import_energy"):
        tolerance = {"voltage_l1": 0.05, "current_l1": 0.005, "power_l1": 0.0005}.get(key, 0.005)
        assert values[key] == pytest.approx(
            truth[key], rel=1e-6, abs=tolerance if sunspec else 1e-5
        )


async def test_counters_increase_by_the_integral_of_the_served_power(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    profiles = {unit: load_profile(name) for name, unit in PROFILES}
    async with make_sim(3) as sim, modbus_client(sim.bus_port("bus-1")) as client:
        first = {unit: await read_profile(client, p, unit) for unit, p in profiles.items()}
        integral = dict.fromkeys(profiles, 0.0)
        latest = first
        for dt in (600.0, 300.0, 900.0, 1.0):
            for unit, profile in profiles.items():
                integral[unit] += _net_power(latest[unit], profile.phases) * dt / 3600.0
            clock.advance(dt)
            sim.update()
            previous = latest
            latest = {unit: await read_profile(client, p, unit) for unit, p in profiles.items()}
            for unit in profiles:
                for counter in ("import_energy", "export_energy"):
                    assert latest[unit][counter] >= previous[unit][counter]
    for unit in profiles:
        net = (latest[unit]["import_energy"] - first[unit]["import_energy"]) - (
            latest[unit]["export_energy"] - first[unit]["export_energy"]
        )
        # float32 counters of ~10^4 kWh resolve ~1 Wh; SunSpec counts whole Wh.
        assert net == pytest.approx(integral[unit], abs=0.005), unit
        assert abs(integral[unit]) > 0.05


async def test_bad_requests_get_the_proper_exception_and_the_bus_keeps_answering(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(3) as sim, modbus_client(sim.bus_port("bus-1")) as client:
        cases = [
            (client.read_input_registers(0, count=2, device_id=42), 0x0B),  # nobody at 42
            (client.read_input_registers(100, count=2, device_id=1), 2),  # unmapped
            (client.read_input_registers(78, count=4, device_id=1), 2),  # runs past the map
            (client.read_holding_registers(0, count=2, device_id=1), 2),  # Eastron: FC04 only
            (client.read_input_registers(40000, count=2, device_id=3), 2),  # SunSpec: FC03
            (client.read_holding_registers(40170, count=10, device_id=3), 2),  # past the end
            (client.read_input_registers(0, count=81, device_id=1), 3),  # over 80 registers
            (client.write_register(0, 1, device_id=1), 1),  # meters take no writes
        ]
        for request, code in cases:
            response = await request
            assert response.isError()
            assert response.exception_code == code
        ok = await client.read_input_registers(0, count=80, device_id=1)
        assert not ok.isError()
        assert len(ok.registers) == 80
        stats = sim.stats()["buses"][0]
        assert stats["exceptions"] == len(cases)


async def test_one_bus_answers_many_unit_ids_and_more_meters_take_more_buses(
    make_sim: Callable[..., Simulator],
) -> None:
    profile = load_profile("sunspec203")
    async with make_sim(5, per_bus=2, profile="sunspec203") as sim:
        assert [bus.bus.id for bus in sim.buses] == ["bus-1", "bus-2", "bus-3"]
        number = 0
        for bus, units in (("bus-1", 2), ("bus-2", 2), ("bus-3", 1)):
            async with modbus_client(sim.bus_port(bus)) as client:
                for unit in range(1, units + 1):
                    number += 1
                    values = await read_profile(client, profile, unit)
                    assert values["serial_number"] == f"MTR-{number:08d}"
                    assert values["device_address"] == unit
                missing = await client.read_holding_registers(40000, count=2, device_id=units + 1)
                assert missing.isError()


async def test_a_busy_port_fails_the_start_with_a_clear_error(clock: FakeClock) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = quick_config(1, port, control=ControlConfig(port=0))
        with pytest.raises(StartupError, match=f"bus 'bus-1': cannot listen on 127.0.0.1:{port}"):
            async with Simulator(config, clock=clock):
                pass
        control = quick_config(1, 0, control=ControlConfig(port=port))
        with pytest.raises(StartupError, match=f"control API: cannot listen on 127.0.0.1:{port}"):
            async with Simulator(control, clock=clock):
                pass

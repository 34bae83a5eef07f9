"""Every fault kind, injected through the control API, seen on the wire, and cleared."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from pymodbus.exceptions import ModbusIOException
from simtools import modbus_client, read_blocks, read_profile
from testkit import FakeClock

from segs.protocol.profiles import load_profile
from segs.sim.app import Simulator
from segs.sim.exceptions import FaultError
from segs.sim.faults import FaultTable, OfflineFault, SlowFault, WireFaults, parse_fault

SDM630, SDM120, SUNSPEC = (load_profile(name) for name in ("sdm630", "sdm120", "sunspec203"))


@asynccontextmanager
async def control(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    assert sim.control is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{sim.control.port}", timeout=5.0
    ) as client:
        yield client


async def _inject(api: httpx.AsyncClient, meter: str, fault: dict[str, object]) -> None:
    response = await api.post(f"/meters/{meter}/faults", json=fault)
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == fault["kind"]


async def _clear(api: httpx.AsyncClient, meter: str) -> list[str]:
    response = await api.delete(f"/meters/{meter}/faults")
    assert response.status_code == 200, response.text
    return [fault["kind"] for fault in response.json()["cleared"]]


# --- the fault models ---------------------------------------------------------------------------


def test_fault_descriptions_are_validated_with_a_clear_message() -> None:
    assert parse_fault({"kind": "slow", "delay_ms": 250}) == SlowFault(kind="slow", delay_ms=250)
    assert parse_fault({"kind": "spike", "factor": 3}).seconds == 10.0
    bad = [
        ({"kind": "meltdown"}, "does not match any of the expected tags"),
        ({"kind": "slow"}, "slow.delay_ms: Field required"),
        ({"kind": "exception", "code": 7}, "code must be one of"),
        ({"kind": "spike", "factor": 0}, "greater than 0"),
        ({"kind": "voltage", "value": "low"}, "valid number"),
        ({"kind": "garbage", "mode": "zeros"}, "'nan' or 'random'"),
        ({"kind": "offline", "seconds": -1}, "greater than 0"),
        ({"kind": "offline", "extra": 1}, "Extra inputs are not permitted"),
        ({}, "Unable to extract tag"),
    ]
    for data, message in bad:
        with pytest.raises(FaultError, match=message):
            parse_fault(data)


def test_the_fault_table_expires_faults_on_its_clock() -> None:
    clock = FakeClock(100.0)
    table = FaultTable(clock)
    assert table.wire(0) is None
    table.add(0, OfflineFault(kind="offline", seconds=5.0))
    table.add(0, SlowFault(kind="slow", delay_ms=20))
    assert table.wire(0) == WireFaults(offline=True, delay=0.02)
    clock.advance(5.0)
    assert table.wire(0) == WireFaults(delay=0.02)
    assert [a.fault.kind for a in table.active(0)] == ["slow"]
    assert [a.fault.kind for a in table.clear(0)] == ["slow"]
    assert table.wire(0) is None
    assert table.active(0) == []


# --- on the wire ----------------------------------------------------------------------------------


async def test_offline_means_no_answer_until_cleared_or_expired(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    async with (
        make_sim(3) as sim,
        control(sim) as api,
        modbus_client(sim.bus_port("bus-1"), wait=0.4) as client,
    ):
        await _inject(api, "MTR-00000001", {"kind": "offline"})
        with pytest.raises(ModbusIOException):
            await client.read_input_registers(0, count=2, device_id=1)
        assert not (await client.read_input_registers(0, count=2, device_id=2)).isError()
        assert await _clear(api, "MTR-00000001") == ["offline"]
        assert not (await client.read_input_registers(0, count=2, device_id=1)).isError()

        await _inject(api, "MTR-00000003", {"kind": "offline", "seconds": 30})
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(40000, count=2, device_id=3)
        clock.advance(31.0)
        assert not (await client.read_holding_registers(40000, count=2, device_id=3)).isError()
        assert (await api.get("/meters/MTR-00000003/faults")).json() == []


async def test_slow_answers_late_and_a_late_answer_does_not_confuse_the_next_read(
    make_sim: Callable[..., Simulator],
) -> None:
    async with (
        make_sim(3) as sim,
        control(sim) as api,
        modbus_client(sim.bus_port("bus-1"), wait=0.6) as client,
    ):
        await _inject(api, "MTR-00000002", {"kind": "slow", "delay_ms": 300})
        started = time.monotonic()
        response = await client.read_input_registers(0, count=4, device_id=2)
        assert not response.isError()
        assert time.monotonic() - started >= 0.3
        await _inject(api, "MTR-00000002", {"kind": "slow", "delay_ms": 900})
        with pytest.raises(ModbusIOException):
            await client.read_input_registers(0, count=4, device_id=2)
        assert await _clear(api, "MTR-00000002") == ["slow"]
        await asyncio.sleep(0.5)  # the late answer arrives and is dropped by the client
        started = time.monotonic()
        values = await read_profile(client, SDM120, 2)
        assert time.monotonic() - started < 0.3
        assert values["voltage_l1"] is not None


async def test_exception_answers_with_the_code_until_cleared(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(3) as sim, control(sim) as api, modbus_client(sim.bus_port("bus-1")) as c:
        await _inject(api, "MTR-00000003", {"kind": "exception", "code": 6})
        response = await c.read_holding_registers(40000, count=2, device_id=3)
        assert response.isError()
        assert response.exception_code == 6
        await _clear(api, "MTR-00000003")
        assert (await c.read_holding_registers(40000, count=2, device_id=3)).registers == [
            0x5375,
            0x6E53,
        ]


async def test_garbage_serves_nan_or_random_words_until_cleared(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(3) as sim, control(sim) as api, modbus_client(sim.bus_port("bus-1")) as c:
        clean = await read_blocks(c, SDM630, 1)
        await _inject(api, "MTR-00000001", {"kind": "garbage", "mode": "nan"})
        nan = await read_profile(c, SDM630, 1)
        assert nan["voltage_l1"] is None
        assert nan["import_energy"] is None
        await _inject(api, "MTR-00000003", {"kind": "garbage", "mode": "nan"})
        sunspec = await read_profile(c, SUNSPEC, 3)
        assert sunspec["sunspec_id"] == "SunS"
        assert sunspec["voltage_l1"] is None
        await _inject(api, "MTR-00000001", {"kind": "garbage", "mode": "random"})
        first, second = await read_blocks(c, SDM630, 1), await read_blocks(c, SDM630, 1)
        assert first != second
        assert first != clean
        assert await _clear(api, "MTR-00000001") == ["garbage"]
        assert await read_blocks(c, SDM630, 1) == clean


async def test_counter_reset_restarts_the_counters_near_zero_and_stays(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    async with make_sim(3) as sim, control(sim) as api, modbus_client(sim.bus_port("bus-1")) as c:
        before = {u: await read_profile(c, p, u) for u, p in ((1, SDM630), (3, SUNSPEC))}
        for unit in (1, 3):
            assert before[unit]["import_energy"] > 10
            await _inject(api, f"MTR-{unit:08d}", {"kind": "counter_reset"})
        clock.advance(1.0)
        sim.update()
        after = {u: await read_profile(c, p, u) for u, p in ((1, SDM630), (3, SUNSPEC))}
        for unit in (1, 3):
            assert after[unit]["import_energy"] < 0.05
            assert after[unit]["export_energy"] < 0.05
        listed = (await api.get("/meters/MTR-00000001")).json()["faults"]
        assert [fault["kind"] for fault in listed] == ["counter_reset"]
        assert await _clear(api, "MTR-00000001") == ["counter_reset"]
        clock.advance(60.0)
        sim.update()
        later = await read_profile(c, SDM630, 1)
        assert after[1]["import_energy"] <= later["import_energy"] < 1.0  # a swap is not undone


async def test_spike_multiplies_the_power_for_its_seconds(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    async with make_sim(6) as sim, control(sim) as api, modbus_client(sim.bus_port("bus-1")) as c:
        meters = (await api.get("/meters")).json()
        # A three-phase Eastron meter without PV: its power is all household load.
        meter = next(m for m in meters if m["profile"] == "sdm630" and not m["prosumer"])
        unit = meter["unit_id"]
        normal = (await read_profile(c, SDM630, unit))["power_total"]
        await _inject(api, meter["meter_id"], {"kind": "spike", "factor": 10, "seconds": 60})
        clock.advance(1.0)
        sim.update()
        spiked = (await read_profile(c, SDM630, unit))["power_total"]
        assert spiked > 4 * normal > 0
        clock.advance(60.0)
        sim.update()
        ended = (await read_profile(c, SDM630, unit))["power_total"]
        assert ended < spiked / 3
        assert (await api.get(f"/meters/{meter['meter_id']}/faults")).json() == []


async def test_voltage_sag_pins_the_voltage_until_cleared(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    async with make_sim(3) as sim, control(sim) as api, modbus_client(sim.bus_port("bus-1")) as c:
        for unit in (1, 3):
            await _inject(api, f"MTR-{unit:08d}", {"kind": "voltage", "value": 190, "seconds": 300})
        clock.advance(1.0)
        sim.update()
        for unit, profile in ((1, SDM630), (3, SUNSPEC)):
            values = await read_profile(c, profile, unit)
            assert [values[f"voltage_l{n}"] for n in (1, 2, 3)] == [190.0, 190.0, 190.0]
            truth = (await api.get(f"/meters/MTR-{unit:08d}")).json()["values"]
            assert truth["voltage_l1"] == 190.0
        response = await api.delete("/meters/MTR-00000001/faults/voltage")
        assert [f["kind"] for f in response.json()["cleared"]] == ["voltage"]
        clock.advance(1.0)
        sim.update()
        assert (await read_profile(c, SDM630, 1))["voltage_l1"] > 200.0
        assert (await read_profile(c, SUNSPEC, 3))["voltage_l1"] == 190.0

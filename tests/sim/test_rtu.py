"""Modbus RTU on a serial line: a pseudo-terminal pair stands in for the RS-485 adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException
from simtools import read_profile
from testkit import FakeClock, PtyPair

from segs.protocol.profiles import load_profile
from segs.sim.app import Simulator
from segs.sim.config import BusConfig, ControlConfig, MeterConfig, RegionConfig, SimConfig
from segs.sim.faults import OfflineFault


@asynccontextmanager
async def rtu_client(device: str) -> AsyncIterator[AsyncModbusSerialClient]:
    client = AsyncModbusSerialClient(device, baudrate=115200, timeout=0.5, retries=0)
    try:
        assert await client.connect(), f"cannot open {device}"
        yield client
    finally:
        client.close()


def _rtu_config(device: str) -> SimConfig:
    return SimConfig(
        regions=(RegionConfig("north"),),
        buses=(BusConfig("line-1", transport="rtu", device=device, baudrate=115200),),
        meters=(
            MeterConfig("EM-1", bus="line-1", unit_id=1, profile="sdm630", region="north"),
            MeterConfig("EM-2", bus="line-1", unit_id=2, profile="sdm120", region="north"),
            MeterConfig("EM-9", bus="line-1", unit_id=9, profile="sunspec203", region="north"),
        ),
        control=ControlConfig(enabled=False),
        update_interval=3600.0,
    )


async def test_rtu_meters_answer_on_a_serial_line(clock: FakeClock) -> None:
    async with (
        PtyPair() as line,
        Simulator(_rtu_config(line.left), clock=clock) as sim,
        rtu_client(line.right) as client,
    ):
        for unit, name in ((1, "sdm630"), (2, "sdm120"), (9, "sunspec203")):
            values = await read_profile(client, load_profile(name), unit)
            truth = sim.meter_state(f"EM-{unit}")["values"]
            assert values["voltage_l1"] == pytest.approx(truth["voltage_l1"], abs=0.05)
            assert 49.5 <= values["frequency"] <= 50.5
        error = await client.read_input_registers(100, count=2, device_id=1)
        assert error.isError()
        assert error.exception_code == 2


async def test_on_a_serial_line_an_absent_or_offline_unit_stays_silent(clock: FakeClock) -> None:
    async with (
        PtyPair() as line,
        Simulator(_rtu_config(line.left), clock=clock) as sim,
        rtu_client(line.right) as client,
    ):
        with pytest.raises(ModbusIOException):
            await client.read_input_registers(0, count=2, device_id=5)
        sim.inject("EM-2", OfflineFault(kind="offline"))
        with pytest.raises(ModbusIOException):
            await client.read_input_registers(0, count=2, device_id=2)
        sim.clear("EM-2")
        response = await client.read_input_registers(0, count=2, device_id=2)
        assert not response.isError()
        assert sim.stats()["buses"][0]["silent"] == 2

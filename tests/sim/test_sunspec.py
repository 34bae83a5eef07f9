"""SunSpec discovery on the wire: the SunS marker, the model chain, model 203 and its SFs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pymodbus.client import ModbusTcpClient

from segs.protocol.profiles import (
    SUNSPEC_BASE,
    load_profile,
    relocate_sunspec,
    sunspec_models,
)
from segs.protocol.registers import RegisterType, decode_raw
from segs.sim.app import Simulator


def _discover(port: int, unit: int) -> tuple[list[tuple[int, int, int]], dict[str, object]]:
    """What an edge does with an unknown SunSpec device: walk the chain, then read model 203."""
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert client.connect()
    try:

        def read(address: int, count: int) -> list[int]:
            response = client.read_holding_registers(address, count=count, device_id=unit)
            assert not response.isError(), response
            return list(response.registers)

        models = sunspec_models(read, SUNSPEC_BASE)
        profile = relocate_sunspec(load_profile("sunspec203"), models)
        values = profile.decode([read(b.address, b.count) for b in profile.blocks])
        return models, values
    finally:
        client.close()


async def test_discovery_walks_the_chain_and_decodes_model_203(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(2, profile="sunspec203") as sim:
        port = sim.bus_port("bus-1")
        models, values = await asyncio.to_thread(_discover, port, 2)
        truth = sim.meter_state("MTR-00000002")["values"]
    assert models == [(1, 40002, 66), (203, 40070, 105)]
    assert values["manufacturer"] == "SEGS"
    assert values["device_model"] == "sim-sunspec203"
    assert values["serial_number"] == "MTR-00000002"
    assert values["a_sf"] == -2
    assert values["v_sf"] == -1
    assert abs(values["voltage_l2"] - truth["voltage_l2"]) <= 0.05  # type: ignore[operator]
    assert abs(values["power_total"] - truth["power_total"]) <= 0.0005  # type: ignore[operator]
    assert abs(values["frequency"] - truth["frequency"]) <= 0.005  # type: ignore[operator]
    pf = values["power_factor_total"]
    assert isinstance(pf, float)
    assert -1.0 <= pf <= 1.0


async def test_power_factor_is_percent_and_energy_is_acc32_wh_on_the_wire(
    make_sim: Callable[..., Simulator],
) -> None:
    async with make_sim(1, profile="sunspec203") as sim:
        truth = sim.meter_state("MTR-00000001")["values"]

        def raw() -> tuple[list[int], list[int]]:
            client = ModbusTcpClient("127.0.0.1", port=sim.bus_port("bus-1"), timeout=2, retries=0)
            assert client.connect()
            try:
                pf = client.read_holding_registers(40103, count=5, device_id=1).registers
                energy = client.read_holding_registers(40116, count=2, device_id=1).registers
                return list(pf), list(energy)
            finally:
                client.close()

        pf_words, energy_words = await asyncio.to_thread(raw)
    # PF_SF = -1 and the profile's 0.01 scale: 95.0 % is served as 950.
    assert decode_raw(pf_words[:1], RegisterType.INT16) == round(truth["power_factor_total"] * 1000)
    assert pf_words[4] == 0xFFFF  # PF_SF = -1 as int16
    wh = decode_raw(energy_words, RegisterType.ACC32)
    assert isinstance(wh, int)
    assert 0 <= truth["import_energy"] * 1000 - wh < 1 + 1e-6  # whole Wh, floored

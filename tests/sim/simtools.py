"""Helpers for the simulator tests (importable as ``simtools``: conftest puts this folder on
``sys.path``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from segs.protocol.profiles import Profile
from segs.sim.config import ControlConfig, SimConfig, quick_config


def sim_config(meters: int = 3, **kwargs: Any) -> SimConfig:
    """A quick-start config on free ports that updates only when the test calls ``update()``."""
    kwargs.setdefault("profile", "mixed")
    kwargs.setdefault("update_interval", 3600.0)
    kwargs.setdefault("control", ControlConfig(port=0))
    kwargs.setdefault("seed", 7)
    return quick_config(meters, 0, **kwargs)


@asynccontextmanager
async def modbus_client(port: int, *, wait: float = 2.0) -> AsyncIterator[AsyncModbusTcpClient]:
    """A connected pymodbus TCP client that waits ``wait`` s for an answer and never retries."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=wait, retries=0)
    try:
        assert await client.connect(), f"cannot connect to 127.0.0.1:{port}"
        yield client
    finally:
        client.close()


async def read_blocks(client: Any, profile: Profile, unit: int) -> list[list[int]]:
    """Read every block of ``profile``'s read plan from ``unit``."""
    reads: list[list[int]] = []
    for block in profile.blocks:
        if block.function_code == 4:
            response = await client.read_input_registers(
                block.address, count=block.count, device_id=unit
            )
        else:
            response = await client.read_holding_registers(
                block.address, count=block.count, device_id=unit
            )
        assert not response.isError(), f"{profile.id} unit {unit}: {response}"
        reads.append(list(response.registers))
    return reads


async def read_profile(client: Any, profile: Profile, unit: int) -> dict[str, Any]:
    """Read every register of ``profile`` from ``unit``, decoded by the profile."""
    return profile.decode(await read_blocks(client, profile, unit))

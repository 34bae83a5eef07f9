"""Helpers for the simulator tests (importable as ``simtools``: conftest puts this folder on
``sys.path``)."""

from __future__ import annotations

import asyncio
import os
import socket
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from segs.protocol.profiles import Profile
from segs.sim.config import ControlConfig, SimConfig, quick_config

START = 1_718_971_200.0
"""2024-06-21 12:00 UTC: a sunny midsummer noon, so prosumers export."""


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A TCP port that was free a moment ago (for subprocesses that need a number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


class PtyPair:
    """Two pseudo-terminals joined back to back, like a null-modem cable (or socat).

    Open :attr:`left` as the simulator's serial device and :attr:`right` as the
    master's; bytes written on one come out of the other.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        self.left = ""
        self.right = ""

    async def __aenter__(self) -> PtyPair:
        loop = asyncio.get_running_loop()
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        self._fds = [master_a, slave_a, master_b, slave_b]
        for fd in (slave_a, slave_b):
            tty.setraw(fd)  # no echo, no line editing: a serial line carries bytes as they are
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        self.left, self.right = os.ttyname(slave_a), os.ttyname(slave_b)
        loop.add_reader(master_a, self._copy, master_a, master_b)
        loop.add_reader(master_b, self._copy, master_b, master_a)
        return self

    @staticmethod
    def _copy(source: int, target: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, OSError):
            return
        os.write(target, data)

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        master_a, _, master_b, _ = self._fds
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fd in self._fds:
            os.close(fd)

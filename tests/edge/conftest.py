"""Fixtures for the edge tests that talk Modbus to a real simulator (in-process, free ports).

``sim_clock`` -> ``FakeClock``
    The simulator's clock (2024-06-21 12:00 UTC); physics moves only when a test
    calls ``sim.update()`` (the simulators here update once an hour on their own).
``edge_clock`` -> ``Callable[[], float]``
    The poller's clock: real time, shifted so it starts at ``sim_clock``'s time.
``wait_until`` -> ``async (predicate, timeout=..., what=...) -> None``
    Poll ``predicate`` every 10 ms; fail the test with ``what`` after ``timeout`` s.
``pty_pair`` -> ``PtyPair``
    Two pseudo-terminals joined back to back (a null-modem cable) for Modbus RTU.
``free_port`` -> ``int``
    A TCP port nobody listened on a moment ago.
``clean_env``
    Removes every ``SEGS_EDGE_*`` variable, so settings come from the test alone.

Every coroutine test in ``test_poller.py`` and ``test_check.py`` runs under
``asyncio.timeout(TEST_TIMEOUT)``, so a hang fails that test instead of the run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import socket
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

START = 1_718_971_200.0
"""2024-06-21 12:00 UTC."""

TEST_TIMEOUT = 20.0
"""Seconds any one Modbus test may take."""

_BOUNDED_FILES = frozenset({"test_poller.py", "test_check.py"})


def _bounded(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Any]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await test(*args, **kwargs)

    return bounded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the coroutine tests of the Modbus test files under a timeout."""
    here = Path(__file__).resolve().parent
    for item in items:
        path = Path(item.path)
        if not isinstance(item, pytest.Function) or path.parent != here:
            continue
        if path.name in _BOUNDED_FILES and inspect.iscoroutinefunction(item.obj):
            item.obj = _bounded(item.obj)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def sim_clock() -> FakeClock:
    """The simulator's clock, at 2024-06-21 12:00 UTC until the test moves it."""
    return FakeClock()


@pytest.fixture
def edge_clock() -> Callable[[], float]:
    """Real time (it paces the poller), shifted to start at 2024-06-21 12:00 UTC."""
    offset = START - time.monotonic()
    return lambda: time.monotonic() + offset


WaitUntil = Callable[..., Awaitable[None]]


@pytest.fixture
def wait_until() -> WaitUntil:
    """``await wait_until(lambda: ..., timeout=5.0, what="...")``."""

    async def wait(
        predicate: Callable[[], object],
        timeout: float = 5.0,  # noqa: ASYNC109 - the helper's one knob, applied below
        what: str = "",
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():  # noqa: ASYNC110 - the predicate reads plain state
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pytest.fail(f"waited {timeout} s in vain for {what or predicate}")

    return wait


@pytest.fixture
def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``SEGS_EDGE_*`` variable from the outside leaks into the settings."""
    for name in list(os.environ):
        if name.upper().startswith("SEGS_EDGE_"):
            monkeypatch.delenv(name)


class PtyPair:
    """Two pseudo-terminals joined back to back; bytes written on one come out of the other.

    :attr:`left` is the simulator's serial device, :attr:`right` the master's.
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
            tty.setraw(fd)  # a serial line carries bytes as they are: no echo, no editing
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
        except OSError:
            return
        os.write(target, data)

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        master_a, _, master_b, _ = self._fds
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fd in self._fds:
            os.close(fd)


@pytest.fixture
async def pty_pair() -> AsyncIterator[PtyPair]:
    """A null-modem pair of pseudo-terminals, closed after the test."""
    async with PtyPair() as pair:
        yield pair

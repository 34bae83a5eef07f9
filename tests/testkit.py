"""Helpers shared by the simulator and edge tests: a hand-moved clock, a null-modem pty pair,
a timeout for coroutine tests.

``tests/conftest.py`` puts this folder on ``sys.path``, so a test module or a conftest may
write ``from testkit import FakeClock``. Nothing here needs a service or a fixture.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import tty
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

__all__ = ["START", "FakeClock", "PtyPair", "bound_coroutine_tests"]

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
        except OSError:  # BlockingIOError included
            return
        os.write(target, data)

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        master_a, _, master_b, _ = self._fds
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fd in self._fds:
            os.close(fd)


def _bounded(test: Callable[..., Coroutine[Any, Any, None]], seconds: float) -> Callable[..., Any]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(seconds):
            await test(*args, **kwargs)

    return bounded


def bound_coroutine_tests(
    items: list[pytest.Item], seconds: float, *, where: Callable[[Path], bool]
) -> None:
    """Run each coroutine test whose file ``where`` accepts under ``asyncio.timeout(seconds)``.

    For a conftest's ``pytest_collection_modifyitems``: a hang then fails that test
    instead of stalling the run.
    """
    for item in items:
        if not isinstance(item, pytest.Function) or not where(Path(item.path)):
            continue
        if inspect.iscoroutinefunction(item.obj):
            item.obj = _bounded(item.obj, seconds)

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
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import services
from testkit import START, FakeClock, PtyPair, bound_coroutine_tests

TEST_TIMEOUT = 20.0
"""Seconds any one Modbus test may take."""

_BOUNDED_FILES = frozenset({"test_poller.py", "test_check.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the coroutine tests of the Modbus test files under a timeout."""
    here = Path(__file__).resolve().parent
    bound_coroutine_tests(
        items,
        TEST_TIMEOUT,
        where=lambda path: path.parent == here and path.name in _BOUNDED_FILES,
    )


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
    return services.free_port()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``SEGS_EDGE_*`` variable from the outside leaks into the settings."""
    for name in list(os.environ):
        if name.upper().startswith("SEGS_EDGE_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def pty_pair() -> AsyncIterator[PtyPair]:
    """A null-modem pair of pseudo-terminals, closed after the test."""
    async with PtyPair() as pair:
        yield pair

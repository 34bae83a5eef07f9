"""Fixtures for the simulator tests; helpers live in ``simtools`` (this folder is put on
``sys.path``).

Every coroutine test in this folder runs under ``asyncio.timeout(TEST_TIMEOUT)``
(see :func:`pytest_collection_modifyitems`), so a hang fails that test fast
instead of stalling the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from simtools import sim_config  # noqa: E402
from testkit import FakeClock, bound_coroutine_tests  # noqa: E402

from segs.sim.app import Simulator  # noqa: E402

TEST_TIMEOUT = 20.0
"""Seconds any one simulator test may take."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every coroutine test of tests/sim under a timeout."""
    bound_coroutine_tests(items, TEST_TIMEOUT, where=lambda path: _HERE in path.parents)


@pytest.fixture
def clock() -> FakeClock:
    """A clock at 2024-06-21 12:00 UTC that only moves when the test says."""
    return FakeClock()


@pytest.fixture
def make_sim(clock: FakeClock) -> Callable[..., Simulator]:
    """``make_sim(meters=3, **quick_config kwargs)``: a simulator on free ports, fake clock."""

    def make(meters: int = 3, **kwargs: Any) -> Simulator:
        return Simulator(sim_config(meters, **kwargs), clock=clock)

    return make

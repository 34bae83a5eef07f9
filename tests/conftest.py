"""Fixtures for tests that run against a real Mosquitto broker and a real PostgreSQL.

A missing service fails the test loudly (``pytest.fail``) with the command that fixes
it; nothing is ever skipped. The machinery lives in ``tests/services.py``, which this
file makes importable as ``services`` (pytest runs with ``--import-mode=importlib``,
which puts no test folder on ``sys.path``)::

    from services import MosquittoBroker

    async def test_round_trip(mosquitto: MosquittoBroker) -> None:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client: ...

Fixtures:

``mosquitto`` -> ``MosquittoBroker``
    A fresh, started broker per test (no persistence); stopped afterwards.
``mosquitto_factory`` -> ``MosquittoFactory``
    ``mosquitto_factory(persistence=True, extra_config=[...])`` starts another broker;
    every broker it made is stopped after the test.
``mosquitto_session`` -> ``MosquittoBroker``
    One broker shared by the whole session, for tests that never stop or restart it
    (use unique topics: other tests publish there too).
``pg_database`` -> ``PostgresDatabase``
    Session-scoped: database ``segs_test_<hex>`` created on the server of
    ``SEGS_TEST_DATABASE_URL`` and dropped at the end. Tests share it: create your own
    tables or schemas, or use ``pg_fresh_database``.
``pg_url`` -> ``str``
    ``pg_database.url``, a plain ``postgresql://`` libpq URL (psycopg, asyncpg-style).
``pg_sqlalchemy_url`` -> ``str``
    ``pg_database.sqlalchemy_url``, the ``postgresql+psycopg://`` form.
``pg_fresh_database`` -> ``PostgresDatabase``
    Function-scoped: an empty database of its own for one test (migrations, say).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from services import (  # noqa: E402
    MosquittoBroker,
    MosquittoFactory,
    PostgresDatabase,
    ServiceUnavailableError,
    create_database,
    drop_database,
)

_LOG_TAIL_LINES = 40


_T = TypeVar("_T")


def _or_fail(action: Callable[[], _T]) -> _T:
    """Run ``action``; turn a missing service into a failure (never a skip)."""
    try:
        return action()
    except ServiceUnavailableError as exc:
        error = exc
    # Failing outside the except block keeps pytest from printing the exception chain.
    pytest.fail(str(error), pytrace=False)


def _show_log(broker: MosquittoBroker) -> None:
    """Print the broker's log tail; pytest shows it only when the test failed."""
    tail = broker.log_text().splitlines()[-_LOG_TAIL_LINES:]
    print(f"--- {broker!r} log tail ({broker.log_path}) ---")
    print("\n".join(tail))


def _started(broker: MosquittoBroker) -> MosquittoBroker:
    _or_fail(broker.start)
    return broker


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Start brokers on demand; stop every one of them after the test."""
    brokers: list[MosquittoBroker] = []

    def make(*, persistence: bool = False, extra_config: Sequence[str] = ()) -> MosquittoBroker:
        workdir = tmp_path / f"mosquitto-{len(brokers)}"
        broker = MosquittoBroker(workdir, persistence=persistence, extra_config=extra_config)
        brokers.append(broker)
        return _started(broker)

    yield make
    for broker in brokers:
        broker.stop()
        _show_log(broker)


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    """A fresh broker for this test only, stopped afterwards even when the test fails."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One broker for the whole session; never stop or restart it from a test."""
    broker = _started(MosquittoBroker(tmp_path_factory.mktemp("mosquitto-session")))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PostgresDatabase]:
    """A ``segs_test_<hex>`` database for the session, dropped at the end."""
    database = _or_fail(create_database)
    yield database
    drop_database(database)


@pytest.fixture(scope="session")
def pg_url(pg_database: PostgresDatabase) -> str:
    """``postgresql://`` URL of the session's test database."""
    return pg_database.url


@pytest.fixture(scope="session")
def pg_sqlalchemy_url(pg_database: PostgresDatabase) -> str:
    """``postgresql+psycopg://`` URL of the session's test database."""
    return pg_database.sqlalchemy_url


@pytest.fixture
def pg_fresh_database() -> Iterator[PostgresDatabase]:
    """An empty database for this test alone, dropped afterwards."""
    database = _or_fail(create_database)
    yield database
    drop_database(database)

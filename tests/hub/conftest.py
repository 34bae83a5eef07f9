"""Fixtures for the hub tests: a migrated database on each backend, and stores on it.

``database_url`` -> ``str``
    Parametrized over ``sqlite`` (a file in ``tmp_path``, copied from a template
    migrated once per session) and ``postgresql`` (the session database, migrated
    once and emptied before each test). Tests using it run on both backends.
``make_store`` -> ``(mode="demo", **options) -> Store``
    Opens stores on ``database_url`` with the ``clock`` fixture; closes them after the test.
``clock`` -> ``hubkit.Clock``
    A settable clock, an hour after ``hubkit.T0``.
``start_hub`` -> ``async (**settings) -> RunningHub``
    Runs :class:`~segs.hub.ingest.Ingest` on ``database_url`` and the ``mosquitto``
    broker as a task; every hub is stopped after the test.
``gateway_factory`` -> ``async (gateway_id, **options) -> SyntheticGateway``
    Connected synthetic gateways that keep batches until acknowledged.
``clean_env``
    Removes ``SEGS_*`` hub settings from the environment (autouse).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hubkit import HUB_TABLES, Clock, SyntheticGateway
from services import MosquittoBroker

from segs.hub.db.migrate import migrate
from segs.hub.ingest import Ingest
from segs.hub.settings import HubSettings
from segs.hub.store import Store, StoreOptions, open_store

MakeStore = Callable[..., Store]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub settings come from the test alone."""
    for name in HubSettings.model_fields:
        monkeypatch.delenv(f"SEGS_{name.upper()}", raising=False)
    monkeypatch.delenv("SEGS_CONFIG", raising=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database migrated once; tests copy it."""
    path = tmp_path_factory.mktemp("hub-template") / "hub.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_hub_url(pg_sqlalchemy_url: str) -> str:
    """The session's PostgreSQL database, migrated."""
    migrate(pg_sqlalchemy_url)
    return pg_sqlalchemy_url


def empty_pg(url: str) -> None:
    """Delete every row of the hub's tables."""
    plain = "postgresql://" + url.split("://", 1)[1]
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(HUB_TABLES)} RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty hub database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "hub.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_hub_url")
    empty_pg(url)
    return url


@pytest.fixture
def clock() -> Clock:
    """A settable clock an hour after ``T0``."""
    return Clock()


@pytest.fixture
def make_store(database_url: str, clock: Clock) -> Iterator[MakeStore]:
    """Open stores on ``database_url``; every one is closed after the test."""
    stores: list[Store] = []

    def make(**options: Any) -> Store:
        store = open_store(database_url, options=StoreOptions(**options), clock=clock)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    """A demo-mode store."""
    return make_store()


@dataclass
class RunningHub:
    """An ingest component running as a task of the test's event loop."""

    settings: HubSettings
    store: Store
    ingest: Ingest
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Cancel the component (a clean shutdown) and close its store."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.store.close()


StartHub = Callable[..., Awaitable[RunningHub]]


@pytest.fixture
async def start_hub(
    database_url: str, mosquitto: MosquittoBroker, clock: Clock
) -> AsyncIterator[StartHub]:
    """``await start_hub(**settings)`` runs ingest on ``database_url`` and ``mosquitto``."""
    hubs: list[RunningHub] = []

    async def start(**overrides: Any) -> RunningHub:
        values: dict[str, Any] = {
            "database_url": database_url,
            "mqtt_url": mosquitto.url,
            "ingest_batch_max_delay_s": 0.01,
        }
        settings = HubSettings(**(values | overrides))
        store = open_store(database_url, options=StoreOptions.from_settings(settings), clock=clock)
        ingest = Ingest(settings, store, clock=clock)
        hub = RunningHub(settings, store, ingest, asyncio.create_task(ingest.run()))
        hubs.append(hub)
        async with asyncio.timeout(10):
            await ingest.ready.wait()
        return hub

    yield start
    for hub in hubs:
        if not hub.task.done():
            await hub.stop()
        hub.store.close()


@pytest.fixture
async def gateway_factory(
    mosquitto: MosquittoBroker,
) -> AsyncIterator[Callable[..., Awaitable[SyntheticGateway]]]:
    """``await gateway_factory("gw-1")``: a connected synthetic gateway, closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(gateway_id: str, **options: Any) -> SyntheticGateway:
            gateway = SyntheticGateway(mosquitto.host, mosquitto.port, gateway_id, **options)
            return await stack.enter_async_context(gateway)

        yield make

"""The hub process: one owner starts its components under a TaskGroup and stops them cleanly.

``segs hub run`` runs every component in one asyncio process; ``--only`` picks
some (``segs hub run --only ingest`` for an ingest worker that scales out with
the shared subscription). Each component gets a store (a database connection)
of its own. SIGTERM or SIGINT (or the ``stop`` event) cancels the components;
ingest then finishes and acknowledges the commit it is in and announces the
hub offline.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from segs.hub.db.engine import make_engine
from segs.hub.db.migrate import check_current
from segs.hub.db.types import utc_now
from segs.hub.ingest import Ingest
from segs.hub.retention import Retention
from segs.hub.settings import HubSettings
from segs.hub.store import Clock, Store, StoreOptions, open_store

__all__ = ["COMPONENTS", "run"]

COMPONENTS: Final = ("ingest", "retention", "api", "mail")
"""The components ``segs hub run`` starts, in order."""
_STORE_COMPONENTS: Final = frozenset({"ingest", "retention"})

GIL_SWITCH_INTERVAL_S: Final = 0.001
"""The hub's GIL switch interval (Python's default is 5 ms).

Ingest decodes on the event loop while a worker thread drives the database; the
worker needs the GIL back after every round trip, and waiting up to 5 ms for it
each time would idle the database between statements.
"""

_log = logging.getLogger(__name__)


class _Component(Protocol):
    async def run(self) -> None: ...


class _StopRequestedError(Exception):
    """Raised inside the TaskGroup to stop every component."""


def _build(
    name: str,
    settings: HubSettings,
    store: Store | None,
    clock: Clock,
    built: dict[str, _Component],
) -> _Component:
    if name == "api":
        # Imported here: an ingest-only worker starts faster and smaller without
        # FastAPI, uvicorn and the account code.
        from segs.hub.api import ApiServer  # noqa: PLC0415

        ingest = built.get("ingest")
        stats = (lambda: ingest_counters(ingest)) if isinstance(ingest, Ingest) else None
        return ApiServer(settings, clock=clock, ingest_stats=stats)
    if name == "mail":
        from segs.hub.mail import MailDelivery  # noqa: PLC0415

        return MailDelivery(settings, clock=clock)
    if store is None:
        raise ValueError(f"component {name} needs a store")
    if name == "ingest":
        return Ingest(settings, store, clock=clock)
    return Retention(settings, store, clock=clock)


def ingest_counters(ingest: Ingest) -> dict[str, float]:
    """The ingest component's counters, for ``/metrics``."""
    return {name: float(value) for name, value in vars(ingest.stats).items()}


async def run(
    settings: HubSettings,
    *,
    only: Sequence[str] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool | None = None,
    clock: Clock = utc_now,
) -> int:
    """Run the hub's components until SIGTERM/SIGINT (or ``stop``); return the exit code.

    Raises :class:`~segs.hub.exceptions.SchemaNotCurrentError` when the database
    is not migrated, :class:`~segs.hub.exceptions.StoreError` when it cannot be
    reached at start, and ``ValueError`` for an unknown component name.
    """
    names = list(COMPONENTS) if not only else list(dict.fromkeys(only))
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals is None:
        handle_signals = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()

    def on_signal(signum: int) -> None:
        _log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    options = StoreOptions.from_settings(settings)
    stores: list[Store] = []
    try:
        built: dict[str, _Component] = {}
        if "api" in names or "mail" in names:
            _check_schema(settings.database_url)
        for name in names:
            store = None
            if name in _STORE_COMPONENTS:
                store = open_store(settings.database_url, options=options, clock=clock)
                stores.append(store)
            built[name] = _build(name, settings, store, clock, built)
        components = list(built.items())
        # Everything built so far lives as long as the process: keep it out of the
        # collector's generations so full collections stay short under API load.
        gc.collect()
        gc.freeze()
        _log.info("hub %s running: %s (%s mode)", settings.hub_id, ", ".join(names), settings.mode)
        try:
            async with asyncio.TaskGroup() as tasks:
                for name, component in components:
                    tasks.create_task(component.run(), name=f"segs-hub-{name}")
                tasks.create_task(_until(stop.wait))
        except* _StopRequestedError:
            pass
        _log.info("hub %s stopped", settings.hub_id)
        return 0
    finally:
        sys.setswitchinterval(previous_interval)
        for signum in signals:
            loop.remove_signal_handler(signum)
        for store in stores:
            store.close()


def _check_schema(url: str) -> None:
    engine = make_engine(url)
    try:
        check_current(engine)
    finally:
        engine.dispose()


async def _until(wait: Callable[[], Awaitable[object]]) -> None:
    await wait()
    raise _StopRequestedError

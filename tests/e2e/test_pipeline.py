"""End to end: firmware-sim → edge agent → Mosquitto → hub → PostgreSQL.

The simulator's physics moves only when the test says (once per window, just
before it starts), so each window's truth is exact; the test then reads the
meters' true state through the simulator's control API and compares it with
the rows the hub committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))

from services import MosquittoBroker, PostgresDatabase
from testhub import (
    edge_settings,
    energy_consistent,
    running_agent,
    running_sim,
    step_windows,
    truth_power_and_voltage,
)

from segs.hub.db import Gateway, Meter, MeterRollup15m, MeterWindow, RegionalLoad
from segs.hub.db.migrate import migrate
from segs.hub.ingest import Ingest
from segs.hub.settings import HubSettings
from segs.hub.store import Store, StoreOptions, open_store

W = 2
"""Window length, s (the edge tests' setting: short windows keep the test short)."""
POLL = 0.25


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SEGS_") and not name.startswith(("SEGS_TEST_", "SEGS_MOSQUITTO")):
            monkeypatch.delenv(name)


@contextlib.asynccontextmanager
async def running_hub(database: PostgresDatabase, broker: MosquittoBroker) -> AsyncIterator[Store]:
    """The hub's ingest on ``database`` (migrated here), on the real clock."""
    migrate(database.sqlalchemy_url)
    settings = HubSettings(
        database_url=database.sqlalchemy_url,
        mqtt_url=broker.url,
        ingest_batch_max_delay_s=0.05,
    )
    store = open_store(settings.database_url, options=StoreOptions.from_settings(settings))
    ingest = Ingest(settings, store)
    task = asyncio.create_task(ingest.run())
    try:
        async with asyncio.timeout(10):
            await ingest.ready.wait()
        yield store
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()


def _stored(store: Store, meter_id: str) -> list[MeterWindow]:
    with Session(store.engine) as session:
        query = select(MeterWindow).where(MeterWindow.meter_id == meter_id)
        return sorted(session.exec(query).all(), key=lambda w: w.window_start)


async def _wait_stored(store: Store, meters: list[str], start: float) -> None:
    """Poll until every meter's window starting at ``start`` (epoch s) is stored."""
    async with asyncio.timeout(15):
        while True:
            stored = [{w.window_start.timestamp() for w in _stored(store, m)} for m in meters]
            if all(start in starts for starts in stored):
                return
            await asyncio.sleep(0.1)


async def test_stored_windows_match_the_simulators_truth(
    mosquitto: MosquittoBroker, pg_fresh_database: PostgresDatabase, tmp_path: Path
) -> None:
    async with (
        running_sim(3, update_interval=3600.0, control=True) as sim,
        running_hub(pg_fresh_database, mosquitto) as store,
    ):
        settings = edge_settings(tmp_path / "edge", sim=sim, mqtt_url=mosquitto.url)
        meters = [m.id for m in settings.meters]
        async with running_agent(settings):
            run = await step_windows(sim, meters, window_s=W)
            truth, clean, last = run.states, run.clean, run.last
            await _wait_stored(store, meters, last)
        assert len(clean) >= 3, "the test could not keep time"

        for meter in meters:
            rows = _stored(store, meter)
            by_start = {w.window_start.timestamp(): w for w in rows}
            for boundary in clean:
                window = by_start[boundary]
                state = truth[meter, boundary]
                power, voltage = truth_power_and_voltage(state)
                assert window.power_avg_kw == pytest.approx(power, rel=0.02, abs=0.002), meter
                assert window.voltage_avg_v == pytest.approx(voltage, rel=0.005), meter
                assert window.import_kwh == pytest.approx(
                    state["values"]["import_energy"], rel=1e-6, abs=0.0011
                ), meter
            # Every window once: starts consecutive, deltas adding up to the counters.
            starts = [w.window_start.timestamp() for w in rows]
            assert starts == [starts[0] + W * i for i in range(len(starts))], meter
            assert energy_consistent(rows[1:]) == []  # type: ignore[arg-type]
            assert not any(w.counter_break for w in rows), meter
            true_total = (
                truth[meter, clean[-1]]["values"]["import_energy"]
                - truth[meter, clean[0]]["values"]["import_energy"]
            )
            measured = by_start[clean[-1]].import_kwh - by_start[clean[0]].import_kwh
            assert measured == pytest.approx(true_total, abs=0.0021)

        with Session(store.engine) as session:
            (gateway,) = session.exec(select(Gateway)).all()
            assert (gateway.gateway_id, gateway.region) == (settings.gateway_id, settings.region)
            registered = {m.meter_id: m.profile for m in session.exec(select(Meter)).all()}
            assert registered == {m.id: m.profile for m in settings.meters}
            stored = session.exec(select(MeterWindow)).all()
            rollups = session.exec(select(MeterRollup15m)).all()
            assert sum(r.windows for r in rollups) == len(stored)
            assert sum(r.import_kwh for r in rollups) == pytest.approx(
                sum(w.import_delta_kwh for w in stored), abs=1e-9
            )
            loads = session.exec(select(RegionalLoad)).all()
            assert sum(load.windows for load in loads) == len(stored)
            assert sum(load.total_kw for load in loads) == pytest.approx(
                sum(w.power_avg_kw * W / 60 for w in stored), rel=1e-9
            )
